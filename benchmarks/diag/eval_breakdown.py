"""Where a shared-engine cell's `evaluate` phase goes: the same held-out batch through the unquantized model, the
union model with every layer at 16 bits, and with a solved cell's recipe switched in, through ModelOpt's forward
and through the lean forward (engine/quant_linear.py), then the whole `compare_to_baseline`. Times are device-
synchronised means over repeats, after one warm-up call each.

    python3 benchmarks/diag/eval_breakdown.py --variant h100 --out eval.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
import warnings
from pathlib import Path

os.environ.setdefault("TQDM_DISABLE", "1")
ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "benchmarks"))

import torch  # noqa: E402
import yaml  # noqa: E402
from shared_vs_naive import VARIANTS, reference_matrix, warm_up  # noqa: E402


def _graph_forward(model, batches, logits, repeats: int) -> dict:
    """A cell's evaluation forwards recorded as one CUDA graph: captured once (the capture runs the Python and
    records the kernels without running them), then replayed for every batch. Times a whole cell's worth (capture
    + every batch, synchronised) against the eager forwards of every batch, and checks the bits."""
    eager_outs = [logits(model, b["input_ids"]).clone() for b in batches]
    torch.cuda.synchronize()

    def eager_cell() -> None:
        for b in batches:
            logits(model, b["input_ids"])

    def graph_cell(check: bool = False) -> dict:
        static = batches[0]["input_ids"].clone()
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        graph = torch.cuda.CUDAGraph()
        t = time.perf_counter()
        with torch.cuda.stream(stream):
            graph.capture_begin(capture_error_mode="thread_local")
            try:
                out = logits(model, static)
            finally:
                graph.capture_end()
        capture_s = time.perf_counter() - t
        torch.cuda.current_stream().wait_stream(stream)
        same = True
        for i, b in enumerate(batches):
            static.copy_(b["input_ids"])
            graph.replay()
            if check:
                same = same and torch.equal(out, eager_outs[i])
        torch.cuda.synchronize()
        return {"capture_s": capture_s, "same": same}

    res: dict = {}
    try:
        first = graph_cell(check=True)
        res["graph_bitwise_equal"] = first["same"]
        t = time.perf_counter()
        caps = [graph_cell()["capture_s"] for _ in range(repeats)]
        res["graph_cell_s"] = (time.perf_counter() - t) / repeats
        res["graph_capture_s"] = sum(caps) / len(caps)
    except Exception as exc:  # noqa: BLE001 - the point is to learn whether it captures
        res["graph_error"] = f"{type(exc).__name__}: {exc}"[:400]
    torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(repeats):
        eager_cell()
    torch.cuda.synchronize()
    res["eager_cell_s"] = (time.perf_counter() - t) / repeats
    return res


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--variant", choices=sorted(VARIANTS), default="cpu-deep")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    warnings.filterwarnings("ignore")
    from quantsweep.engine.modelopt_bookkeeping import fast_modelopt_bookkeeping
    from quantsweep.engine.quality import _logits, compare_to_baseline
    from quantsweep.engine.quant_linear import lean_linear_forwards
    from quantsweep.engine.shared import apply_plan, plan_cell, run_union
    from quantsweep.execution.context import prepare_context
    from quantsweep.execution.shared_runner import plan_union_calls
    from quantsweep.execution.sweep import Reporter, RunOptions, Sweep

    v = VARIANTS[args.variant]
    warm_up(v["device"])

    def timed(fn) -> float:
        fn()
        if v["device"] == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        for _ in range(args.repeats):
            fn()
        if v["device"] == "cuda":
            torch.cuda.synchronize()
        return (time.perf_counter() - t) / args.repeats

    out: dict = {"variant": args.variant}
    with tempfile.TemporaryDirectory() as tmp, fast_modelopt_bookkeeping(), torch.no_grad():
        mpath = Path(tmp) / "m.yaml"
        mpath.write_text(yaml.safe_dump(reference_matrix(v), sort_keys=False))
        sweep = Sweep(mpath, RunOptions(output_root=tmp), Reporter())
        ctx, _ = prepare_context(sweep.matrix, sweep.plan, "shared")
        ids = ctx.eval_batches[0]["input_ids"]
        out["eval_batches"] = len(ctx.eval_batches)
        out["batch_shape"] = list(ids.shape)
        model = ctx.loaded.take_model()
        out["plain_forward_s"] = timed(lambda: _logits(model, ids))
        calls = plan_union_calls(ctx.matrix, ctx.loaded.device.type, sweep.plan.cells)
        call, members = max(calls, key=lambda cm: len(cm[1]))
        n = max(max(c.calib_samples, c.score_samples) for c, *_ in members)
        with torch.enable_grad():
            union = run_union(model, call, ctx.batches(n), "gradient", [])
        out["union"] = call.key
        out["all_16_bit_forward_s"] = timed(lambda: _logits(union.model, ids))
        cells = []
        for cell, formats, _backend in members[:3]:
            t = time.perf_counter()
            apply_plan(union, plan_cell(union, formats, cell.budget, cell.score_steps, "gradient", cell.calib_steps))
            row = {"cell": cell.id, "solve_s": time.perf_counter() - t}
            row["modelopt_forward_s"] = timed(lambda: _logits(union.model, ids))
            row["compare_s"] = timed(lambda: compare_to_baseline(union.model, ctx.eval_batches, ctx.baseline))
            with lean_linear_forwards(union.model) as switched:
                row["lean_linears"] = switched
                row["lean_forward_s"] = timed(lambda: _logits(union.model, ids))
                row["lean_compare_s"] = timed(lambda: compare_to_baseline(union.model, ctx.eval_batches, ctx.baseline))
                if v["device"] == "cuda":
                    row.update(_graph_forward(union.model, ctx.eval_batches, _logits, args.repeats))
            cells.append(row)
        out["cells"] = cells
    text = json.dumps(out, indent=2)
    print(text)
    if args.out:
        Path(args.out).write_text(text)


if __name__ == "__main__":
    main()
