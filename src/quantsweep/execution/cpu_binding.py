"""Which CPUs a GPU worker of the Ray executor keeps to: a slice of its node's CPUs of its own, CPU 0 left out.

Why: a worker's main thread is what paces a union call on a GPU host (it launches one small kernel after another:
one CPU core at 100 % for the whole call, measured on an `nvidia-h200-x2` host, docs/distributed.md), so its
speed is the speed of the core it lands on. On that virtual machine the cores are not equal: a busy Python loop
pinned to CPU 0 ran at 62 % of its speed elsewhere, beside a second one on any other core, and two unpinned loops
differed by 10 % (`benchmarks/results/ray-h200x2.json`, `cpu_pair`). CPU 0 also takes the guest's interrupts and
housekeeping. Binding each GPU worker to a disjoint slice of the node's CPUs without CPU 0 — what `torchrun
--numa-binding` and MPI's `--bind-to` do for the same reason — keeps the workers, their solver threads and the
interrupts off each other's cores. Workers without a GPU (CPU sweeps, the tests) are not bound: their cores are
their compute.

Pure: the caller (execution/ray_worker.py) reads the CPUs, its GPU's index on the node and the node's GPU count.
"""

from __future__ import annotations


def worker_cpus(available: list[int], gpu_index: int, node_gpus: int, gpus_per_worker: int) -> list[int] | None:
    """The CPUs of the worker holding GPU `gpu_index` of a node with `node_gpus` GPUs (each worker holding
    `gpus_per_worker` of them, in index order); None when they cannot be sliced with two or more CPUs each."""
    if gpus_per_worker < 1 or node_gpus < 1 or not 0 <= gpu_index < node_gpus:
        return None
    cpus = sorted(available)
    workers = max(1, node_gpus // gpus_per_worker)
    slot = min(gpu_index // gpus_per_worker, workers - 1)
    usable = [c for c in cpus if c != 0] if len(cpus) > workers * 2 else cpus
    per = len(usable) // workers
    if per < 2:
        return None
    return usable[slot * per : (slot + 1) * per]


__all__ = ["worker_cpus"]
