"""Shared engine vs naive per-cell AutoQuantize on one reference matrix, in one process, on one machine.

Reference matrix: 3 pairs x 3 granularities x 3 dataset sizes = 27 cells:
  pairs         wint4_afp16 (INT4 g128 weights), wint8_afp16 (INT8 per-channel weights), wfp8_afp8 (FP8 W8A8, static)
  granularities default, w_group64, w_group32 (inline)
  sizes         --sizes (default 8/16/32 samples of --seq-len tokens), batch --batch
`--variant h100`: synthetic Qwen3-0.6B-shaped model, bf16, CUDA, seq 512, batch 4 (the issue's reference).
`--variant cpu`: synthetic 2-layer Qwen3 (hidden 64), fp32, CPU, seq 32 - small enough for a laptop.
`--variant llama3-8b`: 8 weight-only cells (INT4/INT8 x default/g64 x 8/16 samples) on a Llama-3-8B shape, bf16.

Printed: wall time of each mode (cells only: model loading, tokenising and the baseline are done once per run
and reported apart), their ratio; a floor estimate built from timings taken in the same process - one plain
forward+backward over the largest score set + one calibration (forward over the largest calibration set) per
unique format + one layer replay (costed as one forward of a batch) per (format, score batch) - and each mode's
ratio to it; peak device memory; and the agreement between the modes (per-layer raw scores, chosen recipes,
quality).

    python3 benchmarks/shared_vs_naive.py --variant cpu
    python3 benchmarks/shared_vs_naive.py --variant h100 --out shared_vs_naive_h100.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TQDM_DISABLE", "1")  # before anything imports tqdm (ModelOpt's progress bars)
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

import torch  # noqa: E402
import yaml  # noqa: E402

VARIANTS = {
    "h100": {"preset": "qwen3-0.6b", "dtype": "bfloat16", "device": "cuda", "seq_len": 512, "batch": 4,
             "sizes": [8, 16, 32], "eval": 8},
    "cpu": {"preset": "qwen3-tiny", "dtype": "float32", "device": "cpu", "seq_len": 32, "batch": 4,
            "sizes": [4, 8, 16], "eval": 4},
    # the h100 matrix's depth at the cpu variant's widths: the per-module host overhead of a GPU run, on a CPU
    "cpu-deep": {"preset": "qwen3-tiny-deep", "dtype": "float32", "device": "cpu", "seq_len": 32, "batch": 4,
                 "sizes": [4, 8, 16], "eval": 4},
    # the second matrix: 8 weight-only cells on a Llama-3-8B shape
    "llama3-8b": {"preset": "llama3-8b", "dtype": "bfloat16", "device": "cuda", "seq_len": 512, "batch": 4,
                  "sizes": [8, 16], "eval": 8, "pairs": ["wint4_afp16", "wint8_afp16"],
                  "granularities": ["default", "w_group64"]},
}
REFERENCE_PAIRS = ["wint4_afp16", "wint8_afp16", "wfp8_afp8"]
REFERENCE_GRANULARITIES = [
    "default",
    "w_group64",
    {"name": "w_group32", "overrides": {"*weight_quantizer": {"block_sizes": {-1: 32}}}},
]


def reference_matrix(v: dict) -> dict:
    sizes = {f"n{n}": n for n in v["sizes"]}
    return {
        "name": "reference",
        "model": {"source": "synthetic", "preset": v["preset"], "dtype": v["dtype"], "device": v["device"]},
        "dataset": {"seq_len": v["seq_len"], "sizes": sizes, "eval_samples": v["eval"], "seed": 0},
        "autoquant": {"method": "gradient", "batch_size": v["batch"], "effective_bits": 8.0},
        "axes": {
            "quant_pairs": v.get("pairs", REFERENCE_PAIRS),
            "granularities": v.get("granularities", REFERENCE_GRANULARITIES),
            "dataset_sizes": list(sizes),
        },
        "canary": {"enabled": False},
    }


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def floor_estimate(matrix_path: Path) -> dict:
    """Time the floor's building blocks in this process, on a model and data of its own (the sweeps' are gone)."""
    from quantsweep.engine.data import build_samples, make_batches
    from quantsweep.engine.models import load_model
    from quantsweep.matrix_io import load_matrix
    from quantsweep.planning import expand

    matrix = load_matrix(matrix_path)
    plan = expand(matrix, str(matrix_path))
    loaded = load_model(matrix.model)
    model, device = loaded.take_model(), loaded.device
    n_max = max(max(c.calib_samples, c.score_samples) for c in plan.cells)
    samples = build_samples(matrix.dataset, loaded.tokenizer, n_max)
    batches = make_batches(samples.pool(n_max), matrix.autoquant.batch_size, device, True)
    score_batches = batches[: max(c.score_steps for c in plan.cells)]
    calib_batches = batches[: max(c.calib_steps for c in plan.cells)]
    for p in model.parameters():
        p.requires_grad_(True)
    model(**score_batches[0]).loss.backward()  # warm-up
    model.zero_grad(set_to_none=True)
    _sync(device)
    t = time.perf_counter()
    for b in score_batches:
        model(**b).loss.backward()
    _sync(device)
    fwd_bwd = time.perf_counter() - t
    model.zero_grad(set_to_none=True)
    with torch.no_grad():
        _sync(device)
        t = time.perf_counter()
        for b in calib_batches:
            model(input_ids=b["input_ids"])
        _sync(device)
        fwd_calib = time.perf_counter() - t
    unique_formats = len({json.dumps(c.summary()["weight_quantizer"] + c.summary()["input_quantizer"]) for c in plan.cells})
    per_batch_fwd = fwd_calib / len(calib_batches)
    floor = fwd_bwd + unique_formats * fwd_calib + unique_formats * len(score_batches) * per_batch_fwd
    del model, loaded
    return {
        "forward_backward_largest_score_set_s": fwd_bwd,
        "forward_largest_calibration_set_s": fwd_calib,
        "unique_formats": unique_formats,
        "score_batches": len(score_batches),
        "floor_s": floor,
    }


def phase_sums(rows: list[dict]) -> dict[str, float]:
    """Seconds per phase (calibrate, score, search, evaluate, ...) summed over the rows (the shared engine's
    union-call phases are amortised over its cells): where the time went."""
    out: dict[str, float] = {}
    for r in rows:
        for k, v in ((r.get("telemetry") or {}).get("phases") or {}).items():
            out[k] = out.get(k, 0.0) + v
    return {k: round(v, 3) for k, v in out.items()}


def union_calls(rows: list[dict]) -> list[dict]:
    """Each shared-engine union call once (as its rows record it), with the seconds its cells spent after it
    (solve, evaluation, trust checks): what a call's cost is made of."""
    calls: dict[str, dict] = {}
    for r in rows:
        shared = (r.get("telemetry") or {}).get("shared")
        if not shared:
            continue
        call = calls.setdefault(json.dumps(shared, sort_keys=True), {**shared, "cells_phases_s": {}})
        for k, v in (r["telemetry"].get("phases") or {}).items():
            if k in ("search", "evaluate", "trust"):
                call["cells_phases_s"][k] = round(call["cells_phases_s"].get(k, 0.0) + v, 3)
    return sorted(calls.values(), key=lambda c: json.dumps({k: v for k, v in c.items() if k != "cells_phases_s"},
                                                             sort_keys=True))


def run_mode(matrix_path: Path, root: Path, engine: str, profile: str | None = None) -> dict:
    from quantsweep.execution.sweep import RunOptions, Sweep, Reporter

    sweep = Sweep(matrix_path, RunOptions(output_root=str(root / engine), engine=engine), Reporter())
    prof = None
    if profile:
        import cProfile

        prof = cProfile.Profile()
        prof.enable()
    t0 = time.perf_counter()
    outcome = sweep.run()
    total = time.perf_counter() - t0
    if prof is not None:
        prof.disable()
        write_profile(prof, profile)
    setup = sum(v for k, v in ((sweep.info or {}).get("setup") or {}).items() if k.endswith("_s"))
    rows = outcome.summary["rows"]
    peaks = [r["telemetry"].get("peak_device_mb") for r in rows if r["telemetry"].get("peak_device_mb") is not None]
    return {
        "engine": engine,
        "phases_s": phase_sums(rows),
        "total_s": total,
        "setup_s": setup,
        "cells_s": total - setup,
        "rows": rows,
        "errors": [r["error"] for r in rows if r["status"] != "ok"],
        # cells that took an earlier cell's evaluation of the same model (execution/shared_evaluations.py)
        "evaluations_shared": sum(1 for r in rows if r["telemetry"].get("evaluation_shared_with")),
        "peak_device_mb": max(peaks) if peaks else None,
        "sweep": sweep,
    }


def write_profile(prof, path: str) -> None:
    import io
    import pstats

    out = io.StringIO()
    for key in ("tottime", "cumulative"):
        out.write(f"--- top 60 by {key} ---\n")
        pstats.Stats(prof, stream=out).sort_stats(key).print_stats(60)
    Path(path).write_text(out.getvalue())
    prof.dump_stats(path + ".pstats")  # the raw stats, for callers/callees of one function


def print_shared_only(variant: str, shared: dict, floor: dict) -> None:
    print(f"variant {variant}: shared {shared['cells_s']:.1f} s ({shared['cells_s'] / floor['floor_s']:.1f}x floor "
          f"{floor['floor_s']:.2f} s); peak {shared['peak_device_mb']} MB")
    print(f"  phases (s, summed over cells): {shared['phases_s']}; evaluations shared {shared['evaluations_shared']}")
    print(f"  union calls: {union_calls(shared['rows'])}")
    if shared["errors"]:
        print(f"  errors: {shared['errors']}")


def agreement(naive_rows: list[dict], shared_rows: list[dict]) -> dict:
    by_id = {r["cell_id"]: r for r in naive_rows}
    worst_score, worst_q, same_recipe, cells = 0.0, 0.0, 0, 0
    for s in shared_rows:
        n = by_id.get(s["cell_id"])
        if n is None or n["status"] != "ok" or s["status"] != "ok":
            continue
        cells += 1
        mn = json.loads((Path(n["path"]) / "manifest.json").read_text())
        ms = json.loads((Path(s["path"]) / "manifest.json").read_text())
        recipe_equal = True
        for g1, g2 in zip(mn["layers"], ms["layers"], strict=True):
            recipe_equal &= g1["chosen"] == g2["chosen"]
            for a, b in zip(g1["raw_scores"], g2["raw_scores"], strict=True):
                if a or b:
                    worst_score = max(worst_score, abs(a - b) / max(abs(a), abs(b)))
        same_recipe += int(recipe_equal)
        for k in ("kl_mean", "ppl_ratio", "top1_agreement"):
            a, b = n["quality"][k], s["quality"][k]
            worst_q = max(worst_q, abs(a - b) / max(abs(a), abs(b), 1e-12))
    return {
        "cells_compared": cells,
        "same_recipe_cells": same_recipe,
        "max_rel_raw_score_diff": worst_score,
        "max_rel_quality_diff": worst_q,
    }


def warm_up(device: str) -> float:
    """First-use costs, timed apart from both engines: import ModelOpt (seconds) and, on a fresh GPU, build and
    load its CUDA extensions (~1 min). Each sweep then warms up the kernels of its own formats in its set-up."""
    t = time.perf_counter()
    import modelopt.torch.quantization as mtq

    if device != "cuda":
        return time.perf_counter() - t

    m = torch.nn.Sequential(torch.nn.Linear(64, 64)).cuda()
    x = torch.randn(4, 64, device="cuda")
    mtq.quantize(m, mtq.FP8_DEFAULT_CFG, lambda mm: mm(x))
    m(x)
    torch.cuda.synchronize()
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--variant", choices=sorted(VARIANTS), default="cpu")
    ap.add_argument("--out", default=None)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--shared-only", action="store_true",
                    help="skip the naive engine (no speed-up or agreement): for profiling the shared engine")
    ap.add_argument("--graphs-ab", action="store_true",
                    help="also run the shared engine with its score replays eager (QUANTSWEEP_SCORE_GRAPHS=0), "
                         "before the one with CUDA graphs, and compare the two")
    ap.add_argument("--profile", default=None, metavar="FILE",
                    help="cProfile the shared sweep and write its top functions to FILE (slows Python-bound code)")
    args = ap.parse_args()
    os.environ.setdefault("TQDM_DISABLE", "1")
    if args.threads:
        torch.set_num_threads(args.threads)
    import warnings

    warnings.filterwarnings("ignore")
    v = VARIANTS[args.variant]
    first_use_s = warm_up(v["device"])
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        mpath = root / "reference.yaml"
        mpath.write_text(yaml.safe_dump(reference_matrix(v), sort_keys=False))
        naive = None if args.shared_only else run_mode(mpath, root, "naive")
        eager = None
        if args.graphs_ab:
            os.environ["QUANTSWEEP_SCORE_GRAPHS"] = "0"
            eager = run_mode(mpath, root / "eager", "shared")
            os.environ["QUANTSWEEP_SCORE_GRAPHS"] = "1"
        shared = run_mode(mpath, root, "shared", profile=args.profile)
        floor = floor_estimate(mpath)
        if naive is None:
            print_shared_only(args.variant, shared, floor)
            return
        agree = agreement(naive["rows"], shared["rows"])
        unions = union_calls(shared["rows"])
        eager_agree = agreement(eager["rows"], shared["rows"]) if eager is not None else None  # files still here
    result = {
        "variant": args.variant,
        "device": torch.cuda.get_device_name(0) if v["device"] == "cuda" else "cpu",
        "cells": len(naive["rows"]),
        "naive_cells_s": naive["cells_s"],
        "shared_cells_s": shared["cells_s"],
        "speedup_shared_over_naive": naive["cells_s"] / shared["cells_s"],
        "floor": floor,
        "naive_over_floor": naive["cells_s"] / floor["floor_s"],
        "shared_over_floor": shared["cells_s"] / floor["floor_s"],
        "first_use_s": first_use_s,
        "setup_s": {"naive": naive["setup_s"], "shared": shared["setup_s"]},
        "phases_s": {"naive": naive["phases_s"], "shared": shared["phases_s"]},
        "peak_device_mb": {"naive": naive["peak_device_mb"], "shared": shared["peak_device_mb"]},
        "errors": {"naive": naive["errors"], "shared": shared["errors"]},
        "agreement": agree,
        "dtype": v["dtype"],
        "shared_union_calls": unions,
        "shared_evaluations_reused": shared["evaluations_shared"],
    }
    if eager is not None:
        result["eager_replays"] = {
            "shared_cells_s": eager["cells_s"],
            "phases_s": eager["phases_s"],
            "peak_device_mb": eager["peak_device_mb"],
            "errors": eager["errors"],
            "shared_over_floor": eager["cells_s"] / floor["floor_s"],
            "graphs_over_eager": shared["cells_s"] / eager["cells_s"],
            "agreement_with_graphs": eager_agree,
            "union_calls": union_calls(eager["rows"]),
        }
    text = json.dumps(result, indent=2)
    if args.out:
        Path(args.out).write_text(text)
    print(f"variant {args.variant} on {result['device']}: {result['cells']} cells")
    print(f"  naive  {naive['cells_s']:8.1f} s   ({result['naive_over_floor']:.1f}x floor)")
    print(f"  shared {shared['cells_s']:8.1f} s   ({result['shared_over_floor']:.1f}x floor)")
    print(f"  speedup shared/naive {result['speedup_shared_over_naive']:.2f}x; floor {floor['floor_s']:.2f} s")
    print(f"  agreement: {agree}")
    if eager is not None:
        e = result["eager_replays"]
        print(f"  shared, eager replays {eager['cells_s']:8.1f} s ({e['shared_over_floor']:.1f}x floor); "
              f"graphs / eager {e['graphs_over_eager']:.3f}; agreement {e['agreement_with_graphs']}")
        print(f"  eager phases: {e['phases_s']}; peak {e['peak_device_mb']} MB")
    print(f"  peak device MB: {result['peak_device_mb']}")
    print(f"  phases (s, summed over cells): {result['phases_s']}")
    print(f"  cells that reused an earlier cell's evaluation: {shared['evaluations_shared']}")
    if result["errors"]["naive"] or result["errors"]["shared"]:
        print(f"  errors: {result['errors']}")


if __name__ == "__main__":
    main()
