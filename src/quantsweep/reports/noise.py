"""Which differences between cells the held-out evaluation can resolve. Pure.

Two cells of a sweep are evaluated on the same held-out tokens, so their difference is measured pairwise: per
held-out sequence, the difference of the two cells' sequence means (`quality.per_sequence`, written by
`engine/quality.py`), then the mean of those differences and its standard error (sd / sqrt(G) over the G
sequences — clustered by sequence, like every error bar of a row). A difference is *resolved* when it is more than
`Z` standard errors from zero; otherwise the report says it is within noise.

The comparisons are the ones a reader draws: cells that differ in exactly one axis (quant pair, granularity or
dataset size) with everything else equal (model, budget, the other two axes).
"""

from __future__ import annotations

import math
from typing import Any

Z = 2.0
AXES = ("pair", "granularity", "dataset_size")
METRICS = {"kl": "kl_mean", "ln_ppl_ratio": "ln_ppl_ratio"}


def paired_difference(a: list[float], b: list[float]) -> tuple[float, float] | None:
    """(mean of a - b, its standard error) over paired per-sequence values; None when they cannot be paired, or
    when a value is not finite or so large that its spread is not (a diverged cell has no resolvable difference)."""
    if len(a) != len(b) or len(a) < 2:
        return None
    d = [x - y for x, y in zip(a, b, strict=True)]
    if not all(math.isfinite(x) for x in d):
        return None
    g = len(d)
    mean = sum(d) / g
    var = sum((x - mean) * (x - mean) for x in d) / (g - 1)  # `**` would raise on overflow; `*` gives inf
    if not (math.isfinite(mean) and math.isfinite(var)):
        return None
    return mean, math.sqrt(var / g)


def _per_sequence(row: dict[str, Any]) -> dict[str, list[float]] | None:
    q = row.get("quality")
    per = q.get("per_sequence") if isinstance(q, dict) else None
    return per if isinstance(per, dict) else None


def comparisons(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Every one-axis comparison between ok rows that carry per-sequence values, with its paired differences."""
    ok = [r for r in rows if r.get("status") == "ok" and _per_sequence(r) is not None]
    out: list[dict[str, Any]] = []
    for i, a in enumerate(ok):
        for b in ok[i + 1 :]:
            if a.get("model") != b.get("model") or a.get("effective_bits_target") != b.get("effective_bits_target"):
                continue
            differing = [ax for ax in AXES if a.get(ax) != b.get(ax)]
            if len(differing) != 1:
                continue
            pa, pb = _per_sequence(a), _per_sequence(b)
            assert pa is not None and pb is not None
            entry: dict[str, Any] = {"axis": differing[0], "a": a["key"], "b": b["key"], "metrics": {}}
            for name in METRICS:
                diff = paired_difference(pa.get(name) or [], pb.get(name) or [])
                if diff is None:
                    continue
                mean, se = diff
                resolved = abs(mean) > Z * se if se > 0 else mean != 0
                identical = mean == 0 and se == 0  # the same model (e.g. every layer quantized in both)
                entry["metrics"][name] = {"delta": mean, "stderr": se, "resolved": resolved, "identical": identical}
            if entry["metrics"]:
                out.append(entry)
    return out


def within_noise(entries: list[dict[str, Any]], metric: str = "kl") -> list[dict[str, Any]]:
    """Comparisons whose difference in `metric` is not resolved (identical pairs are not noise: left out)."""
    return [e for e in entries if metric in e["metrics"] and not e["metrics"][metric]["resolved"]
            and not e["metrics"][metric]["identical"]]
