"""Which CPUs a GPU worker of the Ray executor keeps to: a slice of its node's CPUs of its own, CPU 0 left out.

Why: a worker's main thread is what paces a union call on a GPU host: it launches one small kernel after another
(0.6 to 1 s of CPU per second of a union call on one core, on an `nvidia-h200-x2` host whose other cores idled), so
the call runs at the speed of the core that thread lands on. On that virtual machine the cores are not equal: of two
busy Python loops pinned to CPU 0 and to CPU 1, 16 or 31, one ran at 61-71 % of the other's speed in each pair (CPU
0 is the one they share, though the run did not record which loop was which), and unpinned loops differed by up to
20 % (benchmarks/cpu_pair.py; `cpu_pair` under `2026-11-30c` in benchmarks/results/ray-h200x2.json); CPU 0 is also
where Linux usually runs much of its interrupt and housekeeping work. Binding each GPU worker to a disjoint slice of
the node's CPUs without CPU 0 (as MPI launchers bind ranks to cores, for the same reason) keeps the workers, their
solver threads and the interrupts off each other's cores. The slices are contiguous CPU numbers: the SMT and NUMA
topology is not read. Its effect on a sweep was not isolated from the run-to-run spread of those machines
(docs/performance.md). Workers without a GPU (CPU sweeps, the tests) are not bound: their cores are their compute.

Pure: the caller (execution/ray_worker.py) reads the CPUs, its GPUs' indices on the node and the node's GPU count.
"""

from __future__ import annotations


def worker_cpus(
    available: list[int], gpu_ids: list[int], node_gpus: int, gpus_per_worker: float, workers: int
) -> list[int] | None:
    """The CPUs of the worker holding `gpu_ids` of a node with `node_gpus` GPUs, in a sweep of `workers` workers of
    `gpus_per_worker` GPUs each; None when it is not bound.

    The node's usable CPUs (all but CPU 0, when there are enough) are cut into one slice per block of
    `gpus_per_worker` GPUs the node has, and the worker takes its block's slice: workers never share a CPU whatever
    blocks Ray gives them. A sweep's only worker takes them all. Not bound: a fraction of a GPU per worker (workers
    sharing a GPU would share a slice), GPUs that are not an aligned block (e.g. 0 and 3 of a node, for 2 per
    worker), an index the node does not have (one `ray start` per GPU, each seeing its own), slices under 2 CPUs."""
    if gpus_per_worker < 1 or gpus_per_worker != int(gpus_per_worker) or node_gpus < 1 or not gpu_ids:
        return None
    gpw = int(gpus_per_worker)
    ids = sorted(gpu_ids)
    if ids != list(range(ids[0], ids[0] + gpw)) or ids[0] % gpw or ids[-1] >= node_gpus:
        return None
    slices = 1 if workers == 1 else max(1, node_gpus // gpw)
    slot = 0 if workers == 1 else ids[0] // gpw
    cpus = sorted(available)
    usable = [c for c in cpus if c != 0] if len(cpus) > slices * 2 else cpus
    per = len(usable) // slices
    if per < 2:
        return None
    return usable[slot * per : (slot + 1) * per]


__all__ = ["worker_cpus"]
