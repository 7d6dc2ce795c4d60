"""Summaries of the per-matrix rows: by layer, by block of 4 layers, globally; deltas between two formats.

Only ``role == linear`` matrices (the ones a catalogue config quantizes) enter the summaries; embeddings,
lm_head and routers keep their rows in `matrix_stats`. Each summary row is one group:

- scope ``layer``: (layer, proj) for every projection, plus (layer, ``*``) over all projections and experts;
- scope ``block4``: the same with block4 = layer // 4;
- scope ``global``: (proj) and (``*``), over every linear matrix, including those with no layer index.

Matrices without a layer index enter only the global scope. Per metric the aggregates are
``count`` (non-NaN values), ``mean``, ``std`` (population), ``min``, ``median``, ``p90``, ``p99``, ``max``
(percentiles exact, linear interpolation), as columns ``<metric>__<agg>``; ``n`` is the number of matrices in
the group. Quantization summaries are per format too, over the rows without an error; ``n_errors`` counts the
others.

A delta ``A - B`` compares two formats matrix by matrix: ``delta_rel_fro`` = rel_fro(A) - rel_fro(B),
``ratio_rel_fro`` = rel_fro(A) / rel_fro(B), and the same for rel_max; a matrix where either format failed gets
a row with the error and no numbers.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from .naming import BLOCK_LAYERS
from .stats import STAT_COLUMNS, percentiles

AGGREGATES = ("count", "mean", "std", "min", "median", "p90", "p99", "max")
WEIGHT_METRICS = tuple(c for c in STAT_COLUMNS if c != "nonfinite")
QUANT_METRICS = ("rel_fro", "rel_max", "sqnr_db")
DELTA_METRICS = ("delta_rel_fro", "ratio_rel_fro", "delta_rel_max")
ALL = "*"

IDENTITY = ("file", "matrix", "tensor", "role", "proj", "layer", "block4", "expert", "expert_kind", "rows", "cols")


def summary_columns(metrics: Sequence[str], extra_keys: Sequence[str] = (), extra: Sequence[str] = ()) -> list[str]:
    cols = ["scope", "layer", "block4", "proj", *extra_keys, "n", *extra]
    cols += [f"{m}__{a}" for m in metrics for a in AGGREGATES]
    return cols


def aggregate(values: Iterable[Any]) -> dict[str, float]:
    arr = np.array([v for v in values if isinstance(v, int | float) and not isinstance(v, bool)], dtype=np.float64)
    arr = arr[~np.isnan(arr)]
    out: dict[str, float] = {"count": int(arr.size)}
    if arr.size == 0:
        out.update({a: math.nan for a in AGGREGATES[1:]})
        return out
    med, p90, p99 = percentiles(arr, (50.0, 90.0, 99.0))
    with np.errstate(invalid="ignore", over="ignore"):  # an infinite sqnr_db (exact format) gives inf / nan
        mean, std = float(arr.mean()), float(arr.std())
    out.update(
        mean=mean,
        std=std,
        min=float(arr.min()),
        median=med,
        p90=p90,
        p99=p99,
        max=float(arr.max()),
    )
    return out


def _order(values: Iterable[str]) -> dict[str, int]:
    seen: dict[str, int] = {}
    for v in values:
        seen.setdefault(v, len(seen))
    return seen


def _groups(
    rows: Sequence[dict[str, Any]], extra_keys: Sequence[str]
) -> list[tuple[dict[str, Any], list[dict[str, Any]]]]:
    """(key fields, member rows) for every layer / block4 / global group, in a stable order."""
    proj_order = _order(r["proj"] for r in rows)
    extra_orders = {k: _order(str(r[k]) for r in rows) for k in extra_keys}
    buckets: dict[tuple[Any, ...], list[dict[str, Any]]] = {}
    for r in rows:
        extra = tuple(r[k] for k in extra_keys)
        for proj in (r["proj"], ALL):
            if r.get("layer") is not None:
                buckets.setdefault(("layer", r["layer"], proj, *extra), []).append(r)
                buckets.setdefault(("block4", r["layer"] // BLOCK_LAYERS, proj, *extra), []).append(r)
            buckets.setdefault(("global", None, proj, *extra), []).append(r)

    scope_rank = {"layer": 0, "block4": 1, "global": 2}

    def sort_key(key: tuple[Any, ...]) -> tuple[Any, ...]:
        scope, idx, proj, *extra = key
        return (
            scope_rank[scope],
            -1 if idx is None else idx,
            *(extra_orders[k][str(v)] for k, v in zip(extra_keys, extra, strict=True)),
            len(proj_order) if proj == ALL else proj_order[proj],
        )

    out = []
    for key in sorted(buckets, key=sort_key):
        scope, idx, proj, *extra = key
        fields = {
            "scope": scope,
            "layer": idx if scope == "layer" else None,
            "block4": idx if scope == "block4" else None,
            "proj": proj,
        }
        fields.update(dict(zip(extra_keys, extra, strict=True)))
        out.append((fields, buckets[key]))
    return out


def summarize(
    rows: Sequence[dict[str, Any]], metrics: Sequence[str], extra_keys: Sequence[str] = ()
) -> list[dict[str, Any]]:
    out = []
    for fields, members in _groups(rows, extra_keys):
        row = {**fields, "n": len(members)}
        for m in metrics:
            for agg, v in aggregate(r.get(m) for r in members).items():
                row[f"{m}__{agg}"] = v
        out.append(row)
    return out


def linear_only(rows: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    return [r for r in rows if r.get("role") == "linear"]


def weight_summary(stats_rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    return summarize(linear_only(stats_rows), WEIGHT_METRICS)


def quant_summary(quant_rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per group and format over the successful rows; `n_errors` counts the error rows (a group where every
    matrix failed keeps its row, with n = 0 and NaN aggregates)."""
    out = []
    for fields, members in _groups(linear_only(quant_rows), ("format",)):
        ok = [r for r in members if not r.get("error")]
        row = {**fields, "n": len(ok), "n_errors": len(members) - len(ok)}
        for m in QUANT_METRICS:
            for agg, v in aggregate(r.get(m) for r in ok).items():
                row[f"{m}__{agg}"] = v
        out.append(row)
    return out


def default_deltas(formats: Sequence[str]) -> list[tuple[str, str]]:
    """Every pair of formats that share a quant pair and differ in granularity, A listed before B."""
    out = []
    for i, a in enumerate(formats):
        for b in formats[i + 1 :]:
            if a.split("/")[0] == b.split("/")[0]:
                out.append((a, b))
    return out


def delta_name(a: str, b: str) -> str:
    return f"{a} - {b}"


def delta_rows(quant_rows: Sequence[dict[str, Any]], deltas: Sequence[tuple[str, str]]) -> list[dict[str, Any]]:
    by_key: dict[tuple[str, str], dict[str, Any]] = {(r["matrix"], r["format"]): r for r in quant_rows}
    matrices: list[dict[str, Any]] = []
    seen: set[str] = set()
    for r in quant_rows:
        if r["matrix"] not in seen:
            seen.add(r["matrix"])
            matrices.append(r)
    out = []
    for a, b in deltas:
        for m in matrices:
            ra, rb = by_key.get((m["matrix"], a)), by_key.get((m["matrix"], b))
            row: dict[str, Any] = {k: m.get(k) for k in IDENTITY}
            row.update(delta=delta_name(a, b), format_a=a, format_b=b)
            errs = []
            for label, r in (("A", ra), ("B", rb)):
                if r is None:
                    errs.append(f"{label}: no row")
                elif r.get("error"):
                    errs.append(f"{label}: {r['error']}")
            ok = not errs
            for metric in ("rel_fro", "rel_max"):
                va = ra.get(metric) if ok and ra else None
                vb = rb.get(metric) if ok and rb else None
                row[f"a_{metric}"] = va
                row[f"b_{metric}"] = vb
                row[f"delta_{metric}"] = (va - vb) if ok else None
            row["ratio_rel_fro"] = (
                (row["a_rel_fro"] / row["b_rel_fro"] if row["b_rel_fro"] else math.nan) if ok else None
            )
            row["error"] = "; ".join(errs) if errs else None
            out.append(row)
    return out


DELTA_COLUMNS = (
    *IDENTITY,
    "delta",
    "format_a",
    "format_b",
    "a_rel_fro",
    "b_rel_fro",
    "delta_rel_fro",
    "ratio_rel_fro",
    "a_rel_max",
    "b_rel_max",
    "delta_rel_max",
    "error",
)


def delta_summary(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    ok = [r for r in linear_only(rows) if not r.get("error")]
    return summarize(ok, DELTA_METRICS, ("delta",))


def hostile_layers(
    quant_summary_rows: Sequence[dict[str, Any]], formats: Sequence[str], top: int = 10
) -> list[dict[str, Any]]:
    """Layers ranked by hostility = mean over formats of (layer median rel_fro / global median rel_fro).

    The ratio makes formats of very different precision count equally; a layer at 1.0 is typical, at 2.0 its
    typical matrix loses twice the model-wide typical error. Formats with no successful rows are left out.
    """
    glob = {
        r["format"]: r["rel_fro__median"]
        for r in quant_summary_rows
        if r["scope"] == "global" and r["proj"] == ALL and r.get("rel_fro__count")
    }
    per_layer: dict[int, dict[str, float]] = {}
    worst_proj: dict[int, dict[str, tuple[float, str]]] = {}
    for r in quant_summary_rows:
        if r["scope"] != "layer" or not r.get("rel_fro__count") or r["format"] not in glob:
            continue
        if r["proj"] == ALL:
            per_layer.setdefault(r["layer"], {})[r["format"]] = r["rel_fro__median"]
        else:
            cur = worst_proj.setdefault(r["layer"], {}).get(r["format"])
            if cur is None or r["rel_fro__median"] > cur[0]:
                worst_proj[r["layer"]][r["format"]] = (r["rel_fro__median"], r["proj"])
    ranked = []
    for layer, meds in per_layer.items():
        ratios = [meds[f] / glob[f] for f in formats if f in meds and glob.get(f)]
        if not ratios:
            continue
        first = next((f for f in formats if f in meds), None)
        ranked.append(
            {
                "layer": layer,
                "hostility": float(np.mean(ratios)),
                "rel_fro_median": {f: meds.get(f) for f in formats},
                "worst_proj": (worst_proj.get(layer, {}).get(first) or (None, None))[1] if first else None,
            }
        )
    ranked.sort(key=lambda r: (-r["hostility"], r["layer"]))
    for i, r in enumerate(ranked, 1):
        r["rank"] = i
    return ranked[:top]
