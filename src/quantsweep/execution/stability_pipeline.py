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

Processes (GPU sweeps): once the cells got faster than one thread's bootstraps (a cell ~0.7 s on that matrix, a
bootstrap of 8 score batches ~51 HiGHS solves), rows waited for them (`trust` 2.3 s of 19.9 s, run
`shared-evaluations`). `StabilityPipeline(processes=n)` solves them in a pool of n solver processes instead: each
bootstrap is a pure function of plain data (trust/stability.py::stability_block), nothing of it takes the main
process's GIL, and n cells' bootstraps run at once. The pool is spawned (not forked: the parent holds CUDA and
torch's threads), once per process and reused by every union call and sweep (a spawn imports numpy and scipy,
~0.5-1 s); the pipeline starts its workers as it is made, so that they are up while the union call calibrates and
scores. If a worker dies (the pool is broken) the block is computed in the main thread instead: the same function,
the same result. `solver_processes()` picks n: none on a CPU run (the device is the CPU itself: the thread is the
lighter neighbour), a quarter of the usable CPUs on a GPU run, 1 to 4; `QUANTSWEEP_STABILITY_PROCESSES` overrides.

Threads in a solver process (`StabilityPipeline.solver_threads`): a process's resamples were solved one after
another, like the thread's, so the last cells' bootstraps, which the union call waits for at its end, took a whole
bootstrap each (`trust` 0.84 s of the 8B matrix's 7.7 s, run `solver-processes`). A worker's solver threads take no
GIL from the main process, so each now solves its resamples on the CPUs left beside the main process, shared among
the workers (3 each for 4 workers on a 16-CPU host); the results do not depend on the number of threads
(trust/stability.py draws every resample before solving any).
"""

from __future__ import annotations

import multiprocessing
import os
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Executor, Future, ProcessPoolExecutor, ThreadPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Any

from ..errors import InputError
from ..trust.stability import THREAD_PREFIX, default_threads  # the background thread is named like the solver pool's

# how many resamples one bootstrap solves at once beside the GPU work (see the module docstring)
SOLVER_THREADS = 1
MAX_PROCESSES = 4
# CPUs a GPU sweep's main process keeps for itself (its kernel launches, the evaluation's host work) when the solver
# processes size their thread pools
MAIN_PROCESS_CPUS = 2
PROCESSES_ENV = "QUANTSWEEP_STABILITY_PROCESSES"

_pool_lock = threading.Lock()
_process_pool: ProcessPoolExecutor | None = None
_process_pool_size = 0


def solver_processes(device_type: str) -> int:
    """How many solver processes a sweep on `device_type` uses (0: the background thread). See the module doc."""
    override = os.environ.get(PROCESSES_ENV, "").strip()
    if override:
        try:
            return max(0, int(override))
        except ValueError:
            raise InputError(f"{PROCESSES_ENV}={override!r}: expected a whole number of solver processes (0: a thread)"
                             ) from None
    if device_type == "cpu":
        return 0
    return max(1, min(MAX_PROCESSES, default_threads() // 4))


def threads_per_process(processes: int) -> int:
    """How many resamples each of `processes` solver processes solves at once: the usable CPUs beside the main
    process's `MAIN_PROCESS_CPUS`, shared among them (at least 1). See the module doc."""
    return max(1, (default_threads() - MAIN_PROCESS_CPUS) // max(1, processes))


def _shared_process_pool(size: int) -> ProcessPoolExecutor:
    """The process-wide pool of `size` spawned solver processes (made again if its size changed or it broke)."""
    global _process_pool, _process_pool_size
    with _pool_lock:
        pool = _process_pool
        if pool is None or _process_pool_size != size or getattr(pool, "_broken", False):
            if pool is not None:
                pool.shutdown(wait=False, cancel_futures=True)
            pool = ProcessPoolExecutor(
                max_workers=size, mp_context=multiprocessing.get_context("spawn"), initializer=_init_worker
            )
            _process_pool, _process_pool_size = pool, size
        return pool


def _forget_process_pool(pool: Executor) -> None:
    global _process_pool
    with _pool_lock:
        if _process_pool is pool:
            _process_pool = None


def _init_worker() -> None:
    """Run once in each new solver process. Ctrl-C reaches the whole foreground process group: the workers ignore
    it, so that the bootstraps under way still come back and the runner records the finished rows before it stops
    (shared_runner.py). A worker whose parent is gone (killed hard) exits instead of waiting for work forever."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    parent = multiprocessing.parent_process()
    if parent is not None:

        def watch() -> None:
            parent.join()
            os._exit(0)

        threading.Thread(target=watch, name="qs-parent-watch", daemon=True).start()
    import scipy.optimize  # noqa: F401  - what a bootstrap needs, imported before the first one arrives

    from ..trust import stability  # noqa: F401


def _spawn_now() -> None:
    """Submitted once per worker as the pipeline starts: the pool spawns a worker per job it cannot place."""


def _timed(fn: Callable[[], Any]) -> tuple[Any, float]:
    t = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t


class StabilityPipeline:
    """Holds finished cells (`CellRun`s) until their stability block is in; hands them back in submission order.

    `submit(run, compute)` runs `compute()` (the cell's stability block) on the background thread, or in a solver
    process with `processes` > 0; `hold(run)` queues a run with nothing to wait for (an error row), so that it keeps
    its place. `ready()` yields the runs that can be released now without waiting, `drain()` all of them, waiting.
    Use as a context manager: leaving it (also by an exception or a closed generator) drops what was not drained and
    stops the thread (a process pool outlives it: only its queued work is cancelled)."""

    def __init__(self, processes: int = 0) -> None:
        self._pool: Executor
        self._processes = processes
        self._owned = processes <= 0  # the thread is the pipeline's own; a process pool is the process's
        if self._owned:
            self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix=THREAD_PREFIX)
        else:
            self._pool = _shared_process_pool(processes)
            for _ in range(processes):  # spawn the workers now, while the union call calibrates and scores
                self._pool.submit(_spawn_now)
        self._pending: deque[tuple[Any, Future[tuple[Any, float]] | None, Callable[[], Any] | None]] = deque()

    @property
    def solver_threads(self) -> int:
        """How many resamples one bootstrap solves at once: `SOLVER_THREADS` on the background thread (every extra
        thread takes the main thread's GIL); in solver processes, the CPUs beside the main process's, shared."""
        return SOLVER_THREADS if self._owned else threads_per_process(self._processes)

    def __enter__(self) -> StabilityPipeline:
        return self

    def __exit__(self, *exc: object) -> None:
        if self._owned:
            self._pool.shutdown(wait=False, cancel_futures=True)
        else:  # the pool outlives the pipeline: only this pipeline's queued work is dropped
            for _run, future, _compute in self._pending:
                if future is not None:
                    future.cancel()

    def submit(self, run: Any, compute: Callable[[], dict[str, Any] | None]) -> None:
        """`compute` must pickle when the pipeline uses processes (stability_job's partial does)."""
        future = None
        for _attempt in range(2):  # a pool broken by a dead worker is replaced once
            try:
                future = self._pool.submit(_timed, compute)
                break
            except BrokenProcessPool:
                self._replace_broken_pool()
        self._pending.append((run, future, compute))  # None: computed in this thread when the row is released

    def _replace_broken_pool(self) -> None:
        _forget_process_pool(self._pool)
        self._pool = _shared_process_pool(self._processes)

    def hold(self, run: Any) -> None:
        self._pending.append((run, None, None))

    def __len__(self) -> int:
        return len(self._pending)

    def ready(self) -> Iterator[Any]:
        while self._pending and (self._pending[0][1] is None or self._pending[0][1].done()):
            yield self._release()

    def drain(self) -> Iterator[Any]:
        while self._pending:
            yield self._release()

    def _release(self) -> Any:
        # taken off only once its block is in: a Ctrl-C while waiting keeps it queued
        run, future, compute = self._pending[0]
        if compute is None:
            self._pending.popleft()
            return run
        t = time.perf_counter()
        try:
            block, solve_s = self._outcome(future, compute)
        except Exception as exc:  # noqa: BLE001 - stability_block records its own failures; this is a last resort
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

    def _outcome(self, future: Future[tuple[Any, float]] | None, compute: Callable[[], Any]) -> tuple[Any, float]:
        """The block and its seconds. A job whose solver process died (or was not submitted: the pool was broken)
        is computed here, the same function; a Ctrl-C of this thread while it waits propagates."""
        if future is None:
            return _timed(compute)
        try:
            return future.result()
        except BaseException as exc:
            from_worker = future.done() and not future.cancelled() and future.exception() is exc
            if isinstance(exc, BrokenProcessPool) or (from_worker and not isinstance(exc, Exception)):
                if not self._owned:
                    self._replace_broken_pool()
                return _timed(compute)
            raise


__all__ = ["SOLVER_THREADS", "StabilityPipeline", "solver_processes", "threads_per_process"]
