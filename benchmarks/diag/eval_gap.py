"""Why a cell's evaluate phase takes about twice as long in a shared sweep as the same evaluation in isolation.

Runs the reference matrix with the shared engine (no naive engine) several times in one process, each time with
one suspect taken away or one remedy tried, and prints the cells' wall time, its ratio to the floor (measured once,
in the same process), the evaluate phase summed over the cells, its spread over the cells and the other phases:

  as-is         the sweep as `quantsweep run` runs it
  no-sampler    the telemetry sampler thread reads NVML and the process RSS every 60 s instead of every 0.5 s
  gc-off        Python's cyclic garbage collector disabled for the run (automatic collections in a cell's span)
  no-stability  no recipe-stability bootstrap (its background thread solves while the next cells evaluate)
  threads-half  the bootstrap's resamples solved on half the torch threads (the policy before SOLVER_THREADS = 1;
                this was the variant `threads-1` when half was the default: run `stability-interference`)
  switch-0.5ms  Python's GIL switch interval at 0.5 ms instead of 5 ms (a thread waiting for the GIL gets it sooner)
  eager-score   the score replays' six-pass element-wise score instead of the fused kernel (engine/score_kernel.py)
  as-is-again   the first variant again: the run-to-run spread on this machine

    python benchmarks/diag/eval_gap.py --variant h100 --out eval-gap.json
    python benchmarks/diag/eval_gap.py --variant h100 --only as-is,no-stability,threads-half,switch-0.5ms,as-is-again
"""

from __future__ import annotations

import argparse
import copy
import gc
import json
import os
import statistics
import sys
import tempfile
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import yaml  # noqa: E402
from shared_vs_naive import VARIANTS, floor_estimate, reference_matrix, run_mode, warm_up  # noqa: E402


def _evaluate_times(rows: list[dict]) -> list[float]:
    return [r["telemetry"]["phases"].get("evaluate", 0.0) for r in rows if r.get("telemetry")]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--variant", choices=sorted(VARIANTS), default="cpu")
    ap.add_argument("--out", default=None)
    ap.add_argument("--only", default=None, help="comma-separated variant names, in this order")
    args = ap.parse_args()
    import torch

    from quantsweep.execution import stability_pipeline
    warnings.filterwarnings("ignore")
    v = VARIANTS[args.variant]
    first_use_s = warm_up(v["device"])
    base = reference_matrix(v)
    variants = {
        "as-is": base,
        "no-sampler": {**copy.deepcopy(base), "telemetry": {"sample_period_s": 60.0}},
        "gc-off": base,
        "no-stability": {**copy.deepcopy(base), "evaluation": {"stability": {"resamples": 0}}},
        "threads-half": base,
        "switch-0.5ms": base,
        "as-is-again": base,
        "eager-score": base,
    }
    if args.only:
        variants = {k: variants[k] for k in args.only.split(",")}
    threads = stability_pipeline.SOLVER_THREADS
    interval = sys.getswitchinterval()
    fused_switch = os.environ.get("QUANTSWEEP_FUSED_SCORE")
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, matrix in variants.items():
            root = Path(tmp) / name
            root.mkdir()
            path = root / "m.yaml"
            path.write_text(yaml.safe_dump(matrix, sort_keys=False))
            if name == "gc-off":
                gc.disable()
            if name == "threads-half":
                stability_pipeline.SOLVER_THREADS = max(1, torch.get_num_threads() // 2)
            if name == "switch-0.5ms":
                sys.setswitchinterval(0.0005)
            if name == "eager-score":
                os.environ["QUANTSWEEP_FUSED_SCORE"] = "0"
            try:
                run = run_mode(path, root, "shared")
            finally:
                gc.enable()
                stability_pipeline.SOLVER_THREADS = threads
                sys.setswitchinterval(interval)
                if fused_switch is None:
                    os.environ.pop("QUANTSWEEP_FUSED_SCORE", None)
                else:
                    os.environ["QUANTSWEEP_FUSED_SCORE"] = fused_switch
            ev = _evaluate_times(run["rows"])
            results[name] = {
                "cells_s": round(run["cells_s"], 3),
                "phases_s": run["phases_s"],
                "evaluate_per_cell_s": {"median": round(statistics.median(ev), 4), "min": round(min(ev), 4),
                                        "max": round(max(ev), 4)} if ev else None,
                "errors": run["errors"],
            }
            print(f"{name:13s} cells {run['cells_s']:6.1f} s  evaluate {run['phases_s'].get('evaluate', 0):5.2f} s "
                  f"(per cell {results[name]['evaluate_per_cell_s']})  phases {run['phases_s']}", flush=True)
        floor = floor_estimate(path)
    for name, r in results.items():
        r["shared_over_floor"] = round(r["cells_s"] / floor["floor_s"], 3)
    print(f"floor {floor['floor_s']:.2f} s; cells / floor: " + ", ".join(f"{k} {r['shared_over_floor']}" for k, r in results.items()))
    out = {"variant": args.variant, "first_use_s": first_use_s, "floor": floor, "runs": results}
    if args.out:
        Path(args.out).write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
