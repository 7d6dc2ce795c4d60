"""Stability KPIs of a sweep, computed from its rows and canary, and the gate that judges them (pure).

Why a module of its own: `quantsweep run` writes these KPIs into every summary, and `quantsweep kpi-report`
recomputes them from the rows of any summary (a stored KPI block is never trusted or copied), so both must share
one definition. docs/kpis.md has the formulas and says where they differ from the Orket seed.

Each KPI is `{"value", "numerator", "denominator"}`; `value` is None when the denominator is 0 (e.g. nothing was
repeated, so determinism is unknown: not 0 and not 1). `rows` must already carry their final `valid` flag
(`quantsweep.store.validity.finalize_rows`, or `quantsweep.reports.summary_io.normalize_rows`).
"""

from __future__ import annotations

import math
from typing import Any

from .store.validity import REASONS, missing_telemetry

KPI_NAMES = (
    "determinism_rate", "missing_telemetry_rate", "polluted_run_rate", "frontier_success_rate", "recipe_stability_rate"
)

# KPI -> (threshold field of `KpiThresholds`, "min" = the value must be >= it, "max" = <= it)
GATES: dict[str, tuple[str, str]] = {
    "determinism_rate": ("min_determinism_rate", "min"),
    "missing_telemetry_rate": ("max_missing_telemetry_rate", "max"),
    "polluted_run_rate": ("max_polluted_run_rate", "max"),
    "frontier_success_rate": ("min_frontier_success_rate", "min"),
    "recipe_stability_rate": ("min_recipe_stability_rate", "min"),
}
# KPIs a sweep may have no evidence for without being at fault (a stability bootstrap needs two score batches):
# missing, they are gated only once their threshold asks for something (> 0); else reported as SKIPPED
OPTIONAL_KPIS = ("recipe_stability_rate",)

# The value of each quality metric for a cell identical to the unquantized model.
IDEAL_QUALITY = {"kl_mean": 0.0, "ppl_ratio": 1.0}

GROUP_FIELDS = ("model", "dataset_size", "granularity")


def _finite(x: Any) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool) and math.isfinite(x)


def _rate(num: int, den: int) -> dict[str, Any]:
    return {"value": round(num / den, 6) if den else None, "numerator": num, "denominator": den}


def group_key(row: dict[str, Any]) -> str:
    """Frontier groups: one per (model, dataset size, granularity). Quant pairs and budgets compete inside a group,
    so several budgets trace one quality-vs-bits curve. A quantized KV cache (`kv_cache` other than none) is a group
    of its own: it saves memory the bits axis does not show, so it never competes with an unquantized cache."""
    key = "|".join(str(row.get(k)) for k in GROUP_FIELDS)
    kv = row.get("kv_cache")
    return key if kv in (None, "none") else f"{key}|kv-{kv}"


def quality_value(row: dict[str, Any], metric: str) -> float | None:
    v = (row.get("quality") or {}).get(metric)
    return float(v) if _finite(v) else None


def bits_value(row: dict[str, Any]) -> float | None:
    v = row.get("achieved_bits")
    return float(v) if _finite(v) else None


def meets_quality(row: dict[str, Any], metric: str, limit: float) -> bool:
    """The quality half of the frontier rule: a measured metric at or below the threshold, and measured bits."""
    q = quality_value(row, metric)
    return q is not None and q <= limit and bits_value(row) is not None


def repeats_agree(det: dict[str, Any]) -> bool:
    """Recomputed, not read from `deterministic`: identical chosen recipe and per-layer raw scores within the
    record's relative tolerance (0 when the record has none). A set in which a repeat failed cannot show
    agreement, so it counts as not deterministic."""
    if det.get("identical_recipe") is not True:
        return False
    diff, rtol = det.get("max_rel_score_diff"), det.get("rtol")
    rtol = float(rtol) if _finite(rtol) else 0.0
    return _finite(diff) and float(diff) <= rtol


def _repeated(det: Any) -> bool:
    return isinstance(det, dict) and _finite(det.get("runs")) and int(det["runs"]) >= 2


def row_missing_telemetry(row: dict[str, Any]) -> list[str]:
    """Required telemetry fields the row lacks or holds as non-finite.

    A finished row (`status == "ok"`) needs everything `validity.missing_telemetry` requires. An error row stopped
    part-way, so the phases after the failure never ran: it needs only the fields recorded for every attempt
    (wall time, peak host memory, tokens processed, and peak device memory on CUDA).
    """
    tel = row.get("telemetry")
    missing = missing_telemetry(tel)
    if row.get("status") != "ok":
        missing = [m for m in missing if not m.startswith("phases.")]
    return missing


def stability_verdict(row: dict[str, Any]) -> bool | None:
    """The row's recipe-stability verdict (`trust.stability.stable`), None when not computed or not computable."""
    st = (row.get("trust") or {}).get("stability") if isinstance(row.get("trust"), dict) else None
    if not isinstance(st, dict) or st.get("computable") is not True:
        return None
    v = st.get("stable")
    return v if isinstance(v, bool) else None


def compute_kpis(
    rows: list[dict[str, Any]], canary: dict[str, Any] | None, thresholds: dict[str, Any]
) -> dict[str, Any]:
    """The five stability KPIs with their counts. `thresholds` supplies `quality_metric` and `max_quality`
    (a `KpiThresholds` dump; missing keys take that model's defaults)."""
    from .schema import KpiThresholds

    defaults = KpiThresholds().model_dump(mode="json")
    metric = str(thresholds.get("quality_metric") or defaults["quality_metric"])
    limit = thresholds.get("max_quality")
    limit = float(limit) if _finite(limit) else float(defaults["max_quality"])

    # determinism: one check per set of repeated executions of a cell (the canary's, then each row's)
    checked = agreeing = executions = 0
    canary_det = (canary or {}).get("determinism")
    canary_counted = _repeated(canary_det)
    if canary_counted:
        checked, agreeing, executions = 1, int(repeats_agree(canary_det)), int(canary_det["runs"])
    for r in rows:
        det = r.get("determinism")
        if r.get("from_canary") and canary_counted:
            continue  # the canary's repeats, already counted once above
        if _repeated(det):
            checked += 1
            agreeing += int(repeats_agree(det))
            executions += int(det["runs"])

    n = len(rows)
    missing = sum(1 for r in rows if row_missing_telemetry(r))
    polluted = sum(1 for r in rows if not r.get("valid"))
    groups: dict[str, bool] = {}
    for r in rows:
        ok = bool(r.get("valid")) and meets_quality(r, metric, limit)  # strict: polluted rows never count
        groups[group_key(r)] = groups.get(group_key(r), False) or ok
    verdicts = [stability_verdict(r) for r in rows if r.get("status") == "ok"]
    judged = [v for v in verdicts if v is not None]
    return {
        "determinism_rate": _rate(agreeing, checked),
        "missing_telemetry_rate": _rate(missing, n),
        "polluted_run_rate": _rate(polluted, n),
        "frontier_success_rate": _rate(sum(groups.values()), len(groups)),
        "recipe_stability_rate": _rate(sum(judged), len(judged)),
        # why rows were polluted: rows per reason (a row may have several), THERMAL included
        "polluted_by_reason": {x: c for x in REASONS if (c := sum(1 for r in rows if x in (r.get("reasons") or [])))},
        "rows": n,
        "groups": len(groups),
        "repeated_executions": executions,
        "quality_metric": metric,
        "max_quality": limit,
    }


def evaluate_gate(
    kpis: dict[str, Any], thresholds: dict[str, Any], skip: tuple[str, ...] | list[str] = ()
) -> dict[str, Any]:
    """PASS only if every KPI not in `skip` is present (non-null) and within its threshold.

    A missing KPI fails (Orket treats it as the worst value; here the failure says "missing" instead of inventing
    a number). Returns `{"status": "PASS"|"FAIL", "checks": [...], "failures": [str, ...]}`.
    """
    checks, failures = [], []
    for name in KPI_NAMES:
        field, direction = GATES[name]
        limit = float(thresholds.get(field, 0.0) if name in OPTIONAL_KPIS else thresholds[field])
        kpi = kpis.get(name)
        value = kpi.get("value") if isinstance(kpi, dict) else None
        if name in skip or (name in OPTIONAL_KPIS and not _finite(value) and limit <= 0):
            status = "SKIPPED"
        elif not _finite(value):
            status = "FAIL"
            why = {"determinism_rate": "nothing was repeated",
                   "recipe_stability_rate": "no cell had a computable stability bootstrap"}.get(name, "no rows")
            failures.append(f"{name}: missing ({why}); required {'>=' if direction == 'min' else '<='} {limit:g}")
        elif (value < limit) if direction == "min" else (value > limit):
            status = "FAIL"
            op = "<" if direction == "min" else ">"
            failures.append(
                f"{name}: {value:g} ({kpi['numerator']}/{kpi['denominator']}) {op} {field} {limit:g}"
            )
        else:
            status = "PASS"
        checks.append({"kpi": name, "value": value, "threshold": field, "limit": limit, "op": direction,
                       "status": status})
    return {"status": "FAIL" if failures else "PASS", "checks": checks, "failures": failures}
