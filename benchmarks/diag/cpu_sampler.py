"""Which threads of which processes use the CPUs while a sweep runs: every second, the CPU seconds each thread of
each process used since the previous sample (threads above 0.05 s), busiest processes first, one JSON line per
sample. It answered "do two Ray workers on one host compete for CPUs?" (no: each worker's main thread used 0.6 to
1.05 s per second through its union call and the other cores idled; `reference_pipeline_only` under `2026-11-30c`
in benchmarks/results/ray-h200x2.json, docs/performance.md).

    python3 benchmarks/diag/cpu_sampler.py cpu.jsonl & SAMPLER=$!
    python3 benchmarks/ray_scaling.py --matrix reference --workers 1,2 --out ref.json
    kill $SAMPLER
"""

from __future__ import annotations

import json
import sys
import time

import psutil  # a dependency of ray


def sample(prev: dict[tuple[int, int], float]) -> tuple[list[dict], dict[tuple[int, int], float]]:
    """The busiest processes since `prev` (per-thread CPU seconds), and the new per-thread totals."""
    now: dict[tuple[int, int], float] = {}
    for p in psutil.process_iter(["pid"]):
        try:
            for th in p.threads():
                now[(p.pid, th.id)] = th.user_time + th.system_time
        except (psutil.Error, OSError):
            continue
    busy: dict[int, list[float]] = {}
    for key, total in now.items():
        used = total - prev.get(key, total)
        if used > 0.05:
            busy.setdefault(key[0], []).append(round(used, 2))
    procs = []
    for pid, used in busy.items():
        try:
            cmd = " ".join(psutil.Process(pid).cmdline())[:60]
        except (psutil.Error, OSError):
            cmd = "?"
        procs.append({"pid": pid, "cmd": cmd, "cpu_s": round(sum(used), 2), "busy_threads": len(used),
                      "top": sorted(used, reverse=True)[:6]})
    procs.sort(key=lambda x: -x["cpu_s"])
    return procs[:6], now


def main() -> None:
    out = open(sys.argv[1], "w", encoding="utf-8")
    prev: dict[tuple[int, int], float] = {}
    t0 = time.time()
    while True:
        procs, prev = sample(prev)
        out.write(json.dumps({"t": round(time.time() - t0, 1), "procs": procs}) + "\n")
        out.flush()
        time.sleep(1.0)


if __name__ == "__main__":
    main()
