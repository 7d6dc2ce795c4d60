"""Compare quantsweep's pure-PyTorch NVFP4/MX fake quantization with ModelOpt's CUDA kernels (run on a GPU).

For every format (NVFP4 with 16- and 32-element blocks, MXFP4, MXFP6, MXFP8, MXINT8) and every test tensor
(random normal, heavy-tailed, rows that are not a multiple of the block, zero and tiny blocks, in float32 and
bfloat16, and real SmolLM2 weights when `--weights FILE.safetensors` is given), it fake-quantizes the tensor with
ModelOpt's own TensorQuantizer on CUDA (Triton / CUDA extension) and with quantsweep's functions both on CUDA and
on the CPU, and reports the number of differing elements and the largest absolute difference.

Then it runs one NVFP4 AutoQuantize cell on a small synthetic model on CUDA twice - ModelOpt's kernels vs the
torch backend - and compares the raw per-layer scores.

    python3 benchmarks/compare_fake_quant_backends.py --out results.json [--weights sample.safetensors]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

os.environ.setdefault("TQDM_DISABLE", "1")  # before anything imports tqdm (ModelOpt's progress bars)
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from quantsweep.engine.torch_formats import mx_fake_quant, nvfp4_fake_quant  # noqa: E402

FORMATS = {
    "nvfp4_b16": {"num_bits": (2, 1), "block_sizes": {-1: 16, "type": "dynamic", "scale_bits": (4, 3)}},
    "nvfp4_b32": {"num_bits": (2, 1), "block_sizes": {-1: 32, "type": "dynamic", "scale_bits": (4, 3)}},
    "mxfp4": {"num_bits": (2, 1), "block_sizes": {-1: 32, "type": "dynamic", "scale_bits": (8, 0)}},
    "mxfp6": {"num_bits": (3, 2), "block_sizes": {-1: 32, "type": "dynamic", "scale_bits": (8, 0)}},
    "mxfp8": {"num_bits": (4, 3), "block_sizes": {-1: 32, "type": "dynamic", "scale_bits": (8, 0)}},
    "mxint8": {"num_bits": 8, "block_sizes": {-1: 32, "type": "dynamic", "scale_bits": (8, 0)}},
}


def test_tensors(weights: str | None) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    t = {
        "normal_256x1024_f32": torch.randn(256, 1024, generator=g),
        "normal_64x1000_f32": torch.randn(64, 1000, generator=g),  # 1000 % 16 != 0 and % 32 != 0
        "student_t_256x512_f32": torch.distributions.StudentT(2.0).sample((256, 512)),
        "normal_256x1024_bf16": torch.randn(256, 1024, generator=g).to(torch.bfloat16),
        "scaled_1e-4_128x256_f32": torch.randn(128, 256, generator=g) * 1e-4,
    }
    z = torch.randn(64, 256, generator=g)
    z[:, :32] = 0.0  # whole zero blocks
    z[:, 32:64] *= 1e-7  # blocks far below the global amax
    t["zero_and_tiny_blocks_64x256_f32"] = z
    if weights:
        from safetensors import safe_open

        with safe_open(weights, "pt") as f:
            for name in f.keys():
                w = f.get_tensor(name).float()
                t[f"smollm2:{name}:f32"] = w
                t[f"smollm2:{name}:bf16"] = w.to(torch.bfloat16)
    return t


def modelopt_fake_quant(x: torch.Tensor, attrs: dict) -> tuple[torch.Tensor, torch.Tensor | None]:
    from modelopt.torch.quantization.config import QuantizerAttributeConfig
    from modelopt.torch.quantization.nn import TensorQuantizer

    tq = TensorQuantizer(QuantizerAttributeConfig(**attrs)).to(x.device)
    is_mx = attrs["block_sizes"].get("scale_bits") == (8, 0)
    amax = None
    if not is_mx:  # NVFP4: calibrate the global amax (max), as AutoQuantize does
        tq.disable_quant()
        tq.enable_calib()
        tq(x)
        tq.load_calib_amax()
        tq.disable_calib()
        tq.enable_quant()
        amax = tq.amax.detach().float()
    with torch.no_grad():
        return tq(x), amax


def ours(x: torch.Tensor, attrs: dict, amax: torch.Tensor | None) -> torch.Tensor:
    block = attrs["block_sizes"][-1]
    if attrs["block_sizes"].get("scale_bits") == (4, 3):
        a = amax if amax.numel() == 1 else amax.amax()
        return nvfp4_fake_quant(x, a.to(x.device), block)
    return mx_fake_quant(x, attrs["num_bits"], block)


def diff(a: torch.Tensor, b: torch.Tensor) -> dict:
    a, b = a.float().cpu(), b.float().cpu()
    neq = a != b
    both_nan = torch.isnan(a) & torch.isnan(b)
    neq &= ~both_nan
    d = (a - b).abs()
    d[both_nan] = 0
    return {
        "elements": a.numel(),
        "mismatches": int(neq.sum()),
        "max_abs_diff": float(d.max()) if d.numel() else 0.0,
        "max_rel_diff": float((d / a.abs().clamp_min(1e-30))[neq].max()) if neq.any() else 0.0,
    }


def compare_tensors(weights: str | None) -> list[dict]:
    rows = []
    for tname, x in test_tensors(weights).items():
        for fname, attrs in FORMATS.items():
            xc = x.cuda()
            try:
                ref, amax = modelopt_fake_quant(xc, attrs)
            except Exception as exc:  # a ModelOpt limitation is a finding, not a crash
                rows.append({"tensor": tname, "format": fname, "error": f"modelopt: {type(exc).__name__}: {exc}"})
                continue
            gpu = ours(xc, attrs, amax)
            cpu = ours(x, attrs, None if amax is None else amax.cpu())
            rows.append(
                {
                    "tensor": tname,
                    "format": fname,
                    "dtype": str(x.dtype).replace("torch.", ""),
                    "torch_cuda_vs_modelopt": diff(gpu, ref),
                    "torch_cpu_vs_modelopt": diff(cpu, ref),
                }
            )
    return rows


def compare_autoquantize_scores(out_dir: Path) -> dict:
    """One NVFP4 (W4A16) cell on CUDA with ModelOpt's kernels and with the torch backend."""
    import yaml

    from quantsweep.execution.sweep import RunOptions, run_sweep

    base = {
        "name": "backend",
        "model": {"source": "synthetic", "preset": "qwen3-tiny", "device": "cuda", "dtype": "float32"},
        "dataset": {"seq_len": 64, "sizes": {"s": 8}, "eval_samples": 4},
        "autoquant": {"batch_size": 4, "effective_bits": 6.0},
        "axes": {"quant_pairs": ["wfp4_afp16", "wmxfp4_amxfp4"], "granularities": ["default"], "dataset_sizes": ["s"]},
        "canary": {"enabled": False},
    }
    results = {}
    for backend in ("modelopt", "torch"):
        m = json.loads(json.dumps(base))
        m["autoquant"]["fake_quant_backend"] = backend
        p = out_dir / f"m-{backend}.yaml"
        p.write_text(yaml.safe_dump(m))
        t0 = time.perf_counter()
        outcome = run_sweep(p, RunOptions(output_root=str(out_dir / backend), engine="naive"))
        results[backend] = {"rows": outcome.summary["rows"], "wall_s": time.perf_counter() - t0}
    cmp = {}
    for r_mo, r_t in zip(results["modelopt"]["rows"], results["torch"]["rows"], strict=True):
        if r_mo["status"] != "ok" or r_t["status"] != "ok":
            cmp[r_mo["key"]] = {"error": [r_mo.get("error"), r_t.get("error")]}
            continue
        m_mo = json.loads((Path(r_mo["path"]) / "manifest.json").read_text())
        m_t = json.loads((Path(r_t["path"]) / "manifest.json").read_text())
        worst = 0.0
        for g1, g2 in zip(m_mo["layers"], m_t["layers"], strict=True):
            for a, b in zip(g1["raw_scores"], g2["raw_scores"], strict=True):
                if a or b:
                    worst = max(worst, abs(a - b) / max(abs(a), abs(b)))
        cmp[r_mo["key"]] = {
            "fake_quant_backends": [r_mo["fake_quant_backend"], r_t["fake_quant_backend"]],
            "max_rel_raw_score_diff": worst,
            "same_recipe": [g["chosen"] for g in m_mo["layers"]] == [g["chosen"] for g in m_t["layers"]],
            "total_score": [r_mo["total_score"], r_t["total_score"]],
            "kl_mean": [r_mo["quality"]["kl_mean"], r_t["quality"]["kl_mean"]],
        }
    return cmp


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="fake_quant_comparison.json")
    ap.add_argument("--weights", default=None, help="a .safetensors file of real weights to include")
    args = ap.parse_args()
    if not torch.cuda.is_available():
        sys.exit("this comparison needs a CUDA device")
    os.environ.setdefault("TQDM_DISABLE", "1")
    t0 = time.perf_counter()
    tensors = compare_tensors(args.weights)
    with tempfile.TemporaryDirectory() as tmp:
        scores = compare_autoquantize_scores(Path(tmp))
    doc = {
        "device": torch.cuda.get_device_name(0),
        "torch": torch.__version__,
        "tensors": tensors,
        "autoquantize_scores": scores,
        "wall_s": time.perf_counter() - t0,
    }
    Path(args.out).write_text(json.dumps(doc, indent=2))
    print(f"{'tensor':58s} {'format':10s} {'cuda mism.':>10s} {'cuda maxdiff':>12s} {'cpu mism.':>10s}")
    for r in tensors:
        if "error" in r:
            print(f"{r['tensor'][:58]:58s} {r['format']:10s} {r['error'][:80]}")
            continue
        g, c = r["torch_cuda_vs_modelopt"], r["torch_cpu_vs_modelopt"]
        print(f"{r['tensor'][:58]:58s} {r['format']:10s} {g['mismatches']:>10d} {g['max_abs_diff']:>12.3e} {c['mismatches']:>10d}")
    print(json.dumps(scores, indent=1))


if __name__ == "__main__":
    main()
