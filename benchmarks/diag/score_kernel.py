"""(GPU) The fused score kernel (engine/score_kernel.py) against ModelOpt's six-pass element-wise score, per call.

For outputs of the Llama-3-8B and Qwen3-0.6B shapes (2048 tokens x each linear's width), bf16 outputs and a float32
gradient as the score replay hands them over: device time per call (CUDA events, the mean of many calls) and host
time per call (the launches alone, no sync), for each way, and their ratios.

    python3 benchmarks/diag/score_kernel.py --out score-kernel.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "src"))

WIDTHS = [1024, 2048, 3072, 4096, 14336, 151936]
TOKENS = 2048


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=None)
    ap.add_argument("--calls", type=int, default=50)
    args = ap.parse_args()
    import torch

    from quantsweep.engine.captured_scores import _score
    from quantsweep.engine.score_kernel import fused_score, warm

    dev = torch.device("cuda")
    warm(dev, torch.bfloat16)

    def eager(q, y, g):
        d = q.clone()  # the replay's fresh output (its cost is not the score's: timed apart below)
        d -= y
        return _score(g, d)

    def clone_only(q, y, g):
        return q.clone()

    rows = []
    for width in WIDTHS:
        q = torch.randn(TOKENS, width, device=dev).bfloat16()
        y = (q.float() + 1e-2 * torch.randn_like(q, dtype=torch.float32)).bfloat16()
        g = torch.randn(TOKENS, width, device=dev) * 1e-3
        row = {"width": width, "elements": q.numel()}
        for name, fn in (("eager", eager), ("fused", fused_score), ("clone", clone_only)):
            fn(q, y, g)
            torch.cuda.synchronize()
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            t = time.perf_counter()
            for _ in range(args.calls):
                fn(q, y, g)
            host = (time.perf_counter() - t) / args.calls
            end.record()
            torch.cuda.synchronize()
            row[f"{name}_device_ms"] = round(start.elapsed_time(end) / args.calls, 4)
            row[f"{name}_host_us"] = round(host * 1e6, 1)
        row["eager_minus_clone_ms"] = round(row["eager_device_ms"] - row["clone_device_ms"], 4)
        row["device_ratio"] = round(row["eager_minus_clone_ms"] / row["fused_device_ms"], 2)
        rows.append(row)
        print(json.dumps(row), flush=True)
    out = {"device": torch.cuda.get_device_name(0), "tokens": TOKENS, "calls": args.calls, "rows": rows}
    if args.out:
        Path(args.out).write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
