"""Per-layer sensitivity across cells: the heatmap data, the most sensitive layers, and cross-size convergence.

Why a module of its own: these views need the per-layer raw scores, which live in each cell's `manifest.json`
(not in the summary rows), and they are numerics (ranks, correlations) worth testing without a plot. Pure: numpy
only, no torch, no matplotlib.

A layer's sensitivity in a cell is AutoQuantize's raw score of the cell's format for that layer group (the first
non-`none` format, as in the cell's own layer-sensitivity report). Raw scores of different formats differ by
orders of magnitude (int4 scores dwarf int8 ones), so cross-cell comparisons use the *relative* sensitivity:
score / the cell's largest score (1 = the cell's most sensitive layer).
"""

from __future__ import annotations

import itertools
import math
from typing import Any

import numpy as np

NONE_LABEL = "none"
TOP_LAYERS = 30  # rows of the heatmap
TOP_TABLE = 15  # rows of the report's "most sensitive layers" table
TOP_K = 10  # "in the cell's top 10" column


def cell_scores(manifest: dict[str, Any]) -> dict[str, float]:
    """{layer group name: raw score of the cell's format}; entries without a finite score are skipped."""
    out: dict[str, float] = {}
    for g in manifest.get("layers") or []:
        if not isinstance(g, dict):
            continue
        formats, scores = g.get("formats") or [], g.get("raw_scores") or []
        if not formats or len(scores) != len(formats):
            continue
        idx = [i for i, f in enumerate(formats) if f != NONE_LABEL] or list(range(len(formats)))
        v = scores[idx[0]]
        if isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v):
            out[str(g.get("name"))] = float(v)
    return out


def relative(scores: dict[str, float]) -> dict[str, float]:
    top = max((v for v in scores.values()), default=0.0)
    return {k: (v / top if top > 0 else 0.0) for k, v in scores.items()}


def most_sensitive(cells: dict[str, dict[str, float]], top: int = TOP_TABLE) -> list[dict[str, Any]]:
    """Layers ranked by mean relative sensitivity over the cells that score them (ties: name).

    Each entry: layer, mean_relative, cells (how many cells score it), in_top_k (in how many of those it is among
    the cell's TOP_K highest scores), max_score and max_cell (the largest raw score and its cell).
    """
    rel = {c: relative(s) for c, s in cells.items()}
    topk = {c: {k for k, _ in sorted(s.items(), key=lambda kv: (-kv[1], kv[0]))[:TOP_K]} for c, s in cells.items()}
    layers = sorted({name for s in cells.values() for name in s})
    out = []
    for name in layers:
        have = [c for c in cells if name in cells[c]]
        max_cell = max(have, key=lambda c: (cells[c][name], c))
        out.append(
            {
                "layer": name,
                "mean_relative": round(sum(rel[c][name] for c in have) / len(have), 9),
                "cells": len(have),
                "in_top_k": sum(1 for c in have if name in topk[c]),
                "max_score": cells[max_cell][name],
                "max_cell": max_cell,
            }
        )
    out.sort(key=lambda e: (-e["mean_relative"], e["layer"]))
    return out[:top]


def heatmap_data(cells: dict[str, dict[str, float]], top: int = TOP_LAYERS) -> dict[str, Any]:
    """`{"layers": [...], "cells": [...], "relative": [[...] per layer], "raw": [[...]]}`; None where a cell does
    not score a layer. Layers: the `top` most sensitive (`most_sensitive` order); cells: in the given order."""
    names = [e["layer"] for e in most_sensitive(cells, top)]
    rel = {c: relative(s) for c, s in cells.items()}
    order = list(cells)
    return {
        "layers": names,
        "cells": order,
        "relative": [[rel[c].get(n) for c in order] for n in names],
        "raw": [[cells[c].get(n) for c in order] for n in names],
    }


def _ranks(x: np.ndarray) -> np.ndarray:
    """Ranks 1..n with ties sharing their average rank."""
    order = np.argsort(x, kind="mergesort")
    ranks = np.empty(len(x), dtype=float)
    sx = x[order]
    i = 0
    while i < len(x):
        j = i
        while j + 1 < len(x) and sx[j + 1] == sx[i]:
            j += 1
        ranks[order[i : j + 1]] = (i + j) / 2.0 + 1.0
        i = j + 1
    return ranks


def spearman(a: list[float], b: list[float]) -> float | None:
    """Spearman rank correlation (Pearson correlation of average ranks); None with < 3 pairs or a constant side."""
    if len(a) != len(b) or len(a) < 3:
        return None
    ra, rb = _ranks(np.asarray(a, dtype=float)), _ranks(np.asarray(b, dtype=float))
    ra, rb = ra - ra.mean(), rb - rb.mean()
    den = math.sqrt(float((ra * ra).sum()) * float((rb * rb).sum()))
    if den == 0.0:
        return None
    return round(float((ra * rb).sum()) / den, 9)


def convergence(points: list[dict[str, Any]], cells: dict[str, dict[str, float]]) -> list[dict[str, Any]]:
    """Spearman correlation of per-layer raw scores between consecutive dataset sizes of the same
    (model, pair, granularity, budget), over the layers both cells score.

    `points` are the shown rows (frontier points, in row order); only those whose scores are in `cells` take part.
    Sizes are ordered by sample count (then name). Returns one series per (model, pair, granularity, budget) with
    at least two sizes: `{"series", "model", "pair", "granularity", "effective_bits_target", "points": [{"from",
    "to", "from_samples", "to_samples", "rho", "layers"}]}`.
    """
    series: dict[tuple[Any, ...], list[dict[str, Any]]] = {}
    for p in points:
        if p["key"] in cells:
            k = (p["model"], p["pair"], p["granularity"], p["effective_bits_target"])
            series.setdefault(k, []).append(p)
    out = []
    for (model, pair, gran, budget), members in series.items():
        members = sorted(members, key=lambda p: (p["samples"] if p["samples"] is not None else math.inf,
                                                 str(p["dataset_size"])))
        if len(members) < 2:
            continue
        pts = []
        for a, b in itertools.pairwise(members):
            sa, sb = cells[a["key"]], cells[b["key"]]
            common = sorted(set(sa) & set(sb))
            pts.append(
                {
                    "from": a["dataset_size"],
                    "to": b["dataset_size"],
                    "from_samples": a["samples"],
                    "to_samples": b["samples"],
                    "from_key": a["key"],
                    "to_key": b["key"],
                    "rho": spearman([sa[n] for n in common], [sb[n] for n in common]),
                    "layers": len(common),
                }
            )
        name = f"{pair}/{gran}" + (f"@{budget:g}" if len({k[3] for k in series}) > 1 and budget is not None else "")
        if len({k[0] for k in series}) > 1:
            name = f"{model}: {name}"
        out.append({"series": name, "model": model, "pair": pair, "granularity": gran,
                    "effective_bits_target": budget, "points": pts})
    return out
