"""(GPU) ModelOpt's per-axis integer fake-quantization kernel against engine/axis_fake_quant.py's, on the weights
of one Llama-3-8B decoder layer and its lm_head (bf16): milliseconds per call (CUDA events, median of --calls after
a warm-up), the ratio, the effective memory bandwidth, and whether the outputs are bit-identical.

    python benchmarks/diag/axis_kernel.py --out axis-kernel.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "src"))

# (name, out_features, in_features) of one Llama-3-8B layer's linears, and its lm_head
SHAPES = [("q_proj", 4096, 4096), ("k_proj", 1024, 4096), ("gate_proj", 14336, 4096), ("down_proj", 4096, 14336),
          ("lm_head", 128256, 4096)]


def _time(fn, calls: int) -> float:
    import torch

    fn()
    times = []
    for _ in range(calls):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        b.synchronize()
        times.append(a.elapsed_time(b))
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--calls", type=int, default=20)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    import torch

    from modelopt.torch.quantization.extensions import get_cuda_ext
    from quantsweep.engine import axis_fake_quant as afq

    ext = get_cuda_ext(raise_if_failed=True)
    assert afq.warm(torch.device("cuda"), torch.bfloat16)
    rows = []
    for name, out_f, in_f in SHAPES:
        w = torch.randn(out_f, in_f, device="cuda", dtype=torch.bfloat16)
        for fmt, x, amax in (
            ("int8_per_channel", w, w.abs().amax(dim=1).float()),
            ("int4_block128", w.view(-1, 128), w.view(-1, 128).abs().amax(dim=1).float()),
        ):
            bits = 8 if fmt.startswith("int8") else 4
            modelopt_ms = _time(lambda: ext.fake_tensor_quant_with_axis(x, amax, 0, bits, False, True), args.calls)
            ours_ms = _time(lambda: afq.fake_quant_axis(x, amax, 0, bits, True), args.calls)
            plain_ms = _time(lambda: afq.fake_quant_axis(x, amax, 0, bits, True, zero_shortcut=False), args.calls)
            warps8_ms = _time(lambda: afq.fake_quant_axis(x, amax, 0, bits, True, num_warps=8), args.calls)
            want = ext.fake_tensor_quant_with_axis(x, amax, 0, bits, False, True).view(torch.int16)
            same = all(torch.equal(afq.fake_quant_axis(x, amax, 0, bits, True, zero_shortcut=z).view(torch.int16),
                                   want) for z in (True, False))
            gbytes = 2 * x.numel() * x.element_size() / 1e9
            rows.append({"linear": name, "format": fmt, "elements": x.numel(), "modelopt_ms": round(modelopt_ms, 4),
                         "triton_ms": round(ours_ms, 4),
                         "triton_no_zero_shortcut_ms": round(plain_ms, 4), "triton_8_warps_ms": round(warps8_ms, 4),
                         "speedup": round(modelopt_ms / ours_ms, 2),
                         "modelopt_tb_s": round(gbytes / modelopt_ms, 3), "triton_tb_s": round(gbytes / ours_ms, 3),
                         "bit_identical": same})
            print(f"{name:10s} {fmt:17s} ModelOpt {modelopt_ms:7.3f} ms  Triton {ours_ms:7.3f} ms (no zero shortcut {plain_ms:7.3f}, 8 warps {warps8_ms:7.3f})  "
                  f"x{modelopt_ms / ours_ms:5.2f}  identical {same}", flush=True)
    result = {"device": torch.cuda.get_device_name(0), "dtype": "bfloat16", "rows": rows}
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
