"""What is alive at the peak of device memory: the 8B-shaped matrix run with each engine under PyTorch's memory
history, the allocation trace replayed to its peak, and the live blocks grouped by the innermost frame of our
code, ModelOpt's or transformers'. Answers "why does one engine peak higher than the other" with sizes, not guesses.

    python3 benchmarks/diag/peak_memory.py --variant llama3-8b --out peak.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from collections import defaultdict
from pathlib import Path

os.environ.setdefault("TQDM_DISABLE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
import yaml  # noqa: E402
from shared_vs_naive import VARIANTS, reference_matrix, run_mode, warm_up  # noqa: E402

OURS = ("quantsweep", "modelopt", "transformers", "torch/nn/functional", "torch/utils/checkpoint")


def _key(frames: list[dict]) -> str:
    for f in frames:  # innermost first
        name = f.get("filename", "")
        if any(s in name for s in OURS):
            short = name.split("site-packages/")[-1].split("/src/")[-1]
            return f"{short}:{f.get('line')} {f.get('name')}"
    return "<other>"


def peak_breakdown(snapshot: dict, top: int = 25) -> dict:
    trace = snapshot["device_traces"][0] if snapshot["device_traces"] else []
    alive: dict[int, tuple[int, list]] = {}
    total = peak = peak_i = 0
    for i, e in enumerate(trace):
        if e["action"] == "alloc":
            alive[e["addr"]] = (e["size"], e.get("frames", []))
            total += e["size"]
            if total > peak:
                peak, peak_i = total, i
        elif e["action"] in ("free_completed",) and e["addr"] in alive:
            total -= alive.pop(e["addr"])[0]
    alive.clear()
    for e in trace[: peak_i + 1]:
        if e["action"] == "alloc":
            alive[e["addr"]] = (e["size"], e.get("frames", []))
        elif e["action"] == "free_completed":
            alive.pop(e["addr"], None)
    groups: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for size, frames in alive.values():
        g = groups[_key(frames)]
        g[0] += size
        g[1] += 1
    where = _key(trace[peak_i].get("frames", [])) if trace else ""
    rows = sorted(groups.items(), key=lambda kv: -kv[1][0])[:top]
    return {
        "events": len(trace),
        "peak_traced_mb": peak / 2**20,
        "peak_event": where,
        "alive_at_peak": [{"where": k, "mb": round(v[0] / 2**20, 1), "blocks": v[1]} for k, v in rows],
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--variant", choices=sorted(VARIANTS), default="llama3-8b")
    ap.add_argument("--engines", default="naive,shared")
    ap.add_argument("--out", default=None)
    ap.add_argument("--two-calls", action="store_true", help="then a shared sweep with a second (calib-max) call")
    args = ap.parse_args()
    import warnings

    warnings.filterwarnings("ignore")
    v = VARIANTS[args.variant]
    warm_up(v["device"])
    out: dict = {"variant": args.variant}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        mpath = root / "m.yaml"
        mpath.write_text(yaml.safe_dump(reference_matrix(v), sort_keys=False))
        for engine in args.engines.split(","):
            torch.cuda.empty_cache()
            base = torch.cuda.memory_allocated()
            torch.cuda.memory._record_memory_history(max_entries=3_000_000, stacks="python")
            r = run_mode(mpath, root, engine)
            snap = torch.cuda.memory._snapshot()
            torch.cuda.memory._record_memory_history(enabled=None)
            b = peak_breakdown(snap)
            b.update(
                peak_device_mb=r["peak_device_mb"],
                allocated_before_mb=base / 2**20,
                cells_s=r["cells_s"],
                errors=r["errors"],
                per_cell_peaks=[x["telemetry"].get("peak_device_mb") for x in r["rows"]],
            )
            out[engine] = b
            print(engine, json.dumps({k: b[k] for k in ("peak_device_mb", "peak_traced_mb", "peak_event")}))
            for row in b["alive_at_peak"][:15]:
                print(f"   {row['mb']:9.1f} MB {row['blocks']:6d}  {row['where']}")
            del r
        if args.two_calls:
            # issue 11: no later union call of a process peaks above the first (the FP8 W8A8 pair adds a
            # calib-max call after the data-free one); peaks per call from the union telemetry
            data = reference_matrix(v)
            data["axes"]["quant_pairs"] = [*data["axes"]["quant_pairs"], "wfp8_afp8"]
            mpath2 = root / "m2.yaml"
            mpath2.write_text(yaml.safe_dump(data, sort_keys=False))
            r = run_mode(mpath2, root / "two", "shared")
            calls = {}
            for row in r["rows"]:
                u = row["telemetry"].get("shared") or {}
                calls[u.get("union")] = {k: u.get(k) for k in ("peak_device_mb", "formats", "cells", "calibrate_s",
                                                                 "score_s")}
            out["shared_two_calls"] = {"calls": calls, "errors": r["errors"], "cells_s": r["cells_s"]}
            print("two calls", json.dumps(calls))
    if args.out:
        Path(args.out).write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
