"""Cells of one union call that evaluate the same model share one evaluation (shared engine).

Why: a cell's quality is its model's held-out forward against the baseline, and in a union call that model is fully
determined by the solve (engine/shared.py::apply_plan): per decision group, the recipe switched in, and for a
format whose activation scales depend on the data, the calibration prefix its quantizers were given. Cells that
differ only in what does not reach that model evaluate the same forward on the same batches, the same bits: most
often the dataset sizes of a weight-only format whose recipe does not change with the size (its weight scales are
computed from the weights alone, the same at every size), or a budget whose solve lands on the recipe of another.
Those are also the cells a user hopes for (a stable recipe across sizes), so the saving grows with the sweep's
stability. On the 27-cell reference matrix 12 of its 27 evaluations are such repeats (docs/performance.md).

The key is the solve's `model_state` and, when the cell quantizes its KV cache, the KV-cache setting and the samples
its quantizers are calibrated on (execution/shared_runner.py applies it around the evaluation). A cell whose solve
gives no state (None) is always evaluated. Nothing is shared across union calls: another call has another model
(rebuilt) and, for data-dependent formats, its own calibration. A reused row records the cell whose evaluation it
took (`telemetry.evaluation_shared_with`); its `quality` is a copy, equal value for value.

Pure: no torch, no ModelOpt.
"""

from __future__ import annotations

import copy
from collections.abc import Hashable
from typing import Any


def evaluation_key(model_state: tuple[Any, ...] | None, kv_cache: str, calib_samples: int) -> Hashable | None:
    """What the cell's evaluation depends on beyond the run's fixed batches and baseline (None: not shareable)."""
    if model_state is None:
        return None
    return (model_state, kv_cache, calib_samples if kv_cache != "none" else None)


class SharedEvaluations:
    """The quality of each model already evaluated in one union call, and the cell that evaluated it."""

    def __init__(self) -> None:
        self._done: dict[Hashable, tuple[str, dict[str, Any]]] = {}

    def lookup(self, key: Hashable | None) -> tuple[str, dict[str, Any]] | None:
        """(the cell key that evaluated it, a copy of its quality), or None when this model is not evaluated yet."""
        if key is None or key not in self._done:
            return None
        cell_key, quality = self._done[key]
        return cell_key, copy.deepcopy(quality)

    def record(self, key: Hashable | None, cell_key: str, quality: dict[str, Any]) -> None:
        """Keep a copy, so that a row's later changes to its own block never reach another row."""
        if key is not None and key not in self._done:
            self._done[key] = (cell_key, copy.deepcopy(quality))

    def __len__(self) -> int:
        return len(self._done)
