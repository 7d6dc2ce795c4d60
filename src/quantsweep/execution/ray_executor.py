"""The Ray executor: cells spread over long-lived workers on a Ray cluster (every GPU of a host, or many hosts),
with exactly the rows of the local executor (docs/distributed.md).

The driver (this process) starts a local Ray instance, or joins a cluster by address, and places one actor per
`gpus_per_worker` GPUs (`ray_worker.SweepWorker`). Each worker loads the model once. The canary runs first on
the first worker ready; then the work units (one union call, or one cell with the naive engine, split while
there are fewer units than workers; `work_units.py`) are handed out largest first, each to the next idle worker.
Every finished cell streams back as a `CellRecord` that the driver commits (it stays the single writer of
`rows.jsonl` and `sweep-summary.json`), so resume, `--rerun`, `--retry-errors`, `--fail-fast`, the lock and the
exit codes behave as with the local executor.

Faults: a worker that dies (process killed, node lost) loses only the cells of its unit not yet streamed back;
they are retried once on another worker (a replacement worker is started in its place while the cluster has room),
and become error rows (`error_type: WORKER_LOST`) if that fails too. The scheduling is Ray's placement of actors
and this loop over `ray.wait`; there is no scheduler of our own beyond the order of the queue.
"""

from __future__ import annotations

import logging
import secrets
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import ExitCode, InputError, QuantsweepError
from ..planning import Cell, Plan
from ..schema import Matrix
from ..store.atomic import atomic_write_text
from .cell_runner import CellRun, _now
from .progress import Reporter
from .records import CellRecord, make_record
from .work_units import WorkUnit, balance

RAY_MISSING = (
    "--executor ray needs the optional extra 'ray': install it with `pip install 'quantsweep[ray]'` "
    "(or `uv sync --extra ray`)"
)
PROBE_NAME = ".fs-probe"
WAIT_S = 1.0  # how often the loop wakes up to look at workers that are starting


def import_ray() -> Any:
    try:
        import ray
    except ImportError:
        raise InputError(RAY_MISSING) from None
    return ray


@dataclass
class _Slot:
    """One worker as the driver sees it."""

    name: str
    handle: Any
    ready_ref: Any
    state: str = "starting"  # starting | idle | busy | dead
    info: dict[str, Any] = field(default_factory=dict)
    units: int = 0
    cells: int = 0
    busy_s: float = 0.0
    busy_since: float = 0.0
    error: str | None = None

    def summary(self) -> dict[str, Any]:
        keep = ("pid", "host", "node_id", "gpu_ids", "device", "device_name", "torch_threads", "cpus", "shared_fs",
                "setup")
        return {
            "name": self.name,
            "state": self.state,
            **{k: self.info.get(k) for k in keep},
            "units": self.units,
            "cells": self.cells,
            "busy_s": round(self.busy_s, 3),
            "error": self.error,
        }


@dataclass
class _Inflight:
    unit: WorkUnit
    slot: _Slot
    done: set[str] = field(default_factory=set)


class RayExecutor:
    name = "ray"

    def __init__(self, matrix: Matrix, plan: Plan, engine: str, threads: int | None, reporter: Reporter,
                 baseline_cache: bool = True):
        self.matrix, self.plan, self.engine, self.threads, self.reporter = matrix, plan, engine, threads, reporter
        self.baseline_cache = baseline_cache
        self.ray = import_ray()
        self.spec = matrix.execution
        self.slots: list[_Slot] = []
        self.connected_here = False
        self.address: str | None = None
        self.resources: dict[str, float] = {}
        self.gpus_per_worker = 0.0
        self.cpus_per_worker = 1
        self.workers_wanted = 1
        self.replacements_left = 0
        self.retries = 0
        self.lost_cells = 0
        self.units_planned = 0
        self.units_split = 0
        self.record_context: Any = None
        self.probe: tuple[str, str] | None = None
        self.base_dir = Path.cwd()
        self._remote_cls: Any = None
        # start_s: to the first worker ready; all_ready_s: to every first-generation worker ready (both from the
        # start of `start`); canary_s; cells_s: from the start of `run` to its last record
        self.timings: dict[str, float] = {}
        self._t0: float | None = None
        self._t0_epoch: float | None = None
        self._generation = 0

    # -- cluster and workers ---------------------------------------------------------------------------------
    def _connect(self) -> None:
        ray = self.ray
        if ray.is_initialized():  # the caller (a test, a notebook) already holds a connection: use it as it is
            self.address = "already connected"
            return
        kwargs: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False, "logging_level": logging.ERROR}
        address = self.spec.ray_address
        try:
            if address:
                ray.init(address=address, **kwargs)
                self.address = address
            else:  # "local": a new instance even where RAY_ADDRESS or a `ray start` cluster exists (docs say so)
                ray.init(address="local", **kwargs)
                self.address = "local"
        except (ConnectionError, ValueError, RuntimeError) as exc:
            where = f"the Ray cluster at {address!r}" if address else "a local Ray instance"
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise InputError(f"execution.ray_address: cannot connect to {where}: {first}") from None
        self.connected_here = True

    def _size_workers(self) -> int:
        self.resources = dict(self.ray.cluster_resources())
        gpus = float(self.resources.get("GPU", 0.0))
        cpus = int(self.resources.get("CPU", 0))
        spec = self.spec
        gpw = spec.gpus_per_worker if spec.gpus_per_worker is not None else (1.0 if gpus >= 1 else 0.0)
        if gpw > 0 and gpus < gpw:
            raise InputError(
                f"execution.gpus_per_worker: {gpw:g} GPUs per worker asked, but the Ray cluster has {gpus:g} GPUs"
            )
        workers = spec.workers or (int(gpus // gpw) if gpw > 0 else max(1, min(2, cpus)))
        if gpw > 0 and workers * gpw > gpus + 1e-9:
            raise InputError(
                f"execution.workers: {workers} workers x {gpw:g} GPUs need {workers * gpw:g} GPUs; "
                f"the Ray cluster has {gpus:g}"
            )
        cpw = spec.cpus_per_worker or max(1, cpus // workers)
        if workers * cpw > cpus:
            raise InputError(
                f"execution.workers: {workers} workers x {cpw} CPUs need {workers * cpw} CPUs; "
                f"the Ray cluster has {cpus}"
            )
        self.gpus_per_worker, self.cpus_per_worker, self.workers_wanted = gpw, cpw, workers
        return workers

    def _spread_over_worker_gpus(self) -> None:
        """A worker given several GPUs spreads its model over them (accelerate's `auto` device map) unless the
        matrix chose a device map itself; placement is not part of a cell's identity, so rows are unchanged."""
        if self.gpus_per_worker >= 2 and self.matrix.model.device_map == "none":
            self.matrix = self.matrix.model_copy(
                update={"model": self.matrix.model.model_copy(update={"device_map": "auto"})}
            )
            self.reporter.message(
                f"{self.gpus_per_worker:g} GPUs per worker: each worker spreads its model over its GPUs "
                "(model.device_map auto)"
            )

    def _write_probe(self) -> None:
        if self.spec.artifacts == "driver":
            return
        sweep_dir = self.base_dir / self.plan.sweep_dir
        path = sweep_dir / PROBE_NAME
        token = secrets.token_hex(16)
        atomic_write_text(path, token)  # never through a link planted at the probe's name
        self.probe = (str(path), token)

    def _spawn(self, name: str) -> _Slot:
        from .ray_worker import SweepWorker

        if self._remote_cls is None:
            self._remote_cls = self.ray.remote(SweepWorker)
        handle = self._remote_cls.options(
            num_cpus=self.cpus_per_worker, num_gpus=self.gpus_per_worker, max_restarts=0, max_task_retries=0
        ).remote(
            name,
            self.matrix,
            self.plan,
            self.engine,
            self.threads or self.cpus_per_worker,
            str(self.base_dir),
            self.probe,
            self.baseline_cache,
            (self.gpus_per_worker, self.workers_wanted),
        )
        slot = _Slot(name=name, handle=handle, ready_ref=handle.prepare.remote())
        self.slots.append(slot)
        self.reporter.worker_status(name, "starting (loading the model)")
        return slot

    def _replace(self, dead: _Slot) -> None:
        if self.replacements_left <= 0:
            return
        self.replacements_left -= 1
        self._generation += 1
        self._spawn(f"{dead.name.split('+')[0]}+{self._generation}")

    def _mark_dead(self, slot: _Slot, exc: BaseException) -> None:
        slot.state = "dead"
        slot.error = _first_line(exc)
        if slot.busy_since:
            slot.busy_s += time.perf_counter() - slot.busy_since
            slot.busy_since = 0.0
        try:
            self.ray.kill(slot.handle, no_restart=True)
        except Exception:  # already gone
            pass
        self.reporter.worker_status(slot.name, f"died: {slot.error}")
        self._replace(slot)

    def _on_ready(self, slot: _Slot) -> None:
        """A starting worker answered: it is idle, or it failed to load (which may be the user's input)."""
        try:
            info = self.ray.get(slot.ready_ref)
        except self.ray.exceptions.RayError as exc:
            cause = getattr(exc, "cause", None)
            if isinstance(cause, QuantsweepError):
                # e.g. a model folder that does not load: the worker's own one-line error and exit code, as with
                # the local executor (not Ray's wrapper, which carries the remote traceback)
                raise cause from None
            self._mark_dead(slot, exc)
            return
        slot.info, slot.state = info, "idle"
        started = (info.get("setup") or {}).pop("started_at", None)
        if started and self._t0_epoch is not None:  # epoch stamps -> seconds after the driver's `start`
            info["setup"]["started_after_s"] = {
                k: (round(v - self._t0_epoch, 3) if v is not None else None) for k, v in started.items()
            }
        if self._t0 is not None and not any(s.state == "starting" for s in self.slots):
            self.timings.setdefault("all_ready_s", round(time.perf_counter() - self._t0, 3))
        if self.record_context is None:
            self.record_context = info["record_context"]
        self.reporter.worker_started(slot.name, info)
        self.reporter.worker_status(slot.name, "idle")

    def _pump_starting(self, timeout: float) -> None:
        starting = [s for s in self.slots if s.state == "starting"]
        if not starting:
            return
        ready, _ = self.ray.wait([s.ready_ref for s in starting], num_returns=1, timeout=timeout)
        for s in starting:
            if s.ready_ref in ready:
                self._on_ready(s)

    def _first_idle(self, deadline: float) -> _Slot:
        while True:
            idle = [s for s in self.slots if s.state == "idle"]
            if idle:
                return idle[0]
            if not any(s.state == "starting" for s in self.slots):
                errors = "; ".join(f"{s.name}: {s.error}" for s in self.slots if s.error) or "no worker could start"
                raise QuantsweepError(f"no Ray worker is available ({errors})", ExitCode.INTERNAL)
            if time.monotonic() > deadline:
                raise QuantsweepError(
                    f"no Ray worker became ready within execution.worker_start_timeout_s="
                    f"{self.spec.worker_start_timeout_s:g} s", ExitCode.INTERNAL,
                )
            self._pump_starting(WAIT_S)

    # -- the executor interface --------------------------------------------------------------------------------
    def start(self) -> dict[str, Any]:
        t0 = self._t0 = time.perf_counter()
        self._t0_epoch = time.time()
        self._connect()
        workers = self._size_workers()
        self.replacements_left = workers
        self._spread_over_worker_gpus()
        self._write_probe()
        where = f"Ray cluster {self.address}" if self.address != "local" else "a local Ray instance"
        self.reporter.message(
            f"{where}: {workers} workers x ({self.gpus_per_worker:g} GPU, {self.cpus_per_worker} CPU); "
            f"cluster has {self.resources.get('GPU', 0):g} GPUs, {self.resources.get('CPU', 0):g} CPUs"
        )
        for i in range(workers):
            self._spawn(f"w{i}")
        first = self._first_idle(time.monotonic() + self.spec.worker_start_timeout_s)
        self.timings["start_s"] = round(time.perf_counter() - t0, 3)
        return {**first.info["sweep"], "setup": first.info["setup"]}

    def canary(self, cell: Cell, attempt: int) -> tuple[dict[str, Any], CellRecord | None]:
        t0 = time.perf_counter()
        try:
            return self._canary(cell, attempt)
        finally:
            self.timings["canary_s"] = round(time.perf_counter() - t0, 3)

    def _canary(self, cell: Cell, attempt: int) -> tuple[dict[str, Any], CellRecord | None]:
        last: BaseException | None = None
        tried: set[str] = set()
        for _ in range(2):  # a worker that dies running the canary: once more on another worker
            deadline = time.monotonic() + self.spec.worker_start_timeout_s
            slot = self._first_idle(deadline)
            while slot.name in tried:
                self._pump_starting(WAIT_S)
                slot = self._first_idle(deadline)
            tried.add(slot.name)
            self.reporter.worker_status(slot.name, f"canary {cell.key} x{self.matrix.canary.repeats}")
            slot.state, slot.busy_since = "busy", time.perf_counter()
            try:
                doc, record = self.ray.get(slot.handle.canary.remote(cell, attempt))
            except self.ray.exceptions.RayError as exc:
                last = exc
                self.retries += 1
                self._mark_dead(slot, exc)
                continue
            slot.busy_s += time.perf_counter() - slot.busy_since
            slot.busy_since, slot.state = 0.0, "idle"
            self.reporter.worker_status(slot.name, "idle")
            return doc, record
        raise QuantsweepError(f"the canary's worker died twice: {_first_line(last)}", ExitCode.INTERNAL)

    def run(self, cells: list[Cell], attempt_of: dict[str, int]) -> Iterator[CellRecord]:
        from .shared_runner import work_units

        by_id = {c.id: c for c in cells}
        live = [s for s in self.slots if s.state != "dead"]
        device_type = next((s.info["device_type"] for s in self.slots if s.info), "cpu")
        units = work_units(self.matrix, device_type, self.engine, cells)
        planned = len(units)
        units = balance(units, len(live))
        self.units_planned, self.units_split = len(units), len(units) - planned
        queue: deque[WorkUnit] = deque(units)
        t0 = time.perf_counter()
        inflight: dict[Any, _Inflight] = {}
        stalled_since: float | None = None
        while queue or inflight:
            self._assign(queue, inflight, by_id, attempt_of)
            if queue and not inflight and not any(s.state == "idle" for s in self.slots):
                if not any(s.state == "starting" for s in self.slots):
                    yield from self._give_up(queue, by_id, attempt_of, "no Ray worker is left to run them")
                    return
                stalled_since = stalled_since or time.monotonic()
                if time.monotonic() - stalled_since > self.spec.worker_start_timeout_s:
                    yield from self._give_up(queue, by_id, attempt_of, "no Ray worker could be started in time")
                    return
            else:
                stalled_since = None
            starting = {s.ready_ref: s for s in self.slots if s.state == "starting"}
            waitables = list(inflight) + list(starting)
            if not waitables:
                continue
            ready, _ = self.ray.wait(waitables, num_returns=1, timeout=WAIT_S)
            for obj in ready:
                if obj in starting:
                    self._on_ready(starting[obj])
                    continue
                yield from self._advance(obj, inflight, queue, by_id, attempt_of)
            self.timings["cells_s"] = round(time.perf_counter() - t0, 3)

    def _assign(
        self, queue: deque[WorkUnit], inflight: dict[Any, _Inflight], by_id: dict[str, Cell], attempt_of: dict[str, int]
    ) -> None:
        for slot in [s for s in self.slots if s.state == "idle"]:
            if not queue:
                return
            # a unit a worker died on goes to another worker; to the same one only when no other is alive
            others_alive = {s.name for s in self.slots if s.state != "dead"}
            pick = next((u for u in queue if slot.name not in u.failed_on or others_alive <= u.failed_on), None)
            if pick is None:
                continue
            queue.remove(pick)
            write_here = self.spec.artifacts != "driver" and bool(slot.info.get("shared_fs"))
            cells = [by_id[i] for i in pick.cell_ids]
            gen = slot.handle.run_unit.options(num_returns="streaming").remote(
                cells, {i: attempt_of.get(i, 0) for i in pick.cell_ids}, write_here
            )
            inflight[gen] = _Inflight(pick, slot)
            slot.state, slot.busy_since = "busy", time.perf_counter()
            slot.units += 1
            retry = f" (retry {pick.attempts})" if pick.attempts else ""
            self.reporter.worker_status(slot.name, f"{pick.label}: {len(cells)} cells{retry}")

    def _advance(
        self,
        gen: Any,
        inflight: dict[Any, _Inflight],
        queue: deque[WorkUnit],
        by_id: dict[str, Cell],
        attempt_of: dict[str, int],
    ) -> Iterator[CellRecord]:
        job = inflight[gen]
        try:
            ref = next(gen)
            record: CellRecord = self.ray.get(ref)
        except StopIteration:
            del inflight[gen]
            slot = job.slot
            slot.busy_s += time.perf_counter() - slot.busy_since
            slot.busy_since, slot.state = 0.0, "idle"
            self.reporter.worker_status(slot.name, "idle")
            return
        except self.ray.exceptions.RayError as exc:
            del inflight[gen]
            yield from self._unit_failed(job, exc, queue, by_id, attempt_of)
            return
        job.done.add(record.cell_id)
        job.slot.cells += 1
        yield record

    def _unit_failed(
        self,
        job: _Inflight,
        exc: BaseException,
        queue: deque[WorkUnit],
        by_id: dict[str, Cell],
        attempt_of: dict[str, int],
    ) -> Iterator[CellRecord]:
        if isinstance(exc, self.ray.exceptions.RayActorError):
            self._mark_dead(job.slot, exc)
        else:  # the worker lives on, but its unit raised (a bug): the worker is still usable
            job.slot.state, job.slot.busy_since = "idle", 0.0
        rest = job.unit.without(job.done)
        if not rest.members:
            return
        rest.attempts += 1
        rest.failed_on.add(job.slot.name)
        if rest.attempts < 2:
            self.retries += 1
            self.reporter.message(
                f"worker {job.slot.name} failed running {rest.label} ({_first_line(exc)}); "
                f"retrying its {len(rest.members)} unfinished cells on another worker"
            )
            queue.appendleft(rest)
            return
        yield from self._give_up(deque([rest]), by_id, attempt_of, f"its worker failed twice: {_first_line(exc)}")

    def _give_up(
        self, units: deque[WorkUnit], by_id: dict[str, Cell], attempt_of: dict[str, int], why: str
    ) -> Iterator[CellRecord]:
        """Error rows for cells that could not be run (the rest of the sweep is recorded as usual)."""
        for unit in units:
            for cid in unit.cell_ids:
                cell = by_id[cid]
                run = CellRun(cell=cell, status="error", started_at=_now(), finished_at=_now(), engine=self.engine)
                run.error = f"cell not run: {why}"
                run.error_type = "WORKER_LOST"
                self.lost_cells += 1
                yield make_record(self.record_context, [run], attempt_of.get(cid, 0) + 1)

    def downstream(self, jobs: list[Any], baseline: bool) -> Iterator[tuple[str, dict[str, Any]]]:
        """The lm-eval post-phase on one worker (the first idle one), which already holds the model: the driver
        loads none. A worker that fails here ends the phase with a message; what it streamed back is recorded, and
        the next run does the rest."""
        t0 = time.perf_counter()
        slot = self._first_idle(time.monotonic() + self.spec.worker_start_timeout_s)
        what = (["baseline"] if baseline else []) + [j.cell.key for j in jobs]
        self.reporter.worker_status(slot.name, f"lm-eval: {', '.join(what)}")
        slot.state, slot.busy_since = "busy", time.perf_counter()
        try:
            for ref in slot.handle.downstream.options(num_returns="streaming").remote(jobs, baseline):
                yield self.ray.get(ref)
        except self.ray.exceptions.RayError as exc:
            if isinstance(exc, self.ray.exceptions.RayActorError):
                self._mark_dead(slot, exc)
            self.reporter.message(f"the lm-eval post-phase stopped: worker {slot.name} failed ({_first_line(exc)}); "
                                  "run the same command again to finish it")
        finally:
            if slot.state == "busy":
                slot.busy_s += time.perf_counter() - slot.busy_since
                slot.busy_since, slot.state = 0.0, "idle"
                self.reporter.worker_status(slot.name, "idle")
            self.timings["lm_eval_phase_s"] = round(time.perf_counter() - t0, 3)

    def describe(self) -> dict[str, Any]:
        return {
            "executor": "ray",
            "engine": self.engine,
            "ray_address": self.address,
            "ray_version": getattr(self.ray, "__version__", None),
            "cluster_resources": {k: v for k, v in self.resources.items() if k in ("CPU", "GPU", "memory")},
            "gpus_per_worker": self.gpus_per_worker,
            "cpus_per_worker": self.cpus_per_worker,
            "artifacts": self.spec.artifacts,
            "work_units": self.units_planned,
            "units_split": self.units_split,
            "retries": self.retries,
            "lost_cells": self.lost_cells,
            "timings": dict(self.timings),
            "workers": [s.summary() for s in self.slots],
        }

    def close(self) -> None:
        for slot in self.slots:
            if slot.busy_since:
                slot.busy_s += time.perf_counter() - slot.busy_since
                slot.busy_since = 0.0
            if slot.state != "dead":
                try:
                    self.ray.kill(slot.handle, no_restart=True)
                except Exception:
                    pass
        if self.probe is not None:
            Path(self.probe[0]).unlink(missing_ok=True)
        if self.connected_here:
            self.ray.shutdown()
            self.connected_here = False


def _first_line(exc: BaseException | None) -> str:
    if exc is None:
        return "unknown error"
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0] if text else ''}".strip().rstrip(":")


__all__ = ["RAY_MISSING", "RayExecutor", "import_ray"]
