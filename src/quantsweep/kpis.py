"""Stability KPIs computed from a sweep's rows and canary (pure; docs/kpis.md has the formulas).

Each KPI is `{"value", "numerator", "denominator"}`; `value` is None when its denominator is 0 (e.g. nothing was
repeated, so determinism is unknown - not 0 and not 1).
"""

from __future__ import annotations

import math
from typing import Any


def _rate(num: int, den: int) -> dict[str, Any]:
    return {"value": round(num / den, 6) if den else None, "numerator": num, "denominator": den}


def group_key(row: dict[str, Any]) -> str:
    """Frontier groups: one per (model, dataset size, granularity, budget); pairs compete inside a group."""
    return "|".join(
        str(row.get(k)) for k in ("model", "dataset_size", "granularity", "effective_bits_target")
    )


def quality_value(row: dict[str, Any], metric: str) -> float | None:
    v = (row.get("quality") or {}).get(metric)
    return float(v) if isinstance(v, int | float) and math.isfinite(v) else None


def compute_kpis(rows: list[dict[str, Any]], canary: dict[str, Any] | None, thresholds: dict[str, Any]) -> dict[str, Any]:
    """`rows` must be finalized (validity recomputed across rows)."""
    checked = 0
    deterministic = 0
    if canary and canary.get("determinism") and canary["determinism"].get("runs", 0) >= 2:
        checked += 1
        deterministic += int(bool(canary["determinism"].get("deterministic")))
    for r in rows:
        d = r.get("determinism")
        if r.get("from_canary") and checked:
            continue  # the canary's repeats, already counted once above
        if d and d.get("runs", 0) >= 2:
            checked += 1
            deterministic += int(bool(d.get("deterministic")))
    n = len(rows)
    missing = sum(1 for r in rows if "MISSING_TELEMETRY" in r.get("reasons", []))
    polluted = sum(1 for r in rows if not r.get("valid"))
    metric = thresholds.get("quality_metric", "kl_mean")
    limit = float(thresholds.get("max_quality", math.inf))
    groups: dict[str, bool] = {}
    for r in rows:
        g = group_key(r)
        ok = bool(r.get("valid")) and (q := quality_value(r, metric)) is not None and q <= limit
        groups[g] = groups.get(g, False) or ok
    return {
        "determinism_rate": _rate(deterministic, checked),
        "missing_telemetry_rate": _rate(missing, n),
        "polluted_run_rate": _rate(polluted, n),
        "frontier_success_rate": _rate(sum(groups.values()), len(groups)),
        "rows": n,
        "groups": len(groups),
        "quality_metric": metric,
        "max_quality": limit,
    }
