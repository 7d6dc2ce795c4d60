"""The report's "Can I trust this?" section, as blocks (reports/render.py renders them to markdown and HTML).

Why a module of its own: render.py arranges sections; this one gathers the trust evidence of a summary's rows
(cell-level fidelity per group, each cell's recipe stability and layer-level fidelity) and the plain-language
verdict per recommended cell (trust/verdict.py), from the rows alone. Pure.
"""

from __future__ import annotations

from typing import Any

from ..kpis import group_key
from ..trust.downstream import deltas
from ..trust.fidelity import cell_fidelity
from ..trust.verdict import cell_verdict, rho_words

Block = tuple[Any, ...]


def _f(v: Any, spec: str) -> str:
    return "—" if v is None else format(v, spec)


def trust_data(rows: list[dict[str, Any]], groups: list[dict[str, Any]], metric: str,
               baseline_lm_eval: dict[str, Any] | None = None) -> dict[str, Any]:
    """Everything the section shows, as data: fidelity per group, stability and layer fidelity per cell, a
    verdict per recommended cell (`groups`: the frontier view's groups), and the downstream (lm-eval) deltas of
    each evaluated cell against the summary's `baseline.lm_eval`."""
    fidelity = cell_fidelity(rows, metric)
    by_group = {f["group"]: f for f in fidelity}
    by_key = {r["key"]: r for r in rows}
    verdicts = []
    for g in groups:
        for role in ("minimum_viable", "best_value"):
            key = g.get(role)
            if key and key in by_key and all(v["cell"] != key for v in verdicts):
                row = by_key[key]
                verdicts.append({"cell": key, "role": role.replace("_", " "),
                                 **cell_verdict(row, by_group.get(group_key(row)))})
    return {"fidelity": fidelity, "verdicts": verdicts,
            "stability": [r for r in rows if isinstance((r.get("trust") or {}).get("stability"), dict)],
            "layer_fidelity": [r for r in rows if isinstance((r.get("trust") or {}).get("layer_fidelity"), dict)],
            "downstream": _downstream(rows, baseline_lm_eval)}


def _downstream(rows: list[dict[str, Any]], base: dict[str, Any] | None) -> dict[str, Any]:
    """Baseline scores and, per evaluated cell, its score and delta per (task, metric); cells whose evaluation
    failed keep their reason."""
    cells = []
    for r in rows:
        block = (r.get("trust") or {}).get("lm_eval")
        if isinstance(block, dict):
            cells.append({"cell": r["key"], "deltas": deltas(block, base),
                          "reason": None if block.get("computable") else block.get("reason")})
    return {"baseline": base, "cells": cells}


def trust_blocks(data: dict[str, Any], metric: str) -> list[Block]:
    out: list[Block] = [("h2", "Can I trust this?")]
    out.append(("p", "AutoQuantize picks each recipe from a proxy score; these checks say whether the proxy agrees "
                     f"with the measured {metric} and whether the recipe survives resampling of its score data "
                     "(docs/trust.md)."))
    if data["verdicts"]:
        out.append(("table", ["recommended cell", "role", "verdict", "why"],
                    [[v["cell"], v["role"], v["verdict"], "; ".join(v["reasons"])] for v in data["verdicts"]]))
    else:
        out.append(("p", "No recommended cell to judge."))
    out.append(("p", f"Cell-level fidelity: Spearman rank correlation of each cell's predicted total score with its "
                     f"measured {metric}, within each group (valid ok cells; fewer than 3 is not computable)."))
    out.append(("table", ["group", "cells", "Spearman ρ", "reading"],
                [[f["group"], str(f["n"]), _f(f["rho"], ".3f"), rho_words(f["rho"], f["n"])]
                 for f in data["fidelity"]]))
    if data["stability"]:
        rows = []
        for r in data["stability"]:
            st = r["trust"]["stability"]
            if st.get("computable") is True:
                ci = st.get("score_ci") or [None, None]
                rows.append([r["key"], str(st.get("batches")), str(st.get("solved")), _f(st.get("flip_share"), ".3f"),
                             f"{_f(st.get('jaccard_mean'), '.3f')} (min {_f(st.get('jaccard_min'), '.3f')})",
                             f"{_f(st.get('total_score'), '.3e')} [{_f(ci[0], '.3e')}, {_f(ci[1], '.3e')}]",
                             "yes" if st.get("stable") else "no"])
            else:
                rows.append([r["key"], str(st.get("batches", "—")), "—", "—", "—", "—",
                             f"not computable: {st.get('reason')}"])
        out.append(("p", "Recipe stability: the score batches resampled with replacement and each resample re-solved "
                         "with the same solver and budget; flip share = mean share of layer groups whose choice "
                         "changes; Jaccard = overlap of the quantized layer sets; total score with its 95 % "
                         "bootstrap interval."))
        out.append(("table", ["cell", "score batches", "resamples solved", "flip share", "Jaccard mean",
                              "total score [95 % CI]", "stable"], rows))
    else:
        out.append(("p", "Recipe stability: not recorded in these rows (evaluation.stability.resamples = 0, or rows "
                         "written before the check existed)."))
    if data["layer_fidelity"]:
        out.append(("p", "Layer-level fidelity: one layer group quantized at a time in the cell's format; Spearman of "
                         "the proxy scores against the measured KL of the top-K and K random groups."))
        rows = []
        for r in data["layer_fidelity"]:
            lf = r["trust"]["layer_fidelity"]
            reading = (rho_words(lf["rho"], int(lf.get("n") or 0)) if lf.get("rho") is not None
                       else f"not computable: {lf.get('reason')}")
            rows.append([r["key"], str(lf.get("measured", "—")), _f(lf.get("rho"), ".3f"), reading])
        out.append(("table", ["cell", "groups measured", "Spearman ρ", "reading"], rows))
    out += _downstream_blocks(data.get("downstream") or {})
    return out


def _downstream_blocks(ds: dict[str, Any]) -> list[Block]:
    if not ds.get("cells"):
        return []
    base = ds.get("baseline")
    out: list[Block] = [("p", "Downstream accuracy (lm-evaluation-harness, evaluation.lm_eval): each cell's "
                              "fake-quantized model against the unquantized baseline on the same documents; "
                              "Δ ± one standard error, sqrt(se_cell² + se_baseline²); \"within error\": |Δ| ≤ 2 "
                              "standard errors.")]
    if not base or not base.get("computable"):
        why = (base or {}).get("reason") or "not in the summary"
        out.append(("p", f"No baseline evaluation to compare with ({why}); the deltas cannot be given."))
    rows = []
    for c in ds["cells"]:
        if c["reason"] is not None:
            rows.append([c["cell"], "—", "—", "—", "—", f"not computable: {c['reason']}"])
        for d in c["deltas"]:
            se = "—" if d["stderr"] is None else format(d["stderr"], ".3f")
            rows.append([c["cell"], f"{d['task']} {d['metric']}", f"{d['value']:.3f}", f"{d['baseline']:.3f}",
                         f"{d['delta']:+.3f} ± {se}",
                         "—" if d["within_error"] is None else ("within error" if d["within_error"] else "differs")])
    if rows:
        out.append(("table", ["cell", "task metric", "cell score", "baseline", "Δ ± se", "reading"], rows))
    return out
