"""The local executor: every cell in this process, on one device (the default, and the reference the Ray
executor's rows must equal)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

from ..planning import Cell, Plan
from ..schema import Matrix
from .progress import Reporter
from .records import CellRecord, make_record


class LocalExecutor:
    name = "local"

    def __init__(self, matrix: Matrix, plan: Plan, engine: str, threads: int | None, reporter: Reporter,
                 baseline_cache: bool = True):
        self.matrix, self.plan, self.engine, self.threads, self.reporter = matrix, plan, engine, threads, reporter
        self.baseline_cache = baseline_cache
        self.ctx: Any = None
        self.timings: dict[str, float] = {}

    def start(self) -> dict[str, Any]:
        """Load the model, data and baseline; what the summary says about them ({model, dataset, baseline, setup})."""
        from .context import prepare_context

        t0 = time.perf_counter()
        if self.threads:
            import torch

            torch.set_num_threads(self.threads)
        self.ctx, setup = prepare_context(self.matrix, self.plan, self.engine, self.reporter.message,
                                          self.baseline_cache)
        self.timings["start_s"] = round(time.perf_counter() - t0, 3)
        return {**self.ctx.describe(), "setup": setup}

    def canary(self, cell: Cell, attempt: int) -> tuple[dict[str, Any], CellRecord | None]:
        from .canary import run_canary

        t0 = time.perf_counter()
        doc, runs = run_canary(self.ctx, cell, self.reporter)
        self.timings["canary_s"] = round(time.perf_counter() - t0, 3)
        record = make_record(self.ctx.record, runs, attempt, from_canary=True) if runs else None
        return doc, record

    def run(self, cells: list[Cell], attempt_of: dict[str, int]) -> Iterator[CellRecord]:
        from .engines import execute_cells

        t0 = time.perf_counter()
        for cell, runs in execute_cells(self.ctx, cells, self.reporter):
            yield make_record(self.ctx.record, runs, attempt_of.get(cell.id, 0) + 1)
            self.timings["cells_s"] = round(time.perf_counter() - t0, 3)

    def downstream(self, jobs: list[Any], baseline: bool) -> Iterator[tuple[str, dict[str, Any]]]:
        """The lm-eval post-phase in this process (execution/downstream_runs.py)."""
        from .downstream_runs import run_downstream

        t0 = time.perf_counter()
        yield from run_downstream(self.ctx, jobs, baseline, self.reporter.message)
        self.timings["lm_eval_phase_s"] = round(time.perf_counter() - t0, 3)

    def describe(self) -> dict[str, Any]:
        return {"executor": "local", "engine": self.engine, "timings": dict(self.timings)}

    def close(self) -> None:
        from .gc_freeze import unfreeze

        self.ctx = None
        unfreeze()
