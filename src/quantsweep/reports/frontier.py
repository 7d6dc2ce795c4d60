"""Per-group quality-vs-bits frontier and the recommendations drawn from it (pure; docs/reports.md has the rules).

Why a module of its own: the frontier is a *view* of the rows (it depends on `--include-invalid`), while the
KPIs in `quantsweep.kpis` are not. Keeping them apart makes it impossible for a report flag to change a KPI.

Per group (model x dataset size x granularity, `kpis.group_key`), over the shown rows that have finite achieved
bits and a finite quality value ("rankable"):
- the Pareto frontier: rows no other row beats on both axes (fewer-or-equal bits and lower-or-equal quality
  value, one of them strictly);
- baseline: the highest-precision cell *on the frontier*, i.e. the best quality value (ties: fewer bits, then key).
  A cell with more bits but worse quality is dominated and never the baseline: "baseline" must name a cell worth
  its bits;
- minimum viable: the fewest bits among rows meeting the quality threshold (ties: better quality, then key);
- best value: the eligible row maximising `savings_share - quality_budget_share` (see `value_score`);
- the marginal cost of a frontier cell: how much quality it gives up per bit it saves against the next larger
  point of the frontier, the 16-bit reference (the unquantized model: 16 bits, KL 0, perplexity ratio 1) above
  the largest cell (`marginal_costs`).

Minimum viable and best value are recommendations, so only a row that can be exported takes them: a row the plan
flagged `exportable: false` (export_support.py) is never recommended; the group lists it under
`skipped_not_exportable` when it would otherwise have been the minimum viable cell (or ranked before it), and the
recommendation says why it was passed over. Rows without the flag (older summaries) count as exportable.
"""

from __future__ import annotations

import math

from typing import Any

from ..kpis import IDEAL_QUALITY, bits_value, group_key, quality_value

ROLES = ("baseline", "minimum_viable", "best_value")
REFERENCE_BITS = 16.0  # AutoQuantize's cost model counts an unquantized (NONE) layer at 16 bits
REFERENCE_KEY = "16-bit reference"
ROLE_LABELS = {"baseline": "baseline", "minimum_viable": "minimum viable", "best_value": "best value"}


def shown_rows(rows: list[dict[str, Any]], include_invalid: bool) -> list[dict[str, Any]]:
    """The rows a view shows: valid rows only, or every row with `include_invalid`."""
    return [r for r in rows if include_invalid or r.get("valid")]


def pareto_keys(points: list[tuple[str, float, float]]) -> set[str]:
    """Keys of the non-dominated (key, bits, quality) points; both axes are minimised. Equal points are all kept."""
    out = set()
    for k, b, q in points:
        dominated = any(b2 <= b and q2 <= q and (b2 < b or q2 < q) for _, b2, q2 in points)
        if not dominated:
            out.add(k)
    return out


def value_score(bits: float, quality: float, base_bits: float, mv_bits: float, metric: str, limit: float) -> float:
    """Best-value score of an eligible cell: the share of the group's available bit savings it realises minus the
    share of the quality budget it uses.

    savings share = (baseline bits - bits) / (baseline bits - minimum-viable bits), 0 when no bits can be saved;
    budget share  = (quality - ideal) / (threshold - ideal), clipped at 0, with ideal 0 for KL, 1 for ppl ratio.
    The budget share lies in [0, 1] for eligible cells, the savings share in [0, 1] for eligible frontier cells
    (a dominated cell with more bits than the baseline has a negative one), so the minimum-viable cell scores >= 0
    and the baseline <= 0.
    """
    span = base_bits - mv_bits
    saved = (base_bits - bits) / span if span > 0 else 0.0
    ideal = IDEAL_QUALITY.get(metric, 0.0)
    used = max(0.0, quality - ideal) / (limit - ideal) if limit > ideal else 0.0
    return round(saved - used, 9)


def _point(r: dict[str, Any], metric: str, limit: float, bits: str = "achieved") -> dict[str, Any]:
    q = quality_value(r, metric)
    b = bits_value(r) if bits == "achieved" else _storage(r)
    return {
        "key": r["key"],
        "cell_id": r.get("cell_id"),
        "group": group_key(r),
        "model": r.get("model"),
        "pair": r.get("pair"),
        "weight": r.get("weight"),
        "activation": r.get("activation"),
        "granularity": r.get("granularity"),
        "dataset_size": r.get("dataset_size"),
        "samples": r.get("samples"),
        "kv_cache": r.get("kv_cache") or "none",
        "effective_bits_target": r.get("effective_bits_target"),
        "achieved_bits": b,
        "quality": q,
        "kl_mean": quality_value(r, "kl_mean"),
        "ppl_ratio": quality_value(r, "ppl_ratio"),
        "top1_agreement": quality_value(r, "top1_agreement"),
        "status": r.get("status"),
        "valid": bool(r.get("valid")),
        "reasons": list(r.get("reasons", [])),
        "meets_quality": q is not None and b is not None and q <= limit,
        "exportable": r.get("exportable"),
        "export_reason": r.get("export_reason"),
        "on_frontier": False,
        "roles": [],
        "frontier_role": "",
        "quality_per_bit_saved": None,
        "value_score": None,
        "marginal_cost_per_bit": None,
        "marginal_vs": None,
        "storage_bits": _storage(r),
    }


def _pick(cands: list[dict[str, Any]], key: Any) -> dict[str, Any] | None:
    return min(cands, key=key) if cands else None


def _storage(r: dict[str, Any]) -> float | None:
    v = r.get("storage_bits")
    return float(v) if isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v) else None


def build_frontier(
    rows: list[dict[str, Any]], metric: str, limit: float, include_invalid: bool = False, bits: str = "achieved"
) -> dict[str, Any]:
    """`{"metric", "max_quality", "include_invalid", "points": [one per shown row, in row order], "groups": [...]}`.

    Groups appear in the order of their first shown row (the plan's order in a summary written by `run`).
    """
    points = [_point(r, metric, limit, bits) for r in shown_rows(rows, include_invalid)]
    by_group: dict[str, list[dict[str, Any]]] = {}
    for p in points:
        by_group.setdefault(p["group"], []).append(p)
    groups = []
    for g, members in by_group.items():
        rankable = [p for p in members if p["achieved_bits"] is not None and p["quality"] is not None]
        front = pareto_keys([(p["key"], p["achieved_bits"], p["quality"]) for p in rankable])
        for p in rankable:
            p["on_frontier"] = p["key"] in front
        # the highest-precision cell worth its bits: the frontier's largest (= best quality, fewest bits for it)
        base = _pick([p for p in rankable if p["on_frontier"]],
                     lambda p: (-p["achieved_bits"], p["quality"], p["key"]))
        mv_order = lambda p: (p["achieved_bits"], p["quality"], p["key"])  # noqa: E731
        eligible = [p for p in rankable if p["meets_quality"] and p["exportable"] is not False]
        mv = _pick(eligible, mv_order)
        skipped = sorted((p for p in rankable if p["meets_quality"] and p["exportable"] is False
                          and (mv is None or mv_order(p) < mv_order(mv))), key=mv_order)
        bv = None
        if base is not None and mv is not None:
            for p in eligible:
                p["value_score"] = value_score(
                    p["achieved_bits"], p["quality"], base["achieved_bits"], mv["achieved_bits"], metric, limit
                )
            bv = _pick(eligible, lambda p: (-p["value_score"], p["achieved_bits"], p["quality"], p["key"]))
        if base is not None:
            for p in rankable:
                saved = base["achieved_bits"] - p["achieved_bits"]
                if p is base:
                    p["quality_per_bit_saved"] = 0.0
                elif saved > 0:
                    p["quality_per_bit_saved"] = (p["quality"] - base["quality"]) / saved
        marginal_costs(rankable, metric)
        for role, p in (("baseline", base), ("minimum_viable", mv), ("best_value", bv)):
            if p is not None:
                p["roles"].append(role)
        for p in members:
            if p["roles"]:
                p["frontier_role"] = "+".join(p["roles"])
            elif p["on_frontier"]:
                p["frontier_role"] = "frontier"
            elif p["achieved_bits"] is not None and p["quality"] is not None:
                p["frontier_role"] = "dominated"
        first = members[0]
        groups.append(
            {
                "group": g,
                "model": first["model"],
                "dataset_size": first["dataset_size"],
                "samples": first["samples"],
                "granularity": first["granularity"],
                "kv_cache": first["kv_cache"],
                "cells": len(members),
                "rankable": len(rankable),
                "frontier": [p["key"] for p in sorted(rankable, key=lambda p: (p["achieved_bits"], p["quality"],
                                                                                p["key"])) if p["on_frontier"]],
                "baseline": base["key"] if base else None,
                "minimum_viable": mv["key"] if mv else None,
                "best_value": bv["key"] if bv else None,
                "reason": _reason(rankable, mv, metric, limit, bool(skipped)),
                "recommendation": _recommendation(base, mv, bv, metric, limit, rankable, bits, bool(skipped))
                + _skipped_text(skipped, metric),
                "skipped_not_exportable": [{"key": p["key"], "reason": p["export_reason"]} for p in skipped],
            }
        )
    return {"metric": metric, "max_quality": limit, "include_invalid": include_invalid, "bits": bits, "points": points,
            "groups": groups, "reference": reference_point()}


def reference_point() -> dict[str, Any]:
    """The unquantized model as a point of every group's plot and table: what every cell is measured against, so
    it costs 16 bits and loses nothing (KL 0, perplexity ratio 1, top-1 agreement 1) by definition."""
    return {"key": REFERENCE_KEY, "bits": REFERENCE_BITS, "kl_mean": 0.0, "ppl_ratio": 1.0, "top1_agreement": 1.0}


def reference_quality(metric: str) -> float:
    return IDEAL_QUALITY.get(metric, 0.0)


def marginal_costs(rankable: list[dict[str, Any]], metric: str) -> None:
    """Set `marginal_cost_per_bit` and `marginal_vs` on the group's frontier cells (others keep None).

    Walking the frontier from the most bits down, each cell is compared with the next larger frontier point (the
    16-bit reference above the largest cell): (its quality - that point's quality) / (bits saved). A reader sees
    where savings become expensive: the cost per bit jumps. Cells at the same bits as the next point (identical
    points) get no value, like cells at or above 16 bits."""
    front = sorted((p for p in rankable if p["on_frontier"]), key=lambda p: (-p["achieved_bits"], p["quality"],
                                                                               p["key"]))
    upper: tuple[str, float, float] = (REFERENCE_KEY, REFERENCE_BITS, reference_quality(metric))
    for p in front:
        key, bits, quality = upper
        saved = bits - p["achieved_bits"]
        if saved > 0:
            p["marginal_cost_per_bit"] = (p["quality"] - quality) / saved
            p["marginal_vs"] = key
            upper = (p["key"], p["achieved_bits"], p["quality"])


def _reason(rankable: list[dict[str, Any]], mv: dict[str, Any] | None, metric: str, limit: float,
            skipped: bool = False) -> str:
    exportable = " exportable" if skipped else ""
    if not rankable:
        return "no shown cell has measured bits and quality"
    if mv is None:
        return f"no{exportable} shown cell met {metric} <= {limit:g}"
    if skipped:
        return f"fewest achieved bits among exportable cells with {metric} <= {limit:g}"
    return f"fewest achieved bits with {metric} <= {limit:g}"


def _desc(p: dict[str, Any], metric: str) -> str:
    return f"{p['key']} ({p['achieved_bits']:.3f} bits, {metric} {p['quality']:.4g})"


def _skipped_text(skipped: list[dict[str, Any]], metric: str) -> str:
    """Why better-ranked cells were passed over: they meet quality with fewer bits, but cannot be exported."""
    if not skipped:
        return ""
    first = skipped[0]
    more = f" (and {len(skipped) - 1} more)" if len(skipped) > 1 else ""
    return (f" Not recommended although it meets quality: {_desc(first, metric)}{more}: not exportable "
            f"({first['export_reason'] or 'no reason recorded'}).")


def _recommendation(
    base: dict[str, Any] | None, mv: dict[str, Any] | None, bv: dict[str, Any] | None, metric: str, limit: float,
    rankable: list[dict[str, Any]], bits: str, skipped: bool = False,
) -> str:
    if base is None:
        return "No recommendation: no shown cell was measured."
    if mv is None:
        candidates = [p for p in rankable if p.get("exportable") is not False] or rankable
        return ("No exportable cell met the limit. " if skipped else "") + what_would_pass(candidates, metric, limit,
                                                                                       bits)["short"]
    assert bv is not None
    if bv is mv:
        return f"Use {_desc(mv, metric)}: the smallest cell that meets quality, and the best value."
    return f"Smallest that meets quality: {_desc(mv, metric)}. Best value: {_desc(bv, metric)}."


def closest_cell(rankable: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The cell that came closest to the quality limit: the best quality value (ties: fewer bits, then key)."""
    return _pick(rankable, lambda p: (p["quality"], p["achieved_bits"], p["key"]))


def what_would_pass(rankable: list[dict[str, Any]], metric: str, limit: float, bits: str = "achieved"
                    ) -> dict[str, Any]:
    """When no cell meets the limit: the closest cell and what the frontier suggests would pass.

    The closest cell is the best-quality cell, so the frontier's next point above it is the 16-bit reference.
    The straight line between the two crosses the limit at `estimate` bits; the suggestion is the closest cell's
    format (pair and granularity) at that many bits rounded up to a quarter bit. Why a straight line: it needs no
    model of the curve, and since AutoQuantize protects the most sensitive layers first, each added bit usually
    buys less quality than the one before (a convex curve lies under its chord), so the estimate errs on the side
    of too many bits. The other way to pass is a looser limit: the closest cell's own value.

    Returns `{"closest", "estimate", "suggested_bits", "threshold", "text", "short"}` (`closest` None when nothing
    is rankable; `estimate` None when the limit is below what even the unquantized model scores; `short`: the
    same in one sentence, for a table cell)."""
    c = closest_cell(rankable)
    if c is None:
        text = "No recommendation: no shown cell was measured."
        return {"closest": None, "estimate": None, "suggested_bits": None, "threshold": None, "text": text,
                "short": text}
    ideal = reference_quality(metric)
    head = f"No cell met {metric} <= {limit:g}. Closest: {_desc(c, metric)}."
    relax = f"a limit of {metric} <= {c['quality']:.4g} (the closest cell's value)"
    if limit < ideal:
        text = (f"{head} Not even the unquantized model meets {metric} <= {limit:g} (it scores {ideal:g} by "
                f"definition): what would pass is {relax}.")
        return {"closest": c["key"], "estimate": None, "suggested_bits": None, "threshold": c["quality"],
                "text": text, "short": text}
    b1, q1 = c["achieved_bits"], c["quality"]
    estimate = b1 + (q1 - limit) / (q1 - ideal) * (REFERENCE_BITS - b1) if b1 < REFERENCE_BITS else REFERENCE_BITS
    suggested = min(REFERENCE_BITS, math.ceil(estimate * 4 - 1e-9) / 4)
    fmt = f"{c['pair']} with {c['granularity']} scales"
    if suggested >= REFERENCE_BITS:
        budget = short = "only keeping every layer at 16 bits (no quantization)"
    elif bits == "achieved":
        budget = f"{fmt} at a budget of {suggested:g} effective bits (autoquant.effective_bits: {suggested:g})"
        short = f"{c['pair']}/{c['granularity']} at a budget of about {suggested:g} bits"
    else:
        budget = f"{fmt} at about {suggested:g} bits per weight stored"
        short = f"{c['pair']}/{c['granularity']} at about {suggested:g} stored bits"
    text = (f"{head} What would pass: {budget}; the straight line from that cell to the 16-bit model crosses "
            f"{metric} {limit:g} at {estimate:.2f} bits, and since each added bit usually buys less quality than "
            f"the one before, fewer bits may do. Or {relax}.")
    return {"closest": c["key"], "estimate": round(estimate, 9), "suggested_bits": suggested,
            "threshold": c["quality"], "text": text,
            "short": f"No cell met {metric} <= {limit:g}; closest: {_desc(c, metric)}. Would pass: {short}, or a "
                     f"limit of {metric} <= {c['quality']:.4g}."}
