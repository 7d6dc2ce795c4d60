"""Profile one shared-engine union call (where the shared engine spends its time) with cProfile.

Builds the reference matrix of `shared_vs_naive.py`, takes its largest union call (the data-free one: the six
weight-only formats, all score batches) and runs it once under cProfile, printing the top functions by total
and cumulative time, plus the same call's phase times.

With `--split`, the call is first run unprofiled with all its formats and then with the first half of them (what
one half of a Ray split runs, execution/work_units.py), so that the part of a call that does not depend on its
formats can be read off: fixed = 2 x half - whole. The profile is then of the half call.

    python3 benchmarks/profile_union.py --variant h100 --out profile.txt
    python3 benchmarks/profile_union.py --variant llama3-8b --split --out profile-8b.txt
"""

from __future__ import annotations

import argparse
import cProfile
import io
import os
import pstats
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TQDM_DISABLE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import yaml  # noqa: E402
from shared_vs_naive import VARIANTS, reference_matrix, warm_up  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--variant", choices=sorted(VARIANTS), default="cpu")
    ap.add_argument("--out", default=None)
    ap.add_argument("--split", action="store_true", help="time the whole call and its first half of formats first")
    args = ap.parse_args()
    import warnings

    warnings.filterwarnings("ignore")
    from quantsweep.engine.modelopt_bookkeeping import fast_modelopt_bookkeeping
    from quantsweep.engine.shared import run_union
    from quantsweep.execution.context import prepare_context
    from quantsweep.execution.shared_runner import plan_union_calls
    from quantsweep.execution.sweep import Reporter, RunOptions, Sweep

    v = VARIANTS[args.variant]
    warm_up(v["device"])
    with tempfile.TemporaryDirectory() as tmp, fast_modelopt_bookkeeping():  # as the shared runner does
        mpath = Path(tmp) / "m.yaml"
        mpath.write_text(yaml.safe_dump(reference_matrix(v), sort_keys=False))
        sweep = Sweep(mpath, RunOptions(output_root=tmp), Reporter())
        ctx, _setup = prepare_context(sweep.matrix, sweep.plan, "shared")
        calls = plan_union_calls(ctx.matrix, ctx.loaded.device.type, sweep.plan.cells)
        call, members = max(calls, key=lambda cm: len(cm[0].formats) * cm[0].score_steps)
        n = max(max(c.calib_samples, c.score_samples) for c, *_ in members)
        batches = ctx.batches(n)
        timed: list[str] = []
        if args.split:
            import copy

            half = copy.copy(call)
            half.formats = call.formats[: max(1, len(call.formats) // 2)]
            for c, tag in ((call, "whole"), (half, "half")):
                t0 = time.perf_counter()
                u = run_union(ctx.loaded.take_model(), c, batches, "gradient", [])
                _sync()
                timed.append(f"{tag}: {len(c.formats)} formats, wall {time.perf_counter() - t0:.2f} s, "
                             f"phases { {k: round(v, 3) for k, v in u.phases.items()} }")
                del u
            call = half
        prof = cProfile.Profile()
        t0 = time.perf_counter()
        prof.enable()
        union = run_union(ctx.loaded.take_model(), call, batches, "gradient", [])
        _sync()
        prof.disable()
        wall = time.perf_counter() - t0
    buf = io.StringIO()
    for line in timed:
        buf.write(line + "\n")
    buf.write(f"union {call.key}: {len(call.formats)} formats, {call.calib_steps} calib + {call.score_steps} score "
              f"batches; wall {wall:.1f} s; phases {union.phases}\n")
    for key in ("tottime", "cumulative"):
        buf.write(f"\n--- top 30 by {key} ---\n")
        pstats.Stats(prof, stream=buf).sort_stats(key).print_stats(30)
    text = buf.getvalue()
    if args.out:
        Path(args.out).write_text(text)
    print(text[:12000])


def _sync() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()


if __name__ == "__main__":
    main()
