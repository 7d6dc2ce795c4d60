"""The cost of building the sweep summary's text after every cell, summed as a sweep of n cells pays it: before
(every row of `rows.jsonl` parsed and every row encoded at every write) and now (store/rows.py `RowTail` parses only
appended lines, store/summary_text.py `SummaryText` encodes only new or changed rows). Both in the same process, on
the same synthetic rows of a real row's shape; the texts are compared at every write. Timed: reading the log's rows,
finalizing them and encoding the document; not timed: the atomic file write (~4 ms for a 300-row summary on a
2-core box, the same either way) and the KPIs, hardware and matrix blocks of the real summary.

    python3 benchmarks/summary_writes.py                 # n = 27, 100, 300
    python3 benchmarks/summary_writes.py --cells 500 --out summary-writes.json
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from quantsweep.store.atomic import dumps  # noqa: E402
from quantsweep.store.rows import RowLog, RowTail, latest_by_cell, read_rows  # noqa: E402
from quantsweep.store.summary_text import SummaryText  # noqa: E402
from quantsweep.store.validity import finalize_rows  # noqa: E402


def synthetic_row(i: int, rng: random.Random) -> dict:
    """~2.3 KB as compact JSON (3.2 KB indented), the size of a real row (1.7-3 KB): quality with per-sequence
    means, telemetry, trust."""
    floats = lambda n: [rng.random() for _ in range(n)]  # noqa: E731
    return {
        "cell_id": f"{i:012x}", "status": "ok", "valid": True, "reasons": [], "result_fingerprint": f"fp{i}",
        "key": f"wint4_afp16/w_group64/n{i}", "pair": "wint4_afp16", "granularity": "w_group64",
        "achieved_bits": 7.9 + rng.random() / 10, "total_score": rng.random(),
        "quality": {**{k: rng.random() for k in ("kl_mean", "kl_stderr", "kl_p50", "kl_p90", "kl_p99", "ppl_ratio")},
                    "per_sequence": {"kl": floats(16), "ln_ppl_ratio": floats(16), "top1": floats(16)}},
        "telemetry": {"phases": {k: rng.random() for k in ("calibrate", "score", "search", "evaluate", "model")},
                      "tokens": {"calibration": 4096, "scoring": 4096, "evaluation": 4088},
                      "shared": {"union": "calib-max", "cells": 27, "formats": 9, "calibration_sizes": [2, 4, 8]},
                      "gpu": {"util_mean": rng.random(), "samples": floats(12)}},
        "trust": {"stability": {"flip_share": rng.random(), "score_ci": floats(2), "resamples": 50}},
        "solver": {"used": "exact", "objective_gap": rng.random()},
    }


def simulate(cells: int, incremental: bool, folder: Path) -> tuple[float, list[str]]:
    rng = random.Random(0)
    log = RowLog(folder / f"rows-{incremental}.jsonl")
    tail, text = RowTail(log.path), SummaryText()
    order = [f"{i:012x}" for i in range(cells)]
    total, texts = 0.0, []
    for i in range(cells):
        log.append(synthetic_row(i, rng))
        t = time.perf_counter()
        latest = latest_by_cell(tail.read() if incremental else read_rows(log.path))
        log_rows = [latest[c] for c in order if c in latest]
        doc = {"kind": "quantsweep.sweep_summary", "plan": {"cell_ids": order}, "rows": finalize_rows(log_rows)}
        out = text.dumps(doc, log_rows) if incremental else dumps(doc)
        total += time.perf_counter() - t
        texts.append(out)
    return total, texts


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--cells", type=int, nargs="*", default=[27, 100, 300])
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for n in args.cells:
            before, a = simulate(n, False, Path(tmp))
            now, b = simulate(n, True, Path(tmp))
            same = a == b
            results.append({"cells": n, "before_s": round(before, 3), "now_s": round(now, 3),
                            "ratio": round(before / now, 1), "identical_texts": same})
            print(f"{n:5d} cells: the summary texts of every write summed {before:7.2f} s before, {now:6.2f} s now "
                  f"({before / now:5.1f}x); texts identical: {same}", flush=True)
    if args.out:
        Path(args.out).write_text(json.dumps({"runs": results}, indent=1))


if __name__ == "__main__":
    main()
