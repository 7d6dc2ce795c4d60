"""Recipe stability solved beside the GPU work of the next cells (shared engine), rows released in order.

Why: the stability bootstrap (trust/stability.py) is CPU-only — up to 50 exact knapsack solves per cell, ~0.28 s per
cell of the 27-cell reference matrix on a GPU host even on 16 threads — and the device idles while it runs. Run in
the cell's turn it sat on the critical path of every union call: 7.5 s of that matrix's 49 s on an H200
(benchmarks/results/ray-h200x2.json, 2026-11-30b). Here a cell's bootstrap is handed to a background thread once
the cell is evaluated, and the next cells' solve and evaluation run meanwhile.

What does not change: the block itself (the same function on the same inputs, `execution/trust_checks.py`) and the
order of the rows (a row is released only when its stability is in and every row before it has been released). What
does: a finished row is released one cell later than before (its bootstrap is rarely done when the next cell
starts), so a worker killed mid-call loses its last finished row too, which is then run again like the rest of its
unit (nothing is recorded twice); a Ctrl-C that lands in the runner (it almost always does: the runner is where the
time goes) releases the rows it holds before the run stops, one that lands while the driver records a row drops
them, and they are run again on resume. The union call waits for its last bootstraps before it ends, so no work
outlives the call (a Ray unit is one call). The time a row still waited for its bootstrap is added to its `trust`
phase (the critical path); the bootstrap's own seconds are recorded as `telemetry.stability_s`.

Threads: the bootstrap's resamples are solved one after another on the background thread (`SOLVER_THREADS`). Every
solve runs Python around HiGHS (scipy's problem set-up and option checks) that takes the GIL from the main thread,
whose kernel launches are the critical path of a GPU sweep, and every extra solver thread adds to it. On an H200
(benchmarks/diag/eval_gap.py, benchmarks/results/speed-h200.json run `stability-interference`), the reference
matrix's cells took 28.3-31.9 s with the resamples on half the torch threads, 24.1 s on one thread, and
19.7 s with no bootstrap at all; one thread's bootstraps still finish within their union call.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from ..trust.stability import THREAD_PREFIX  # the background thread is named like the solver pool's

# how many resamples one bootstrap solves at once beside the GPU work (see the module docstring)
SOLVER_THREADS = 1


def _timed(fn: Callable[[], Any]) -> tuple[Any, float]:
    t = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t


class StabilityPipeline:
    """Holds finished cells (`CellRun`s) until their stability block is in; hands them back in submission order.

    `submit(run, compute)` runs `compute()` (the cell's stability block) on the background thread; `hold(run)`
    queues a run with nothing to wait for (an error row), so that it keeps its place. `ready()` yields the runs that
    can be released now without waiting, `drain()` all of them, waiting. Use as a context manager: leaving it
    (also by an exception or a closed generator) drops what was not drained and stops the thread."""

    def __init__(self) -> None:
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix=THREAD_PREFIX)
        self._pending: deque[tuple[Any, Future[tuple[Any, float]] | None]] = deque()

    def __enter__(self) -> StabilityPipeline:
        return self

    def __exit__(self, *exc: object) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)

    def submit(self, run: Any, compute: Callable[[], dict[str, Any] | None]) -> None:
        self._pending.append((run, self._pool.submit(_timed, compute)))

    def hold(self, run: Any) -> None:
        self._pending.append((run, None))

    def __len__(self) -> int:
        return len(self._pending)

    def ready(self) -> Iterator[Any]:
        while self._pending and (self._pending[0][1] is None or self._pending[0][1].done()):
            yield self._release()

    def drain(self) -> Iterator[Any]:
        while self._pending:
            yield self._release()

    def _release(self) -> Any:
        run, future = self._pending[0]  # taken off only once its block is in: a Ctrl-C while waiting keeps it queued
        if future is None:
            self._pending.popleft()
            return run
        t = time.perf_counter()
        try:
            block, solve_s = future.result()
        except Exception as exc:  # noqa: BLE001 - stability_for records its own failures; this is a last resort
            block, solve_s = {"computable": False, "reason": f"{type(exc).__name__}: {exc}", "stable": None}, 0.0
        waited = time.perf_counter() - t
        self._pending.popleft()
        run.trust["stability"] = block  # a submitted run is a finished cell: its trust and telemetry are there
        tel = run.telemetry
        phases = tel["phases"]
        phases["trust"] = round(phases.get("trust", 0.0) + waited, 3)
        tel["wall_s"] = round(sum(phases.values()), 3)
        tel["stability_s"] = round(solve_s, 3)
        return run


__all__ = ["SOLVER_THREADS", "StabilityPipeline"]
