"""Ray executor scaling: the same matrix with 1 and 2 workers (one GPU each), then over two Ray nodes.

Matrices (synthetic weights, bf16, CUDA, canary skipped so that only cells are timed):
  reference  the 27-cell reference matrix of benchmarks/shared_vs_naive.py (Qwen3-0.6B shape)
  llama3-8b  8 weight-only cells on a Llama-3-8B-shaped model: INT4/INT8 x default/group-64 x 8/16 samples,
             seq 512, batch 4 (4 score batches for the larger size): one union call, split between 2 workers
  llama3-8b-study  the same model, 24 cells: INT4/INT8 weight-only and FP8 W8A8 x default/group-64 x 8/16
             samples x budgets 8/10 bits (two union calls)

First-use costs are taken apart: ModelOpt's CUDA extensions are built (or loaded) in this process before any
timed run, so workers only load them from the cache; worker start-up (model build, data, baseline) is reported
apart from the cells phase (`timings.start_s` vs `timings.cells_s`, both measured by the driver).

Printed and written (--out): for each run its wall time, start-up and cells time, per-worker busy time; the
scaling efficiency T1 / (n * Tn) on the cells phase and on the whole run; and the agreement of every row with the
1-worker run (raw per-layer scores, chosen recipe, achieved bits, quality).

    python3 benchmarks/ray_scaling.py --matrix reference --workers 1,2 --out ray-reference.json
    python3 benchmarks/ray_scaling.py --matrix llama3-8b --workers 1,2 --two-node --out ray-8b.json
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TQDM_DISABLE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import yaml  # noqa: E402
from shared_vs_naive import VARIANTS, phase_sums, reference_matrix, union_calls, warm_up  # noqa: E402


def llama3_8b_matrix() -> dict:
    return {
        "name": "llama3-8b",
        "model": {"source": "synthetic", "preset": "llama3-8b", "dtype": "bfloat16", "device": "cuda"},
        "dataset": {"seq_len": 512, "sizes": {"n8": 8, "n16": 16}, "eval_samples": 8, "seed": 0},
        "autoquant": {"method": "gradient", "batch_size": 4, "effective_bits": 8.0},
        "axes": {
            "quant_pairs": ["wint4_afp16", "wint8_afp16"],
            "granularities": ["default", "w_group64"],
            "dataset_sizes": ["n8", "n16"],
        },
        "canary": {"enabled": False},
    }


def llama3_8b_study_matrix() -> dict:
    """A study-shaped 8B matrix: INT4 / INT8 weight-only and FP8 W8A8 x default / group-64 x 8 / 16 samples x two
    budgets (8 and 10 bits) = 24 cells in two union calls (data-free: 4 formats, 16 cells; calib-max: 2 formats, 8 cells)."""
    m = llama3_8b_matrix()
    m["name"] = "llama3-8b-study"
    m["autoquant"]["effective_bits"] = [8.0, 10.0]  # FP8 W8A8 cannot reach 6 bits
    m["axes"]["quant_pairs"] = ["wint4_afp16", "wint8_afp16", "wfp8_afp8"]
    return m


def matrix_for(name: str, cpu: bool) -> dict:
    if name == "reference":
        return reference_matrix(VARIANTS["cpu" if cpu else "h100"])
    if name == "llama3-8b":
        return llama3_8b_matrix()
    if name == "llama3-8b-study":
        return llama3_8b_study_matrix()
    raise SystemExit(f"unknown matrix {name}")


def warm_up_int() -> None:
    """Build/load ModelOpt's INT fake-quant extension too (the FP8 one is done by shared_vs_naive.warm_up)."""
    import modelopt.torch.quantization as mtq
    import torch

    m = torch.nn.Sequential(torch.nn.Linear(64, 64)).cuda()
    x = torch.randn(4, 64, device="cuda")
    mtq.quantize(m, mtq.INT8_DEFAULT_CFG, lambda mm: mm(x))
    m(x)
    torch.cuda.synchronize()


def run_local(matrix_path: Path, root: Path) -> dict:
    """The same matrix with the local executor in this process (one GPU): what one Ray worker is compared with."""
    from quantsweep.execution.sweep import Reporter, RunOptions, Sweep

    t0 = time.perf_counter()
    outcome = Sweep(matrix_path, RunOptions(output_root=str(root), executor="local"), Reporter()).run()
    rows = outcome.summary["rows"]
    return {"executor": "local", "wall_s": round(time.perf_counter() - t0, 3),
            "timings": outcome.summary["execution"]["timings"], "phases_s": phase_sums(rows),
            "union_calls": union_calls(rows),
            "errors": [r["error"] for r in rows if r["status"] != "ok"], "rows": rows}


def run_once(matrix_path: Path, root: Path, workers: int, address: str | None, gpus: int) -> dict:
    from quantsweep.execution.sweep import Reporter, RunOptions, Sweep

    opts = RunOptions(
        output_root=str(root), executor="ray", workers=workers, gpus_per_worker=gpus, ray_address=address
    )
    sweep = Sweep(matrix_path, opts, Reporter())
    t0 = time.perf_counter()
    outcome = sweep.run()
    wall = time.perf_counter() - t0
    ex = outcome.summary["execution"]
    rows = outcome.summary["rows"]
    return {
        "workers": workers,
        "address": address or "local",
        "wall_s": round(wall, 3),
        "timings": ex["timings"],
        "work_units": ex["work_units"],
        "units_split": ex["units_split"],
        "per_worker": [
            {k: w.get(k) for k in ("name", "host", "node_id", "gpu_ids", "device_name", "cpus", "torch_threads",
                                     "units", "cells", "busy_s")}
            | {"setup": w.get("setup")}
            for w in ex["workers"]
        ],
        "phases_s": phase_sums(rows),
        "union_calls": union_calls(rows),
        "errors": [r["error"] for r in rows if r["status"] != "ok"],
        "rows": rows,
    }


def _manifest(row: dict) -> dict:
    return json.loads((Path(row["path"]) / "manifest.json").read_text())


def agreement(ref: dict, other: dict, root_ref: Path, root_other: Path) -> dict:
    """Compare every row of `other` with `ref` (by cell id)."""
    a = {r["cell_id"]: r for r in ref["rows"]}
    b = {r["cell_id"]: r for r in other["rows"]}
    out = {"same_cells": set(a) == set(b), "cells": len(a), "recipes_identical": 0, "max_rel_raw_score": 0.0,
           "max_rel_quality": 0.0, "bits_identical": 0}
    for cid in sorted(set(a) & set(b)):
        ra, rb = a[cid], b[cid]
        ma = json.loads((root_ref / ra["path"]).joinpath("manifest.json").read_text())
        mb = json.loads((root_other / rb["path"]).joinpath("manifest.json").read_text())
        la = {g["name"]: g for g in ma["layers"]}
        lb = {g["name"]: g for g in mb["layers"]}
        if {n: g["chosen"] for n, g in la.items()} == {n: g["chosen"] for n, g in lb.items()}:
            out["recipes_identical"] += 1
        if ra["achieved_bits"] == rb["achieved_bits"]:
            out["bits_identical"] += 1
        for name, g in la.items():
            for x, y in zip(g["raw_scores"], lb[name]["raw_scores"], strict=True):
                if x or y:
                    out["max_rel_raw_score"] = max(out["max_rel_raw_score"], abs(x - y) / max(abs(x), abs(y)))
        if ra["quality"] is None or rb["quality"] is None:  # an error row (e.g. an infeasible budget): no quality
            continue
        for k in ("kl_mean", "ppl_quant", "top1_agreement"):
            x, y = ra["quality"][k], rb["quality"][k]
            if x or y:
                out["max_rel_quality"] = max(out["max_rel_quality"], abs(x - y) / max(abs(x), abs(y)))
    return out


def two_node_cluster(port: int, gpus: int) -> str:
    """Two Ray nodes on this host, one GPU each: `ray start --head` with GPU 0 visible, a second node with GPU 1
    (with --cpu: one CPU each, no GPU)."""
    per_node = ["--num-gpus=1"] if gpus else ["--num-gpus=0", "--num-cpus=1"]
    ray_bin = [sys.executable, "-m", "ray.scripts.scripts"]
    env0 = {**os.environ, "CUDA_VISIBLE_DEVICES": "0"}
    env1 = {**os.environ, "CUDA_VISIBLE_DEVICES": "1"}
    subprocess.run([*ray_bin, "start", "--head", f"--port={port}", *per_node, "--include-dashboard=false",
                    "--node-ip-address=127.0.0.1", "--disable-usage-stats"], env=env0, check=True,
                   capture_output=True)
    address = f"127.0.0.1:{port}"
    subprocess.run([*ray_bin, "start", f"--address={address}", *per_node, "--node-ip-address=127.0.0.1",
                    "--disable-usage-stats"], env=env1, check=True, capture_output=True)
    return address


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--matrix", default="reference", choices=["reference", "llama3-8b", "llama3-8b-study"])
    ap.add_argument("--workers", default="1,2")
    ap.add_argument("--two-node", action="store_true", help="also run over two Ray nodes joined by address")
    ap.add_argument("--canary", action="store_true",
                    help="keep the canary (as users run): it runs on the first worker ready while the others load; "
                         "the cells phase starts after it")
    ap.add_argument("--local", action="store_true",
                    help="first run the matrix with the local executor in this process, on the same machine")
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--cpu", action="store_true", help="check the script on a CPU (tiny reference model, no GPU)")
    args = ap.parse_args()
    gpus = 0 if args.cpu else 1
    t = time.perf_counter()
    if not args.cpu:
        warm_up("cuda")
        warm_up_int()
    first_use_s = time.perf_counter() - t
    counts = [int(x) for x in args.workers.split(",")]
    results: dict = {"matrix": args.matrix, "first_use_s": round(first_use_s, 3), "runs": []}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        mpath = tmp / "m.yaml"
        matrix = matrix_for(args.matrix, args.cpu)
        if args.canary:
            # synthetic weights: the baseline's perplexity is ~ the vocabulary's size, far above the gate's default
            matrix["canary"] = {"enabled": True, "max_baseline_perplexity": 1e7}
        results["canary"] = args.canary
        mpath.write_text(yaml.safe_dump(matrix, sort_keys=False))
        roots = {}
        cwd = Path.cwd()
        if args.local:
            results["local"] = run_local(mpath, tmp / "local")
            import torch

            torch.cuda.empty_cache()  # the driver's local run leaves nothing reserved on GPU 0 for the workers
            print(f"{args.matrix}: local executor: wall {results['local']['wall_s']:.1f} s, "
                  f"cells {results['local']['timings'].get('cells_s')} s", flush=True)
        for n in counts:
            roots[n] = tmp / f"w{n}"
            results["runs"].append(run_once(mpath, roots[n], n, None, gpus))
            print(f"{args.matrix}: {n} worker(s): wall {results['runs'][-1]['wall_s']:.1f} s, "
                  f"cells {results['runs'][-1]['timings'].get('cells_s')} s", flush=True)
        base = results["runs"][0]
        for run in results["runs"] + ([results["local"]] if "local" in results else []):
            if "cells_s" not in run["timings"]:
                what = run["errors"] or run["timings"]
                raise SystemExit(f"the {run.get('workers', 'local')} run ran no cells: {what}")
        for run in results["runs"][1:]:
            n = run["workers"]
            t1, tn = base["timings"]["cells_s"], run["timings"]["cells_s"]
            run["efficiency_cells"] = round(t1 / (n / base["workers"] * tn), 3)
            # the same, on the busiest worker's busy time: leaves out the wait for a worker still loading
            b1 = max(w["busy_s"] for w in base["per_worker"])
            bn = max(w["busy_s"] for w in run["per_worker"])
            run["efficiency_busy"] = round(b1 / (n / base["workers"] * bn), 3)
            run["efficiency_wall"] = round(base["wall_s"] / (n / base["workers"] * run["wall_s"]), 3)
            run["agreement_with_first"] = agreement(base, run, cwd, cwd)
        if "local" in results:
            results["local"]["agreement_with_first"] = agreement(base, results["local"], cwd, cwd)
            results[f"ray_{base['workers']}_worker_over_local_cells"] = round(
                base["timings"]["cells_s"] / results["local"]["timings"]["cells_s"], 3)
        if args.two_node:
            address = two_node_cluster(6391, gpus)
            try:
                run = run_once(mpath, tmp / "two-node", 2, address, gpus)
            finally:
                subprocess.run([sys.executable, "-m", "ray.scripts.scripts", "stop", "--force"], capture_output=True)
            run["agreement_with_first"] = agreement(base, run, cwd, cwd)
            run["nodes"] = sorted({w["node_id"] for w in run["per_worker"] if w.get("node_id")})
            results["two_node"] = run
            print(f"two nodes: wall {run['wall_s']:.1f} s, nodes {len(run['nodes'])}", flush=True)
    extra = [results[k] for k in ("two_node", "local") if k in results]
    for run in results["runs"] + extra:
        run["rows"] = [{k: r.get(k) for k in ("cell_id", "key", "status", "achieved_bits", "total_score", "quality")}
                       | {"telemetry": {k: r["telemetry"].get(k) for k in ("wall_s", "phases", "shared", "stability_s",
                                                                             "peak_device_mb")}}
                       for r in run["rows"]]
    print(json.dumps({k: v for k, v in results.items() if k not in ("runs", "local")} | {
        "runs": [{k: v for k, v in r.items() if k != "rows"} for r in results["runs"]],
        "local": {k: v for k, v in results.get("local", {}).items() if k != "rows"}}, indent=1, default=str))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=1, default=str))


if __name__ == "__main__":
    main()
