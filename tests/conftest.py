"""Shared helpers for the foundation-layer tests (pure Python: nothing here imports torch or ModelOpt)."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[1]
MATRICES = REPO / "matrices"

MINIMAL_MATRIX: dict[str, Any] = {
    "name": "x",
    "axes": {"quant_pairs": ["wint8_afp16"], "dataset_sizes": ["small"]},
}


def minimal(**updates: Any) -> dict[str, Any]:
    """A fresh minimal valid matrix dict, top-level keys replaced by `updates`."""
    data = copy.deepcopy(MINIMAL_MATRIX)
    data.update(copy.deepcopy(updates))
    return data


def with_axes(**axes: Any) -> dict[str, Any]:
    """A minimal matrix whose `axes` entries are replaced by `axes`."""
    data = minimal()
    data["axes"].update(copy.deepcopy(axes))
    return data


@pytest.fixture
def repo() -> Path:
    return REPO


# --- GPU-only tests ------------------------------------------------------------------------------------------
# Tests marked `gpu` need CUDA. Without one they are skipped with an explicit reason (shown by `-ra`), unless
# QUANTSWEEP_REQUIRE_GPU=1 is set (as on the GPU machine), where a missing GPU makes them fail instead: a GPU run
# can never pass by silently skipping them.
def pytest_runtest_setup(item):
    if item.get_closest_marker("gpu") is None:
        return
    import os

    import torch

    if torch.cuda.is_available():
        return
    if os.environ.get("QUANTSWEEP_REQUIRE_GPU") == "1":
        pytest.fail("QUANTSWEEP_REQUIRE_GPU=1 but no CUDA device is available", pytrace=False)
    pytest.skip("needs a CUDA device (set QUANTSWEEP_REQUIRE_GPU=1 to fail instead of skipping)")


# --- the hardening suite's count (tests/fuzz/harness.py) ------------------------------------------------------
def pytest_terminal_summary(terminalreporter, exitstatus, config):  # noqa: ARG001 - pytest's hook signature
    """For the CI log: how many CLI invocations the hardening suite made on hostile inputs (the issue asks for at
    least 200 generated cases)."""
    import sys

    harness = sys.modules.get("harness")
    if harness is not None and harness.INVOCATIONS:
        terminalreporter.write_line(
            f"hardening suite: {harness.INVOCATIONS} CLI invocations on hostile inputs "
            f"({', '.join(f'{k} {v}' for k, v in sorted(harness.BY_COMMAND.items()))})"
        )
