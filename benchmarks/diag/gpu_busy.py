"""Where a shared sweep's phases wait on the host and where on the device: GPU busy time per phase.

Runs the matrix of `--variant` with the shared engine (no naive engine) `--runs` times in one process, unprofiled
(each run's cells wall time and phases: the spread within one process), then once more under `torch.profiler` with
a marker around each step of the sweep (the union call's calibration, its scores, ModelOpt's search in it, each
cell's solve, evaluation and trust checks). For every marker it prints the wall time, the time the GPU was busy
inside it (the union of kernel, copy and memset intervals) and the kernels that took most of that time. A phase
whose busy time is close to its unprofiled wall time is bound by the device; one far below, by the host. The
profiler slows the host (the profiled run's walls are longer); the busy times are the device's own.

    python benchmarks/diag/gpu_busy.py --variant llama3-8b --runs 2 --out busy.json
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import sys
import tempfile
import time
import warnings
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import yaml  # noqa: E402
from shared_vs_naive import VARIANTS, floor_estimate, reference_matrix, run_mode, warm_up  # noqa: E402

# (module, attribute, marker): what the profiled run brackets with a `record_function`
MARKERS = [
    ("quantsweep.execution.shared_runner", "run_union", "union"),
    ("modelopt.torch.quantization.algorithms:AutoQuantizeGradientSearcher", "estimate_sensitivity_scores", "score"),
    ("modelopt.torch.quantization.algorithms:_AutoQuantizeBaseSearcher", "run_search", "union_search"),
    ("quantsweep.execution.shared_runner", "apply_plan", "solve"),
    ("quantsweep.execution.cell_plans:CellPlans", "prepare", "plan_next"),
    ("quantsweep.execution.shared_runner", "start_comparison", "evaluate_start"),
    ("quantsweep.engine.quality:PendingComparison", "finish", "evaluate_finish"),
    ("quantsweep.execution.shared_runner", "trust_checks", "trust"),
]


@contextlib.contextmanager
def markers():
    import importlib

    import torch

    undo = []
    for where, attr, label in MARKERS:
        mod_name, _, cls_name = where.partition(":")
        owner = importlib.import_module(mod_name)
        if cls_name:
            owner = getattr(owner, cls_name, None)
            if owner is None:
                continue
        original = owner.__dict__[attr] if cls_name else getattr(owner, attr)

        def wrapped(*a, __f=original, __label=label, **kw):
            with torch.profiler.record_function(f"qs::{__label}"):
                return __f(*a, **kw)

        functools.update_wrapper(wrapped, original)
        setattr(owner, attr, wrapped)
        undo.append((owner, attr, original))
    try:
        yield
    finally:
        for owner, attr, original in reversed(undo):
            setattr(owner, attr, original)


def _union(intervals: list[tuple[int, int]]) -> int:
    total, end = 0, -1
    for s, e in sorted(intervals):
        if e <= end:
            continue
        total += e - max(s, end)
        end = e
    return total


def busy_by_marker(prof) -> dict:
    """For each marker: count, wall (sum of its ranges), GPU busy inside its ranges, top kernels inside."""
    events = prof.profiler.kineto_results.events()
    ranges: dict[str, list[tuple[int, int]]] = defaultdict(list)
    device: list[tuple[int, int, str]] = []
    for e in events:
        name = e.name()
        on_gpu = e.device_type().name == "CUDA"
        if name.startswith("qs::"):
            if not on_gpu:  # the host's range (kineto also records each as an annotation on the GPU timeline)
                ranges[name[4:]].append((e.start_ns(), e.start_ns() + e.duration_ns()))
        elif on_gpu:
            device.append((e.start_ns(), e.start_ns() + e.duration_ns(), name))
    device.sort()
    starts = [d[0] for d in device]
    import bisect

    out = {}
    all_busy = _union([(s, e) for s, e, _ in device])
    span = (device[-1][1] - device[0][0]) if device else 0
    out["_all"] = {"gpu_busy_s": all_busy / 1e9, "span_s": span / 1e9, "kernels": len(device)}
    for label, rs in ranges.items():
        busy, kernels = 0, defaultdict(float)
        wall = sum(e - s for s, e in rs)
        for s, e in rs:
            lo = bisect.bisect_left(starts, s)
            hi = bisect.bisect_left(starts, e)
            inside = [(max(a, s), min(b, e), n) for a, b, n in device[lo:hi]]
            busy += _union([(a, b) for a, b, _ in inside])
            for a, b, n in inside:
                kernels[n[:90]] += (b - a) / 1e9
        top = sorted(kernels.items(), key=lambda kv: -kv[1])[:15]
        out[label] = {
            "count": len(rs),
            "wall_s": round(wall / 1e9, 4),
            "gpu_busy_s": round(busy / 1e9, 4),
            "busy_fraction": round(busy / wall, 3) if wall else None,
            "top_kernels_s": {k: round(v, 4) for k, v in top},
        }
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--variant", choices=sorted(VARIANTS), default="llama3-8b")
    ap.add_argument("--runs", type=int, default=2, help="unprofiled shared sweeps before the profiled one")
    ap.add_argument("--out", default=None)
    ap.add_argument("--trace", default=None, help="also write the profiled run's chrome trace here")
    args = ap.parse_args()
    import torch

    warnings.filterwarnings("ignore")
    v = VARIANTS[args.variant]
    result: dict = {"variant": args.variant, "first_use_s": warm_up(v["device"]), "runs": []}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        mpath = root / "reference.yaml"
        mpath.write_text(yaml.safe_dump(reference_matrix(v), sort_keys=False))
        for i in range(args.runs):
            r = run_mode(mpath, root / f"run{i}", "shared")
            result["runs"].append({"cells_s": round(r["cells_s"], 3), "phases_s": r["phases_s"]})
            print(f"run {i}: cells {r['cells_s']:.2f} s, phases {r['phases_s']}", flush=True)
        activities = [torch.profiler.ProfilerActivity.CPU]
        if v["device"] == "cuda":
            activities.append(torch.profiler.ProfilerActivity.CUDA)
        with markers(), torch.profiler.profile(activities=activities) as prof:
            t = time.perf_counter()
            r = run_mode(mpath, root / "profiled", "shared")
            wall = time.perf_counter() - t
        result["profiled"] = {"cells_s": round(r["cells_s"], 3), "wall_s": round(wall, 3),
                              "phases_s": r["phases_s"], "markers": busy_by_marker(prof)}
        if args.trace:
            prof.export_chrome_trace(args.trace)
        result["floor"] = floor_estimate(mpath)
    text = json.dumps(result, indent=1)
    if args.out:
        Path(args.out).write_text(text)
    print(f"floor {result['floor']['floor_s']:.2f} s")
    for label, m in result["profiled"]["markers"].items():
        if label == "_all":
            print(f"  all: GPU busy {m['gpu_busy_s']:.3f} s over a span of {m['span_s']:.3f} s")
            continue
        print(f"  {label:16s} x{m['count']:<3d} wall {m['wall_s']:7.3f} s  GPU busy {m['gpu_busy_s']:7.3f} s "
              f"({m['busy_fraction']})")


if __name__ == "__main__":
    main()
