"""`quantsweep thermal-profile`: does the machine drift over repeated sweeps? (pure: no torch)

Why a module of its own: one sweep says whether a row was thermally polluted (THERMAL), not whether the GPU is
heating up from one sweep to the next. Given the summaries of the same matrix run several times on the same
machine (in the order they ran), this follows every repeated cell: its peak temperature and minimum SM clock per
run, whether they drift monotonically (`monotonic_window` consecutive rises of the temperature, or falls of the
clock), how many of its rows were thermally polluted (THERMAL, or a peak at or above `polluted_threshold_c`),
and recommends a cool-down between cells (down to `cooldown_target_c`) where the machine drifts or pollutes.

The rules, exactly (docs/hardware.md):
- a cell is *repeated* when its `cell_id` is in at least two summaries; other cells are only counted;
- trend of a series (the measured values, nulls skipped): `delta` = last - first, `drift` = "rising" /
  "falling" when it holds `monotonic_window` consecutive strict rises / falls, "none" otherwise, "unknown" with
  fewer than two measured values;
- a row is polluted when its reasons hold THERMAL or its `temperature_c_max` >= `polluted_threshold_c`;
- recommendation `cooldown` when the cell has a polluted row, a rising temperature or a falling SM clock;
  `none` when it has measured temperatures and none of that; `unknown` without GPU temperatures;
- overall: `cooldown` when any repeated cell says so, else `none` when any says `none`, else `unknown`.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from ..errors import InputError
from ..store.atomic import atomic_write_json, atomic_write_text, check_output_file
from .outputs import check_not_an_input, json_and_markdown
from .summary_io import load_summary

KIND = "quantsweep.thermal_profile"


def _num(x: Any) -> float | None:
    return float(x) if isinstance(x, int | float) and not isinstance(x, bool) and math.isfinite(x) else None


def trend(values: list[float | None], window: int) -> dict[str, Any]:
    """First, last, delta and monotonic drift of a series (nulls skipped)."""
    v = [x for x in values if x is not None]
    if len(v) < 2:
        return {"first": v[0] if v else None, "last": v[-1] if v else None, "delta": None, "drift": "unknown"}
    rises = falls = best_rise = best_fall = 0
    for a, b in zip(v, v[1:], strict=False):
        rises = rises + 1 if b > a else 0
        falls = falls + 1 if b < a else 0
        best_rise, best_fall = max(best_rise, rises), max(best_fall, falls)
    drift = "rising" if best_rise >= window else "falling" if best_fall >= window else "none"
    return {"first": v[0], "last": v[-1], "delta": round(v[-1] - v[0], 6), "drift": drift}


def _gpu(row: dict[str, Any]) -> dict[str, Any]:
    tel = row.get("telemetry") if isinstance(row.get("telemetry"), dict) else {}
    gpu = tel.get("gpu")
    return gpu if isinstance(gpu, dict) else {}


def _run(index: int, row: dict[str, Any], threshold: float) -> dict[str, Any]:
    gpu = _gpu(row)
    temp = _num(gpu.get("temperature_c_max"))
    why = []
    if "THERMAL" in (row.get("reasons") or []):
        why.append("THERMAL")
    if temp is not None and temp >= threshold:
        why.append(f"temperature {temp:g} C >= {threshold:g} C")
    return {
        "summary": index,
        "temperature_c_start": _num(gpu.get("temperature_c_start")),
        "temperature_c_max": temp,
        "sm_clock_mhz_min": _num(gpu.get("sm_clock_mhz_min")),
        "throttle_reasons_seen": list(gpu.get("throttle_reasons_seen") or []),
        "polluted": bool(why),
        "polluted_why": why,
    }


def _cell(key: str, cell_id: str, runs: list[dict[str, Any]], target: float, window: int) -> dict[str, Any]:
    temp = trend([r["temperature_c_max"] for r in runs], window)
    clock = trend([r["sm_clock_mhz_min"] for r in runs], window)
    polluted = sum(r["polluted"] for r in runs)
    starts = [r["temperature_c_start"] for r in runs if r["temperature_c_start"] is not None]
    why = []
    if polluted:
        why.append(f"{polluted} of {len(runs)} runs thermally polluted")
    if temp["drift"] == "rising":
        why.append(f"peak temperature rises {temp['first']:g} -> {temp['last']:g} C")
    if clock["drift"] == "falling":
        why.append(f"minimum SM clock falls {clock['first']:g} -> {clock['last']:g} MHz")
    measured = any(r["temperature_c_max"] is not None for r in runs)
    if why:
        rec = "cooldown"
        hottest = f" (it started at up to {max(starts):g} C)" if starts else ""
        text = f"cool the GPU down to <= {target:g} C before this cell{hottest}: " + "; ".join(why)
    elif measured:
        rec, text = "none", "no cool-down needed: no drift, no polluted run"
    else:
        rec, text = "unknown", "no GPU temperature recorded: cannot judge"
    return {
        "key": key,
        "cell_id": cell_id,
        "runs": runs,
        "temperature": temp,
        "sm_clock": clock,
        "polluted_rows": polluted,
        "started_above_target": sum(1 for s in starts if s > target),
        "recommendation": rec,
        "reason": text,
    }


def thermal_profile(
    summaries: list[str | Path],
    cooldown_target_c: float = 50.0,
    polluted_threshold_c: float = 85.0,
    monotonic_window: int = 2,
    out: str | Path | None = None,
) -> dict[str, Any]:
    """The thermal profile document of `summaries` (in the order they ran); written to `out` (JSON) and `out`'s
    `.md` twin when given."""
    if len(summaries) < 2:
        raise InputError("--summaries: give at least two summaries of repeated sweeps (comma-separated)")
    if monotonic_window < 1:
        raise InputError(f"--monotonic-window: expected an integer >= 1, got {monotonic_window}")
    for name, v in (("--cooldown-target-c", cooldown_target_c), ("--polluted-thermal-threshold-c", polluted_threshold_c)):
        if not math.isfinite(v) or not -273.15 < v < 1000:
            raise InputError(f"{name}: expected a temperature in (-273.15, 1000) C, got {v}")
    if cooldown_target_c >= polluted_threshold_c:
        raise InputError(f"--cooldown-target-c: {cooldown_target_c:g} C must be below --polluted-thermal-threshold-c "
                         f"{polluted_threshold_c:g} C")
    seen: dict[str, str] = {}
    for s in summaries:
        real = str(Path(s).resolve())
        if real in seen:
            raise InputError(f"--summaries: {s} is given twice (also as {seen[real]}); each run counts once")
        seen[real] = str(s)
    outs = json_and_markdown(out)
    for o in outs:
        check_output_file(o, "--out")
    check_not_an_input(outs, summaries, "--out")
    loaded = [load_summary(s) for s in summaries]
    order: list[str] = []
    by_cell: dict[str, tuple[str, list[dict[str, Any]]]] = {}
    for i, summary in enumerate(loaded):
        for row in summary.rows:
            cid = str(row["cell_id"])
            if cid not in by_cell:
                order.append(cid)
                by_cell[cid] = (str(row["key"]), [])
            by_cell[cid][1].append(_run(i, row, polluted_threshold_c))
    cells = [_cell(by_cell[c][0], c, by_cell[c][1], cooldown_target_c, monotonic_window)
             for c in order if len(by_cell[c][1]) >= 2]
    recs = [c["recommendation"] for c in cells]
    overall = "cooldown" if "cooldown" in recs else "none" if "none" in recs else "unknown"
    n_cool = recs.count("cooldown")
    text = {
        "cooldown": f"cool down to <= {cooldown_target_c:g} C between cells: {n_cool} of {len(cells)} repeated cells "
                    "drift or were thermally polluted",
        "none": f"no cool-down needed: {len(cells)} repeated cells, none drifts or was thermally polluted",
        "unknown": "no repeated cell has GPU temperatures: cannot judge (CPU runs, or NVML unavailable)",
    }[overall]
    doc = {
        "kind": KIND,
        "summaries": [{"path": str(s.path), "sha256": s.sha256, "rows": len(s.rows)} for s in loaded],
        "settings": {"cooldown_target_c": cooldown_target_c, "polluted_threshold_c": polluted_threshold_c,
                     "monotonic_window": monotonic_window},
        "cells": cells,
        "repeated_cells": len(cells),
        "unrepeated_cells": len(order) - len(cells),
        "polluted_rows": sum(c["polluted_rows"] for c in cells),
        "recommendation": overall,
        "reason": text,
    }
    if out is not None:
        atomic_write_json(outs[0], doc)
        atomic_write_text(outs[1], render_markdown(doc))
    return doc


def _series(runs: list[dict[str, Any]], key: str) -> str:
    return " -> ".join("-" if r[key] is None else f"{r[key]:g}" for r in runs)


def render_markdown(doc: dict[str, Any]) -> str:
    s = doc["settings"]
    lines = [
        "# Thermal profile",
        "",
        f"{len(doc['summaries'])} summaries, {doc['repeated_cells']} repeated cells "
        f"({doc['unrepeated_cells']} in one summary only); cool-down target {s['cooldown_target_c']:g} C, "
        f"polluted at >= {s['polluted_threshold_c']:g} C, monotonic window {s['monotonic_window']}.",
        "",
        f"**Recommendation: {doc['recommendation']}** - {doc['reason']}",
        "",
        "| cell | peak temperature (C) | drift | min SM clock (MHz) | drift | polluted | recommendation |",
        "|---|---|---|---|---|---|---|",
    ]
    for c in doc["cells"]:
        lines.append(
            f"| {c['key']} | {_series(c['runs'], 'temperature_c_max')} | {c['temperature']['drift']} | "
            f"{_series(c['runs'], 'sm_clock_mhz_min')} | {c['sm_clock']['drift']} | {c['polluted_rows']}/"
            f"{len(c['runs'])} | {c['recommendation']} |"
        )
    lines += ["", "Summaries, in the order they ran:", ""]
    lines += [f"{i}. `{x['path']}` ({x['rows']} rows)" for i, x in enumerate(doc["summaries"])]
    return "\n".join(lines) + "\n"
