"""Memory of big models: one model in memory per AutoQuantize call, and models spread over several GPUs.

Parts (each one process, on the GPU machine; ModelOpt's kernels are warmed up before anything is timed):
  8b   Llama-3-8B-shaped model (bf16) on one GPU, 8 weight-only cells (INT4/INT8 x default/group-64 x 8/16
       samples of 512 tokens): the naive engine, then the shared engine. Prints each call's peak device memory
       in order (a later call must not peak higher than the first), the engines' peaks, and the time to give
       each call its model against the call itself.
  70b  Llama-3-70B-shaped model (bf16) with `device_map: auto` over every visible GPU, 4 weight-only cells
       (INT4 g128 and INT8 x 4/8 samples) with the shared engine, then one of them with the naive engine to
       check the results agree. Prints wall time, per-GPU peak memory and the cost of giving each call its model.

    python3 benchmarks/big_models.py --part 8b --out 8b.json
    python3 benchmarks/big_models.py --part 70b --out 70b.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TQDM_DISABLE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402
import yaml  # noqa: E402
from shared_vs_naive import agreement  # noqa: E402


def matrix(preset: str, sizes: dict[str, int], pairs: list[str], grans: list[str], device_map: str) -> dict:
    return {
        "name": preset,
        "model": {"source": "synthetic", "preset": preset, "dtype": "bfloat16", "device": "cuda",
                  "device_map": device_map},
        "dataset": {"seq_len": 512, "sizes": sizes, "eval_samples": 8, "seed": 0},
        "autoquant": {"method": "gradient", "batch_size": 4, "effective_bits": 8.0},
        "axes": {"quant_pairs": pairs, "granularities": grans, "dataset_sizes": list(sizes)},
        "canary": {"enabled": False},
    }


def warm_up() -> dict:
    """First-use costs (ModelOpt's import and its INT/FP8 CUDA extensions), timed apart from the sweeps."""
    import modelopt.torch.quantization as mtq

    t = time.perf_counter()
    for cfg in (mtq.INT8_DEFAULT_CFG, mtq.INT4_BLOCKWISE_WEIGHT_ONLY_CFG):
        m = torch.nn.Sequential(torch.nn.Linear(256, 256)).cuda().to(torch.bfloat16)
        x = torch.randn(4, 256, device="cuda", dtype=torch.bfloat16)
        mtq.quantize(m, cfg, lambda mm, x=x: mm(x))
        m(x)
    torch.cuda.synchronize()
    return {"warm_up_s": round(time.perf_counter() - t, 3)}


_LOADED: list = []


def _keep_loaded_on_close() -> None:
    """Keep the sweep's LoadedModel past the executor's close (its master is long handed out by then)."""
    from quantsweep.execution.local_executor import LocalExecutor

    original = LocalExecutor.close

    def close(self) -> None:
        if self.ctx is not None:
            _LOADED.append(self.ctx.loaded)
        original(self)

    LocalExecutor.close = close


def run(path: Path, root: Path, engine: str) -> dict:
    from quantsweep.execution.sweep import Reporter, RunOptions, Sweep

    sweep = Sweep(path, RunOptions(output_root=str(root / engine), engine=engine), Reporter())
    for d in range(torch.cuda.device_count()):
        torch.cuda.reset_peak_memory_stats(d)
    t0 = time.perf_counter()
    outcome = sweep.run()
    wall = time.perf_counter() - t0
    rows = outcome.summary["rows"]
    info = sweep.info or {}
    rebuild_s = None
    loaded = _LOADED.pop() if _LOADED else None
    if loaded is not None:  # the cost of giving a later call its model (a rebuild), measured once more
        torch.cuda.synchronize()
        t = time.perf_counter()
        model = loaded.take_model()
        torch.cuda.synchronize()
        rebuild_s = round(time.perf_counter() - t, 3)
        del model, loaded
    calls = []  # one entry per AutoQuantize call, in execution order
    if engine == "shared":
        seen = set()
        for r in rows:
            sh = r["telemetry"].get("shared")
            if sh and sh["union"] not in seen:
                seen.add(sh["union"])
                calls.append({"call": sh["union"], "cells": sh["cells"], "model_s": sh["model_s"],
                              "call_s": round(sh["calibrate_s"] + sh["score_s"] + sh["search_s"], 3),
                              "peak_device_mb": sh["peak_device_mb"],
                              "peak_device_mb_by_device": sh.get("peak_device_mb_by_device")})
    else:
        for r in rows:
            ph = r["telemetry"]["phases"]
            calls.append({"call": r["key"], "cells": 1, "model_s": ph.get("model"),
                          "call_s": round(sum(ph.get(k, 0.0) for k in ("calibrate", "score", "search")), 3),
                          "peak_device_mb": r["telemetry"].get("peak_device_mb"),
                          "peak_device_mb_by_device": r["telemetry"].get("peak_device_mb_by_device")})
    return {
        "engine": engine,
        "wall_s": round(wall, 3),
        "setup": info.get("setup"),
        "model": {k: (info.get("model") or {}).get(k) for k in ("num_parameters", "dtype", "device", "placement",
                                                                   "load_seconds")},
        "process_peak_device_mb_by_device": {
            f"cuda:{d}": round(torch.cuda.max_memory_allocated(d) / 2**20, 1) for d in range(torch.cuda.device_count())
        },
        "calls": calls,
        "rebuild_after_sweep_s": rebuild_s,
        "errors": [r["error"] for r in rows if r["status"] != "ok"],
        "rows": rows,
    }


def summarise(res: dict) -> dict:
    peaks = [c["peak_device_mb"] for c in res["calls"] if c["peak_device_mb"] is not None]
    model_s = [c["model_s"] for c in res["calls"] if c["model_s"] is not None]
    call_s = [c["call_s"] for c in res["calls"]]
    return {
        "wall_s": res["wall_s"],
        "peak_device_mb": max(peaks) if peaks else None,
        "first_call_peak_mb": peaks[0] if peaks else None,
        "later_peak_above_first_mb": (max(peaks[1:]) - peaks[0]) if len(peaks) > 1 else None,
        "model_s": model_s,
        "rebuild_after_sweep_s": res["rebuild_after_sweep_s"],
        "rebuild_s_mean": (sum(model_s[1:]) / len(model_s[1:])) if len(model_s) > 1 else None,
        "call_s": call_s,
        "errors": res["errors"],
    }


def _write(path: Path, data: dict) -> Path:
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--part", choices=["8b", "70b"], required=True)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    import warnings

    warnings.filterwarnings("ignore")
    result: dict = {"part": args.part, "gpus": [torch.cuda.get_device_name(d) for d in range(torch.cuda.device_count())]}
    result["first_use"] = warm_up()
    _keep_loaded_on_close()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        if args.part == "8b":
            m = matrix("llama3-8b", {"n8": 8, "n16": 16}, ["wint4_afp16", "wint8_afp16"], ["default", "w_group64"],
                       "none")
            path = _write(root / "m.yaml", m)
            naive = run(path, root, "naive")
            shared = run(path, root, "shared")
        else:
            m = matrix("llama3-70b", {"n4": 4, "n8": 8}, ["wint4_afp16", "wint8_afp16"], ["default"], "auto")
            shared = run(_write(root / "m.yaml", m), root, "shared")
            one = dict(m, axes={"quant_pairs": ["wint4_afp16"], "granularities": ["default"], "dataset_sizes": ["n8"]})
            naive = run(_write(root / "one.yaml", one), root, "naive")  # one cell, to check against its shared twin
        result["agreement"] = agreement(naive["rows"], shared["rows"])
        result["naive"], result["shared"] = summarise(naive), summarise(shared)
        result["calls"] = {"naive": naive["calls"], "shared": shared["calls"]}
        result["setup"] = shared["setup"]
        result["model"] = shared["model"]
        result["process_peak_device_mb_by_device"] = shared["process_peak_device_mb_by_device"]
        result["quality"] = {r["key"]: {k: r["quality"].get(k) for k in ("kl_mean", "ppl_ratio")}
                             for r in shared["rows"] if r["status"] == "ok"}
    print(json.dumps({k: v for k, v in result.items() if k not in ("calls",)}, indent=1, default=str))
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=1, default=str))


if __name__ == "__main__":
    main()
