"""Helpers for the pipeline tests: tiny matrices on a random-init 2-layer Llama (runs on a CPU in seconds)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]

TINY_MATRIX: dict[str, Any] = {
    "name": "tiny",
    "model": {"source": "synthetic", "preset": "llama-tiny"},
    "dataset": {"seq_len": 32, "sizes": {"a": 4, "b": 8}, "eval_samples": 4, "seed": 0},
    "autoquant": {"batch_size": 4, "effective_bits": 8.0},
    "axes": {
        "quant_pairs": ["wint8_afp16", "wint4_afp16"],
        "granularities": ["default", "w_group64"],
        "dataset_sizes": ["a", "b"],
    },
    # a random-init model has perplexity ~ vocab size (49152): raise the sanity ceiling
    "canary": {"max_baseline_perplexity": 1.0e6},
    "labels": {"execution_lane": "ci"},
}


def write_matrix(folder: Path, data: dict[str, Any], name: str = "m.yaml") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def cli(*args: str, cwd: Path, timeout: float = 900) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "TQDM_DISABLE": "1", "PYTHONWARNINGS": "ignore"}
    return subprocess.run(
        [sys.executable, "-m", "quantsweep", *args], cwd=cwd, capture_output=True, text=True, timeout=timeout, env=env
    )


def kill_run_after_rows(args: list[str], cwd: Path, rows_file: Path, rows: int = 2) -> subprocess.Popen[bytes]:
    """Start `quantsweep ARGS` in its own session and SIGKILL it (the process only) once `rows_file` holds
    `rows` rows; fails the test if the run ends first."""
    import signal
    import time

    import pytest

    env = {**os.environ, "TQDM_DISABLE": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "quantsweep", *args], cwd=cwd, stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL, env=env, start_new_session=True,
    )
    deadline = time.time() + 600
    while time.time() < deadline:
        # complete lines only: the run may be in the middle of appending one (a torn line is not JSON yet)
        if rows_file.exists() and rows_file.read_bytes().count(b"\n") >= rows:
            break
        if proc.poll() is not None:
            pytest.fail("the run finished before it could be interrupted")
        time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    return proc


def assert_resumed(res: subprocess.CompletedProcess[str], rows_file: Path, first: list[dict[str, Any]], total: int):
    """The rerun (`run --json`) after a kill skipped the recorded cells, ran the others once, and left the rows
    recorded before the kill untouched; returns all rows."""
    assert res.returncode == 0, res.stderr[-3000:]
    doc = json.loads(res.stdout)
    assert doc["cells_skipped"] == len(first) and doc["rows_written"] == total - len(first)
    rows = load_rows(rows_file)
    ids = [r["cell_id"] for r in rows]
    assert len(ids) == len(set(ids)) == total
    assert rows[: len(first)] == first  # what was recorded before the kill is untouched
    return rows


def load_rows(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
