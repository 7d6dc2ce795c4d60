"""A Ray worker of a sweep: a long-lived process that loads the model, the tokenised data and the baseline's
outputs once (`prepare`), then runs the canary or the work units the driver gives it, with the same engines as
the local executor (`engines.execute_cells`), so its rows are the local executor's rows.

It never writes a row or the summary: it streams one `CellRecord` per finished cell back to the driver, the
single writer. When it shares the driver's filesystem (checked with a probe file the driver wrote, never
assumed) it writes each cell's artifacts itself before handing the record back; otherwise the driver writes them
from the record.

This module does not import ray: `ray_executor.py` wraps the class with `ray.remote` at run time.
"""

from __future__ import annotations

import os
import platform
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ..planning import Cell, Plan
from ..schema import Matrix
from .progress import Reporter
from .records import CellRecord, make_record, write_artifacts


def _process_start_time() -> float | None:
    try:
        import psutil  # a dependency of ray

        return float(psutil.Process().create_time())
    except Exception:
        return None


def _bind_to_own_cpus(gpus_per_worker: float, workers: int) -> list[int] | None:
    """Bind this GPU worker's process (every thread) to its slice of the node's CPUs (execution/cpu_binding.py);
    the CPUs, or None when it is not bound (no GPU, not under Ray, nothing to slice)."""
    from .cpu_binding import worker_cpus

    try:
        import ray

        gpu_ids = [int(g) for g in ray.get_gpu_ids()]
        if not gpu_ids:
            return None
        node = ray.get_runtime_context().get_node_id()
        node_gpus = next(int(n["Resources"].get("GPU", 0)) for n in ray.nodes() if n["NodeID"] == node)
        cpus = worker_cpus(sorted(os.sched_getaffinity(0)), gpu_ids, node_gpus, gpus_per_worker, workers)
        if cpus is None:
            return None
        for tid in os.listdir("/proc/self/task"):  # threads started before this one keep their mask otherwise
            try:
                os.sched_setaffinity(int(tid), cpus)
            except OSError:
                pass
        os.sched_setaffinity(0, cpus)
        return cpus
    except Exception:  # noqa: BLE001 - binding is an optimisation: never a reason for a worker to fail
        return None


class SweepWorker:
    def __init__(
        self,
        name: str,
        matrix: Matrix,
        plan: Plan,
        engine: str,
        threads: int | None,
        base_dir: str,
        probe: tuple[str, str] | None,
        baseline_cache: bool = True,
        binding: tuple[float, int] | None = None,
    ):
        # when this worker's process started and when Ray constructed the actor (epoch seconds): the driver turns them
        # into offsets from its own start, to tell a late process start from a slow load (docs/distributed.md)
        self.started_at = {"process": _process_start_time(), "actor": time.time()}
        self.name = name
        self.matrix, self.plan, self.engine, self.threads = matrix, plan, engine, threads
        self.base_dir = Path(base_dir)
        self.probe = probe
        # (GPUs per worker, workers of the sweep): bind to a CPU slice of its own (execution/cpu_binding.py)
        self.cpus = _bind_to_own_cpus(*binding) if binding is not None else None
        if self.cpus is not None and self.threads:
            self.threads = min(self.threads, len(self.cpus))
        self.baseline_cache = baseline_cache
        self.ctx: Any = None
        self.setup: dict[str, Any] = {}
        self.shared_fs = False

    def prepare(self) -> dict[str, Any]:
        """Load everything once; what the driver needs to know about this worker (see `describe`)."""
        os.environ.setdefault("TQDM_DISABLE", "1")
        from ..quiet import quiet_libraries
        from .context import prepare_context

        quiet_libraries()
        if self.threads:
            import torch

            torch.set_num_threads(self.threads)
        t = time.perf_counter()
        prepare_at = time.time()
        self.ctx, self.setup = prepare_context(self.matrix, self.plan, self.engine, baseline_cache=self.baseline_cache)
        self.setup["prepare_s"] = round(time.perf_counter() - t, 3)
        self.setup["started_at"] = {**self.started_at, "prepare": prepare_at, "ready": time.time()}
        self.shared_fs = self._sees_probe()
        return self.describe()

    def _sees_probe(self) -> bool:
        """True when the file the driver wrote is here, at the same path, with the same content."""
        if self.probe is None:
            return False
        path, token = self.probe
        try:
            return Path(path).read_text(encoding="utf-8") == token
        except (OSError, UnicodeDecodeError):
            return False

    def describe(self) -> dict[str, Any]:
        import torch

        try:
            import ray

            rt = ray.get_runtime_context()
            node_id, gpu_ids = rt.get_node_id(), [str(g) for g in ray.get_gpu_ids()]
        except Exception:  # not running under Ray (tests call the class directly)
            node_id, gpu_ids = None, []
        device = self.ctx.loaded.device
        return {
            "name": self.name,
            "pid": os.getpid(),
            "host": platform.node(),
            "node_id": node_id,
            "gpu_ids": gpu_ids,
            "device": str(device),
            "device_type": device.type,
            "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor(),
            "torch_threads": torch.get_num_threads(),
            "cpus": self.cpus,
            "shared_fs": self.shared_fs,
            "setup": self.setup,
            "sweep": self.ctx.describe(),
            "record_context": self.ctx.record,
        }

    def canary(self, cell: Cell, attempt: int) -> tuple[dict[str, Any], CellRecord | None]:
        from .canary import run_canary

        doc, runs = run_canary(self.ctx, cell, Reporter())
        return doc, (make_record(self.ctx.record, runs, attempt, from_canary=True) if runs else None)

    def run_unit(self, cells: list[Cell], attempt_of: dict[str, int], write_here: bool) -> Iterator[CellRecord]:
        """One record per cell, as each finishes (a Ray streaming generator on the driver's side)."""
        from .engines import execute_cells

        for cell, runs in execute_cells(self.ctx, cells, Reporter()):
            record = make_record(self.ctx.record, runs, attempt_of.get(cell.id, 0) + 1)
            if write_here:
                write_artifacts(record, self.base_dir)
                record.artifacts_written = True
            yield record

    def downstream(self, jobs: list[Any], baseline: bool) -> Iterator[tuple[str, dict[str, Any]]]:
        """The lm-eval post-phase on this worker (execution/downstream_runs.py): one result per item as it finishes
        (a Ray streaming generator on the driver's side)."""
        from .downstream_runs import run_downstream

        yield from run_downstream(self.ctx, jobs, baseline)
