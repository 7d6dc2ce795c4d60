"""Cell-level fidelity: does the proxy's predicted total score rank the cells as their measured KL does?

Every cell's recipe minimises AutoQuantize's total score (the sum of the chosen gradient-weighted output errors)
under its budget; that total is a prediction of how much the recipe hurts. Each cell's KL against the
unquantized model on held-out text is the measurement. Within a group of comparable cells (one model, one dataset
size — the total is a sum over score batches, so its scale depends on how many — one granularity: the frontier's
groups, `kpis.group_key`) the Spearman rank correlation between the two says whether the proxy orders recipes as
reality does. It costs nothing: both numbers are in every row.

Reported with its sample size; a group with fewer than 3 usable cells is "not computable", never a number
(trust/ranks.py). Usable: an `ok`, valid row with a finite total score and a finite measured metric. Pure.
"""

from __future__ import annotations

import math
from typing import Any

from ..kpis import group_key
from .ranks import spearman


def _finite(x: Any) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool) and math.isfinite(x)


def cell_fidelity(rows: list[dict[str, Any]], metric: str = "kl_mean") -> list[dict[str, Any]]:
    """Per group (in order of first appearance): `{"group", "n", "rho", "reason", "cells"}`."""
    groups: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault(group_key(r), [])
        q = (r.get("quality") or {}).get(metric)
        if r.get("status") == "ok" and r.get("valid") and _finite(r.get("total_score")) and _finite(q):
            groups[group_key(r)].append(r)
    out = []
    for key, members in groups.items():
        res = spearman([float(r["total_score"]) for r in members], [float(r["quality"][metric]) for r in members])
        out.append({"group": key, "metric": metric, "n": res["n"], "rho": res["rho"], "reason": res["reason"],
                    "cells": [r["key"] for r in members]})
    return out
