"""Spearman's rank correlation with its sample size, the one definition every trust measure uses.

Why a module of its own: the cell-level and layer-level fidelity checks and their tests must rank ties the same
way (average ranks, as scipy.stats.spearmanr does) and must agree on when a correlation is not computable: fewer
than 3 pairs (two points are always perfectly ranked, so a "1.0" from them says nothing), or one side constant
(the correlation is undefined, not 0). Pure Python: the reports import it without numpy.
"""

from __future__ import annotations

import math
from typing import Any

MIN_PAIRS = 3


def average_ranks(values: list[float]) -> list[float]:
    """1-based ranks, tied values sharing the mean of the ranks they span."""
    order = sorted(range(len(values)), key=lambda i: values[i])
    ranks = [0.0] * len(values)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
            j += 1
        mean_rank = (i + j) / 2 + 1
        for k in range(i, j + 1):
            ranks[order[k]] = mean_rank
        i = j + 1
    return ranks


def _pearson(x: list[float], y: list[float]) -> float | None:
    n = len(x)
    mx, my = sum(x) / n, sum(y) / n
    sxy = sum((a - mx) * (b - my) for a, b in zip(x, y, strict=True))
    sxx = sum((a - mx) ** 2 for a in x)
    syy = sum((b - my) ** 2 for b in y)
    if sxx == 0 or syy == 0:
        return None
    return sxy / math.sqrt(sxx * syy)


def spearman(x: list[float], y: list[float]) -> dict[str, Any]:
    """`{"rho": float | None, "n": int, "reason": str | None}`; rho is None (with the reason) when fewer than
    MIN_PAIRS finite pairs remain or one side has a single value. Pairs with a non-finite member are dropped."""
    pairs = [(float(a), float(b)) for a, b in zip(x, y, strict=True) if math.isfinite(a) and math.isfinite(b)]
    n = len(pairs)
    if n < MIN_PAIRS:
        return {"rho": None, "n": n, "reason": f"not computable: {n} pair{'s' if n != 1 else ''} (needs {MIN_PAIRS})"}
    rho = _pearson(average_ranks([a for a, _ in pairs]), average_ranks([b for _, b in pairs]))
    if rho is None:
        return {"rho": None, "n": n, "reason": "not computable: one side takes a single value"}
    return {"rho": round(max(-1.0, min(1.0, rho)), 12), "n": n, "reason": None}
