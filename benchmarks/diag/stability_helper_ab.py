"""Same machine, same process: a shared-engine sweep with each cell's stability bootstrap in the helper process
(execution/helper_process.py, the default) against one with the bootstrap on a thread of the worker (the fallback),
alternating, to measure what the bootstrap's GIL costs the main thread's search and evaluation.

    python3 benchmarks/diag/stability_helper_ab.py --variant llama3-8b --order thread,helper,thread --out ab.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import warnings
from pathlib import Path

os.environ.setdefault("TQDM_DISABLE", "1")
ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "benchmarks"))

import yaml  # noqa: E402
from shared_vs_naive import VARIANTS, reference_matrix, run_mode, warm_up  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--variant", choices=sorted(VARIANTS), default="cpu-deep")
    ap.add_argument("--order", default="thread,helper,thread")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    warnings.filterwarnings("ignore")
    from quantsweep.execution import stability_pipeline

    v = VARIANTS[args.variant]
    out: dict = {"variant": args.variant, "runs": []}
    out["first_use_s"] = warm_up(v["device"])
    for mode in args.order.split(","):
        # the thread fallback is what helper_process() gives once its helper has been given up
        stability_pipeline._helper_starts = 0 if mode == "helper" else stability_pipeline.MAX_HELPER_STARTS
        if mode == "thread" and stability_pipeline._helper is not None:
            stability_pipeline._helper.close()
            stability_pipeline._helper = None
        with tempfile.TemporaryDirectory() as tmp:
            mpath = Path(tmp) / "m.yaml"
            mpath.write_text(yaml.safe_dump(reference_matrix(v), sort_keys=False))
            r = run_mode(mpath, Path(tmp), "shared")
        row = {"mode": mode, "cells_s": r["cells_s"], "phases_s": r["phases_s"], "errors": len(r["errors"])}
        out["runs"].append(row)
        print(json.dumps(row), flush=True)
        if args.out:
            Path(args.out).write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
