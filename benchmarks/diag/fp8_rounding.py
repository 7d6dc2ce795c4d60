"""Does ModelOpt's FP8 fake quantization round a weight as its exporter does? (docs/export.md: the FP8 cell's
checkpoint, reloaded on an H200, was KL 0.053 from the evaluated model while the CPU cells agree to 1e-8.)

For random weights in each dtype and device: the fake-quantized weight of ModelOpt's TensorQuantizer (its CUDA
kernel on a GPU), `_fp8_eager` (the torch path), and the exporter's `to_quantized_weight` dequantized with the
exported scale; prints how many elements differ between each pair and by how many FP8 levels.

    python3 benchmarks/diag/fp8_rounding.py --out fp8.json
"""

from __future__ import annotations

import argparse
import json
import warnings
from pathlib import Path

import torch


def levels(a: torch.Tensor, b: torch.Tensor, scale: torch.Tensor) -> dict:
    qa = (a.float() / scale).to(torch.float8_e4m3fn).view(torch.uint8).to(torch.int32)
    qb = (b.float() / scale).to(torch.float8_e4m3fn).view(torch.uint8).to(torch.int32)
    sign = (qa >> 7) != (qb >> 7)
    d = (qa & 0x7F) - (qb & 0x7F)
    d = torch.where(sign, (qa & 0x7F) + (qb & 0x7F), d.abs())
    return {"differing": int((a != b).sum()), "level_max": int(d.max()), "level_differing": int((d > 0).sum()),
            "numel": a.numel()}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    warnings.filterwarnings("ignore")
    import modelopt.torch.quantization as mtq
    from modelopt.torch.export.quant_utils import to_quantized_weight
    from modelopt.torch.quantization.tensor_quant import _fp8_eager

    out = {}
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    for device in devices:
        for dtype in (torch.bfloat16, torch.float32):
            gen = torch.Generator().manual_seed(0)
            w = (torch.randn(1536, 576, generator=gen) * 0.02).to(dtype).to(device)
            lin = torch.nn.Linear(576, 1536, bias=False).to(device=device, dtype=dtype)
            with torch.no_grad():
                lin.weight.copy_(w)
            m = torch.nn.Sequential(lin)
            mtq.quantize(m, mtq.FP8_DEFAULT_CFG, lambda mm: mm(torch.randn(4, 576, device=device, dtype=dtype)))
            q = m[0].weight_quantizer
            with torch.no_grad():
                fake = q(w)
                amax = q.amax.float()
                eager = _fp8_eager(w, amax)
                scale = (amax / 448.0).to(device)
                exported = to_quantized_weight(w, scale, "fp8")
                deq = (exported.float() * scale).to(dtype)
            key = f"{device}-{str(dtype).split('.')[-1]}"
            out[key] = {
                "modelopt_vs_eager": levels(fake, eager, scale),
                "modelopt_vs_export": levels(fake, deq, scale),
                "eager_vs_export": levels(eager, deq, scale),
                "division_dtype": str((w / scale).dtype),
            }
            print(key, json.dumps(out[key]))
    if args.out:
        Path(args.out).write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
