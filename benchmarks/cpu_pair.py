"""Are a host's cores equal for a busy Python thread? (why GPU workers are bound to CPUs: execution/cpu_binding.py)

A union call on a GPU is paced by one Python thread launching kernels, so it runs at the speed of the core under it.
This runs a busy Python loop for 3 s in one process, then in two at once (unpinned), then pinned to pairs of CPUs
(0 and 1, 0 and 16, 0 and 31), four at once, and one alone again, and prints each process's loop rate (millions of
iterations per second, with the CPU it was pinned to). On an `nvidia-h200-x2` virtual machine (2026-11-30, an earlier
version of this script that did not record which process was which) each pinned pair with CPU 0 (0+1, 0+16, 0+31) had
one loop at 61-71 % of the other's speed, CPU 0 being the one they share: raw results under `2026-11-30c` ->
`cpu_pair` in results/ray-h200x2.json.

    python3 benchmarks/cpu_pair.py --out cpu-pair.json
"""

from __future__ import annotations

import argparse
import json
import os
import time
from multiprocessing import Process, Queue
from pathlib import Path


def _spin(q: Queue, cpu: int | None, seconds: float) -> None:
    if cpu is not None:
        os.sched_setaffinity(0, {cpu})
    t = time.perf_counter()
    n = 0
    while time.perf_counter() - t < seconds:
        for _ in range(10000):
            n += 1
    q.put((cpu, n / (time.perf_counter() - t)))


def run(cpus: list[int | None], seconds: float = 3.0) -> list[list]:
    """[CPU (None: not pinned), loop rate in M iterations/s] per process, one process per entry, all at once."""
    q: Queue = Queue()
    procs = [Process(target=_spin, args=(q, c, seconds)) for c in cpus]
    for p in procs:
        p.start()
    for p in procs:
        p.join()
    results = [q.get() for _ in procs]
    return sorted(([cpu, round(rate / 1e6, 2)] for cpu, rate in results), key=lambda r: (r[0] is None, r[0] or 0))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    allowed = sorted(os.sched_getaffinity(0))
    pairs = [[0, c] for c in dict.fromkeys((1, 16, allowed[-1])) if 0 in allowed and c in allowed and c != 0]
    cases = [("solo", [None]), ("two", [None, None])] + [(f"pin{a}_{b}", [a, b]) for a, b in pairs]
    cases += [("four", [None] * 4), ("solo_again", [None])]
    out = {}
    for name, cpus in cases:
        out[name] = run(cpus)
        print(name, out[name], flush=True)
    if args.out:
        args.out.write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
