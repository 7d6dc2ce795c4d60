"""Whether a row can be trusted, and why not (the `valid` flag and its reasons). Pure.

Row-local reasons are decided when the cell finishes; DUPLICATE_RESULT needs every row, so the summary
recomputes it across rows: two cells whose *searches* differ (anything but the budget) but whose results are
bit-identical (same chosen recipe, same raw per-layer scores) are suspicious: usually an overlay that did nothing or a setting that never
reached ModelOpt (a seed system shipped "different" schemes that exported bit-identical weights).
"""

from __future__ import annotations

import math
from typing import Any

REASONS = (
    "ERROR", "OOM", "NONFINITE_SCORE", "CONSTRAINT_UNSATISFIED", "MISSING_TELEMETRY", "DUPLICATE_RESULT", "THERMAL",
)
# NVML clock-event reasons that pollute timings when the row does not name its own (execution/gpu_sampler.py)
DEFAULT_POLLUTING_THROTTLE = ("sw_thermal_slowdown", "hw_thermal_slowdown", "hw_power_brake_slowdown")
REQUIRED_PHASES = ("calibrate", "score", "search", "evaluate")
REQUIRED_TELEMETRY = ("wall_s", "peak_host_rss_mb", "tokens_processed")


def _finite(x: Any) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool) and math.isfinite(x)


def missing_telemetry(telemetry: dict[str, Any] | None) -> list[str]:
    """Names of required telemetry fields that are absent or non-finite."""
    if not isinstance(telemetry, dict):
        return ["telemetry"]
    missing = [k for k in REQUIRED_TELEMETRY if not _finite(telemetry.get(k))]
    phases = telemetry.get("phases") or {}
    missing += [f"phases.{p}" for p in REQUIRED_PHASES if not _finite(phases.get(p))]
    if str(telemetry.get("device", "")).startswith("cuda") and not _finite(telemetry.get("peak_device_mb")):
        missing.append("peak_device_mb")
    return missing


def thermal_pollution(telemetry: dict[str, Any] | None) -> list[str]:
    """Why the row's timings are thermally polluted (empty if they are not): a GPU temperature at or above the
    threshold recorded with it, or a polluting throttle reason seen during the cell. Judged from the row alone,
    with the thresholds the row carries (`telemetry.gpu`), so a summary read back is judged as it was written."""
    gpu = telemetry.get("gpu") if isinstance(telemetry, dict) else None
    if not isinstance(gpu, dict) or gpu.get("available") is not True:
        return []
    why = []
    temp, limit = gpu.get("temperature_c_max"), gpu.get("thermal_threshold_c")
    if _finite(temp) and _finite(limit) and temp >= limit:
        why.append(f"temperature {temp:g} C >= {limit:g} C")
    polluting = gpu.get("polluting_throttle_reasons")
    if not isinstance(polluting, list):
        polluting = list(DEFAULT_POLLUTING_THROTTLE)
    seen = gpu.get("throttle_reasons_seen") if isinstance(gpu.get("throttle_reasons_seen"), list) else []
    hits = [r for r in seen if r in polluting]
    if hits:
        why.append("throttled: " + ", ".join(hits))
    return why


def row_reasons(row: dict[str, Any]) -> list[str]:
    """Reasons decided by the row alone."""
    if row.get("status") != "ok":
        return ["OOM" if row.get("error_type") == "OOM" else "ERROR"]
    reasons = []
    scores_ok = _finite(row.get("total_score")) and row.get("scores_finite", False)
    quality = row.get("quality") or {}
    if not scores_ok or not all(_finite(quality.get(k)) for k in ("kl_mean", "ppl_quant", "ppl_ratio")):
        reasons.append("NONFINITE_SCORE")
    if row.get("satisfied") is not True:
        reasons.append("CONSTRAINT_UNSATISFIED")
    if missing_telemetry(row.get("telemetry")):
        reasons.append("MISSING_TELEMETRY")
    if thermal_pollution(row.get("telemetry")):
        reasons.append("THERMAL")
    return reasons


def _search_key(row: dict[str, Any]) -> str:
    """What the scores depend on. Two budgets of the same search may legitimately pick the same recipe, so the
    budget is left out (`search_hash`); older rows without it fall back to `config_hash`."""
    return str(row.get("search_hash") or row.get("config_hash") or row["cell_id"])


def finalize_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Copies of `rows` with cross-row reasons added and `valid` recomputed."""
    by_fp: dict[str, set[str]] = {}
    for r in rows:
        if r.get("status") == "ok" and r.get("result_fingerprint"):
            by_fp.setdefault(r["result_fingerprint"], set()).add(_search_key(r))
    out = []
    for r in rows:
        r = dict(r)
        reasons = [x for x in r.get("reasons", []) if x != "DUPLICATE_RESULT"]
        fp = r.get("result_fingerprint")
        if r.get("status") == "ok" and fp and len(by_fp.get(fp, ())) > 1:
            reasons.append("DUPLICATE_RESULT")
        r["reasons"] = reasons
        r["valid"] = not reasons
        out.append(r)
    return out
