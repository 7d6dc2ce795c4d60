"""`quantsweep render-report`: report.md, report.html, scatter.json and the plots, from a summary alone.

Why a module of its own: it only *arranges* what the other report modules compute (KPIs, frontier, layer views,
plots). The page is first built as a list of blocks (heading, paragraph, list, table, figure); markdown and HTML
are two renderings of the same blocks, so the two files cannot drift apart.

Deterministic: the same summary (and manifests) and flags give the same bytes. The only varying input is the
generation timestamp, which `--generated-at` fixes; numbers are formatted with pinned precision; nothing depends on
dict order that the input does not fix, on the output folder, or on the clock (plots carry no date).
"""

from __future__ import annotations

import html
import math
import re
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from ..errors import InputError
from ..kpis import GATES, KPI_NAMES, compute_kpis, evaluate_gate
from ..model_shapes import describe_provenance
from ..store.atomic import atomic_write_text, check_output_dir, dumps, staged_outputs
from . import decision
from . import layers as L
from . import noise
from . import plots
from .frontier import build_frontier
from .outputs import check_not_an_input
from .summary_io import Summary, load_summary
from .trust_section import trust_blocks, trust_data

REPORT_MD = "report.md"
REPORT_HTML = "report.html"
SCATTER = "scatter.json"
FIGURES = ("frontier", "sensitivity-heatmap", "convergence")
OUTPUTS = (REPORT_MD, REPORT_HTML, SCATTER) + tuple(f"{s}.{ext}" for s in FIGURES for ext in ("png", "svg"))
# drawn only when some shown row has quality by length (evaluation.seq_lens, docs/hardware.md)
LENGTH_FIGURE = "quality-vs-length"
LENGTH_OUTPUTS = tuple(f"{LENGTH_FIGURE}.{ext}" for ext in ("png", "svg"))

Block = tuple[Any, ...]


def now_utc() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


# --- formatting --------------------------------------------------------------------------------------------------
def _num(v: Any, spec: str) -> str:
    if isinstance(v, bool) or v is None:
        return "—" if v is None else str(v).lower()
    if isinstance(v, int | float):
        return format(v, spec) if math.isfinite(v) else str(v)
    return str(v)


def _rate(kpi: dict[str, Any] | None) -> tuple[str, str]:
    if not isinstance(kpi, dict):
        return "missing", "—"
    v = kpi.get("value")
    return ("null" if v is None else f"{v:.4g}"), f"{kpi.get('numerator')} / {kpi.get('denominator')}"


def _axis_entry_name(it: Any) -> str:
    """An axis entry as the cells name it: a name, an inline entry's name, `{pair: ...}` by its pair, a format
    menu by its name or its members joined with '+' (schema.py's `axis_pair_label`)."""
    if not isinstance(it, dict):
        return str(it)
    if "menu" in it:
        return str(it.get("name") or "+".join(_axis_entry_name(m) for m in it.get("menu") or []))
    if "pair" in it:
        return _axis_entry_name(it["pair"])
    return str(it.get("name", "?"))


def _as_list(v: Any) -> list[Any]:
    """A matrix field that may be one value or a list of them (`effective_bits: 8` or `[8, 6]`)."""
    return [] if v is None else list(v) if isinstance(v, list) else [v]


def _s(v: Any) -> str:
    return "—" if v is None or v == "" else str(v)


def _text(v: Any, limit: int = 160) -> str:
    s = " ".join(str(v).split())
    return s if len(s) <= limit else s[: limit - 1] + "…"


# --- the report model --------------------------------------------------------------------------------------------
def build_report(summary: Summary, include_invalid: bool, generated_at: str, bits: str = "achieved") -> dict[str, Any]:
    """Everything the report shows, as data (also what the tests assert on)."""
    metric, limit = summary.metric, summary.max_quality
    kpis = compute_kpis(summary.rows, summary.canary, summary.thresholds)
    gate = evaluate_gate(kpis, summary.thresholds)
    view = build_frontier(summary.rows, metric, limit, include_invalid, bits)
    rows_by_key = {r["key"]: r for r in summary.rows}
    cells: dict[str, dict[str, float]] = {}
    notes: list[str] = []
    for p in view["points"]:
        row = rows_by_key[p["key"]]
        if row.get("status") != "ok":
            continue  # an error row never produced scores: listed under failures, not as a missing manifest
        manifest, why = summary.manifest(row)
        if manifest is None:
            notes.append(f"{p['key']}: per-layer scores unavailable ({why}); left out of the layer views")
            continue
        scores = L.cell_scores(manifest)
        if not scores:
            notes.append(f"{p['key']}: its manifest has no per-layer raw scores; left out of the layer views")
            continue
        cells[p["key"]] = scores
    edge = [p["key"] for p in view["points"] if p["quality"] is not None
            and not 1 / plots.PLOT_LIMIT <= abs(p["quality"]) <= plots.PLOT_LIMIT and p["quality"] != 0]
    if edge or not 1 / plots.PLOT_LIMIT <= limit <= plots.PLOT_LIMIT:
        notes.append(f"{metric} values outside {1 / plots.PLOT_LIMIT:g} to {plots.PLOT_LIMIT:g} are drawn at the "
                     "edge of the frontier plot ("
                     + (", ".join(edge) if edge else f"the threshold {limit:g}") + "); the tables give them as measured")
    conv = L.convergence(view["points"], cells)
    heat = L.heatmap_data(cells)
    comparisons = noise.comparisons([rows_by_key[p["key"]] for p in view["points"]])
    overall = decision.overall_recommendation(view, comparisons)
    return {
        "summary": summary,
        "generated_at": generated_at,
        "include_invalid": include_invalid,
        "kpis": kpis,
        "gate": gate,
        "view": view,
        "layer_cells": list(cells),
        "top_layers": L.most_sensitive(cells),
        "heatmap": heat,
        "convergence": conv,
        "plot_data": {
            "frontier": plots.frontier_plot_data(view),
            "sensitivity-heatmap": plots.heatmap_plot_data(heat),
            "convergence": plots.convergence_plot_data(conv),
            LENGTH_FIGURE: plots.length_plot_data([rows_by_key[p["key"]] for p in view["points"]]),
        },
        "notes": notes,
        "comparisons": comparisons,
        "trust": trust_data([rows_by_key[p["key"]] for p in view["points"]], view["groups"], metric,
                            (summary.doc.get("baseline") or {}).get("lm_eval")),
        "decision": overall,
        "recipes": decision.recipes(summary, view, overall),
    }


def scatter_doc(rep: dict[str, Any]) -> dict[str, Any]:
    s: Summary = rep["summary"]
    doc = s.doc
    keep = ("key", "cell_id", "group", "model", "pair", "weight", "activation", "granularity", "dataset_size",
            "samples", "effective_bits_target", "achieved_bits", "quality", "kl_mean", "ppl_ratio", "top1_agreement",
            "status", "valid", "reasons", "meets_quality", "on_frontier", "frontier_role", "quality_per_bit_saved",
            "value_score", "marginal_cost_per_bit", "marginal_vs")
    return {
        "schema_version": "1",
        "kind": "quantsweep.scatter",
        "generated_at": rep["generated_at"],
        "source_summary": str(s.path),
        "sweep": (doc.get("matrix") or {}).get("name"),
        "labels": doc.get("labels") or {},
        "include_invalid": rep["include_invalid"],
        "x": "achieved_bits",
        "y": rep["view"]["metric"],
        "quality_metric": rep["view"]["metric"],
        "max_quality": rep["view"]["max_quality"],
        "points": [{k: p[k] for k in keep} for p in rep["view"]["points"]],
        "reference": rep["view"]["reference"],
        "decision": {k: rep["decision"][k] for k in ("cell", "runner_up", "closest", "lines")},
        "comparisons": rep["comparisons"],
    }


def _header(rep: dict[str, Any]) -> list[str]:
    s: Summary = rep["summary"]
    d = s.doc
    m = d.get("matrix") or {}
    axes = m.get("axes") or {}
    sizes = ((m.get("dataset") or {}).get("sizes")) or {}

    def names(items: Any) -> str:
        out = []
        for it in items or []:
            out.append(_axis_entry_name(it))
        return ", ".join(out) or "—"

    size_list = []
    for it in axes.get("dataset_sizes") or []:
        if isinstance(it, dict):
            size_list.append(f"{it.get('name')} ({it.get('samples')})")
        else:
            size_list.append(f"{it} ({sizes[it]})" if it in sizes else str(it))
    model = d.get("model") or {}
    mparts = [model.get(k) for k in ("architecture", "dtype", "device") if model.get(k)]
    if isinstance(model.get("num_parameters"), int):
        mparts.append(f"{model['num_parameters'] / 1e6:.1f}M parameters")
    ds = d.get("dataset") or {}
    mds = m.get("dataset") or {}
    aq = m.get("autoquant") or {}
    hw = d.get("hardware") or {}
    versions = d.get("versions") or {}
    labels = d.get("labels") or {}
    progress = d.get("progress") or {}
    canary = d.get("canary")
    if not canary:
        can = "none recorded"
    elif canary.get("skipped"):
        can = "skipped (--skip-canary)"
    else:
        det = canary.get("determinism") or {}
        can = ("passed" if canary.get("passed") else f"FAILED ({', '.join(canary.get('failed_reasons') or [])})")
        if canary.get("cell"):
            can += f", cell {canary['cell']}"
        if canary.get("repeats"):
            can += f", {canary['repeats']} repeats"
        if det:
            can += f", max relative score difference {_num(det.get('max_rel_score_diff'), '.3g')}"
    items = [
        f"Sweep: {m.get('name', '—')}" + (f" — {_text(m['description'])}" if m.get("description") else ""),
        f"Status: {d.get('status', '—')}; rows: {len(s.rows)}"
        + (f" of {progress['total']} planned cells" if progress.get("total") is not None else ""),
        f"Matrix file: {d.get('matrix_file', '—')}",
        f"Axes: quant pairs [{names(axes.get('quant_pairs'))}]; granularities [{names(axes.get('granularities'))}]; "
        f"dataset sizes [{', '.join(size_list) or '—'}]; effective-bits budgets "
        f"[{', '.join(format(b, 'g') for b in _as_list(aq.get('effective_bits'))) or '—'}]",
        f"Model: {model.get('name') or (m.get('model') or {}).get('name') or '—'}"
        + (f" ({', '.join(str(x) for x in mparts)})" if mparts else ""),
        f"Baseline weights: {_text(describe_provenance(model.get('provenance')), 400)}",
        f"Dataset: {mds.get('source', '—')}, seq_len {mds.get('seq_len', '—')}, held-out samples "
        f"{mds.get('eval_samples', '—')}, fingerprint {ds.get('fingerprint', '—')}",
        f"AutoQuantize: method {aq.get('method', '—')}, batch size {aq.get('batch_size', '—')}",
        "Labels: " + (", ".join(f"{k}={v}" for k, v in sorted(labels.items())) or "—"),
        f"Hardware: {hw.get('fingerprint', '—')}",
        "Versions: " + (", ".join(f"{k} {v}" for k, v in sorted(versions.items())) or "—"),
        f"Commit: {_commit_text(d.get('commit'))}",
        f"Canary: {can}",
        f"Summary: {s.path} (written {d.get('generated_at', '—')})",
        f"Report generated at: {rep['generated_at']}; include_invalid: {str(rep['include_invalid']).lower()}",
        f"Quality rule: {s.metric} ≤ {s.max_quality:g} (against the unquantized model on held-out text)",
    ]
    return items


def blocks(rep: dict[str, Any]) -> list[Block]:
    s: Summary = rep["summary"]
    view, kpis, gate = rep["view"], rep["kpis"], rep["gate"]
    metric = view["metric"]
    name = (s.doc.get("matrix") or {}).get("name") or s.path.stem
    out: list[Block] = [("h1", f"quantsweep report: {name}"), ("ul", _header(rep))]
    out += decision.decision_blocks(rep["decision"])

    # KPIs and gate
    out.append(("h2", f"Stability KPIs — gate {gate['status']}"))
    rows = []
    checks = {c["kpi"]: c for c in gate["checks"]}
    for k in KPI_NAMES:
        value, frac = _rate(kpis.get(k))
        c = checks[k]
        op = "≥" if c["op"] == "min" else "≤"
        rows.append([k, value, frac, f"{op} {c['limit']:g} ({GATES[k][0]})", c["status"]])
    out.append(("table", ["KPI", "value", "numerator / denominator", "threshold", "status"], rows))
    if gate["failures"]:
        out.append(("p", "Gate failures:"))
        out.append(("ul", gate["failures"]))
    out.append(("p", f"Rows: {kpis['rows']}; groups: {kpis['groups']}; repeated executions checked for "
                     f"determinism: {kpis['repeated_executions']}. KPIs are computed from all rows (docs/kpis.md); "
                     "--include-invalid never changes them."))

    # recommendations
    out.append(("h2", "Recommendations"))
    recs = []
    for g in view["groups"]:
        recs.append([plots.group_title(g), g["baseline"] or "—", g["minimum_viable"] or "—", g["best_value"] or "—",
                     g["recommendation"]])
    if recs:
        out.append(("table", ["group (model · dataset size · granularity)", "baseline", "minimum viable",
                              "best value", "recommendation"], recs))
    else:
        out.append(("p", "No rows to recommend from."))
    out.append(("p", "Baseline: the highest-precision cell on the frontier (the best quality; a cell with more "
                     "bits and worse quality is dominated, never the baseline). Minimum viable: the fewest bits with "
                     f"{metric} ≤ {view['max_quality']:g}. Best value: the eligible cell that realises the largest "
                     "share of the available bit savings for the smallest share of the quality budget "
                     "(docs/reports.md)."))
    out += decision.recipe_blocks(rep["recipes"], rep.get("out_dir"))

    out += trust_blocks(rep["trust"], metric)

    # frontier figure
    out.append(("h2", "Quality vs effective bits"))
    out.append(("figure", "frontier", "Quality vs achieved effective bits per group, with the Pareto frontier and "
                                      "the quality threshold"))

    # cells
    out.append(("h2", "Cells"))
    shown, total = len(view["points"]), len(s.rows)
    hidden = total - shown
    out.append(("p", f"{shown} of {total} rows shown"
                     + (f"; {hidden} invalid rows hidden (render with --include-invalid to show them)." if hidden
                        else ".")))
    cell_rows = [_reference_row(view)]
    rows_by_key_ = {r["key"]: r for r in s.rows}
    for p in view["points"]:
        cell_rows.append([
            p["key"], _s(p["pair"]), _s(p["granularity"]), _s(p["dataset_size"]),
            _num(p["effective_bits_target"], "g"), _num(p["achieved_bits"], ".3f"),
            _num(rows_by_key_[p["key"]].get("storage_bits"), ".3f"), _num(p["kl_mean"], ".4g"),
            _num(p["ppl_ratio"], ".4f"), _num(p["top1_agreement"], ".3f"), _marginal(p),
            "yes" if p["valid"] else "no: " + ", ".join(p["reasons"]), p["frontier_role"] or "—",
        ])
    out.append(("p", "bits: the frontier's x axis (" + ("AutoQuantize's effective bits, scales not counted"
                     if view.get("bits", "achieved") == "achieved" else "storage bits, scales counted")
                     + "); storage bits: what a checkpoint of the recipe stores per weight, scales included "
                     "(docs/metrics.md)."))
    out.append(("table", ["cell", "pair", "granularity", "size", "budget", "bits", "storage bits", "KL mean",
                          "ppl ratio", "top-1",
                          f"{metric} cost per bit saved", "valid", "role"], cell_rows))
    out.append(("p", f"{metric} cost per bit saved: for a frontier cell, how much {metric} rises for each bit it "
                     "saves against the next larger point of its group's frontier (the 16-bit reference above the "
                     "largest); where this jumps, further savings get expensive. Blank off the frontier. The first "
                     "row is the unquantized model every cell is measured against."))

    # solver
    out.append(("h2", "Solver: exact optimum vs ModelOpt's"))
    solved = [r for r in s.rows if r.get("status") == "ok" and isinstance(r.get("solver"), dict)]
    better = [r for r in solved if r["solver"].get("used") == "exact"]
    if solved:
        out.append(("p", f"Each cell's recipe is the exact optimum of its knapsack (HiGHS, zero gap); ModelOpt's own "
                         f"solve is kept for reference. In {len(better)} of {len(solved)} cells ModelOpt's recipe "
                         "was not optimal and the exact one is used (docs/running.md)."))
        if better:
            out.append(("table", ["cell", "ModelOpt total score", "exact total score", "gap", "groups differing"],
                        [[r["key"], _num(r["solver"].get("modelopt_objective"), ".4e"),
                          _num(r["solver"].get("exact_objective"), ".4e"),
                          _num(100 * (r["solver"].get("objective_gap") or 0), ".3g") + " %",
                          str(r["solver"].get("groups_differing"))] for r in better]))
    else:
        out.append(("p", "No solver records in these rows (rows written before quantsweep recorded them, or the "
                         "kl_div method, which keeps ModelOpt's threshold search)."))

    # noise
    out.append(("h2", "Which differences are resolved"))
    comps = rep["comparisons"]
    if comps:
        quiet = noise.within_noise(comps)
        out.append(("p", f"Cells differing in one axis (everything else equal), compared pairwise on the same "
                         f"held-out sequences: Δ = a − b with its standard error clustered by sequence; "
                         f"'within noise' = |Δ| ≤ {noise.Z:g} SE; 'identical' = the same outputs. {len(quiet)} of "
                         f"{len(comps)} KL differences are within noise: do not choose between those cells on this "
                         "evidence (docs/metrics.md)."))
        ordered = sorted(comps, key=lambda e: (e["metrics"].get("kl", {}).get("resolved", True), e["axis"], e["a"]))
        table = []
        for e in ordered[:60]:
            kl, lr = e["metrics"].get("kl"), e["metrics"].get("ln_ppl_ratio")
            table.append([e["axis"], e["a"], e["b"],
                          f"{_num(kl and kl['delta'], '.3e')} ± {_num(kl and kl['stderr'], '.1e')}", _verdict(kl),
                          f"{_num(lr and lr['delta'], '.4f')} ± {_num(lr and lr['stderr'], '.4f')}", _verdict(lr)])
        out.append(("table", ["axis", "cell a", "cell b", "ΔKL mean", "KL", "Δln(PPL ratio)", "PPL"], table))
        if len(ordered) > 60:
            out.append(("p", f"{len(ordered) - 60} more comparisons in scatter.json."))
    else:
        out.append(("p", "Not available: needs ok cells that differ in one axis and carry per-sequence quality "
                         "(rows written by quantsweep 0.1 after clustered error bars were added)."))

    # layers
    out.append(("h2", "Most sensitive layers across cells"))
    if rep["top_layers"]:
        out.append(("p", f"Over the {len(rep['layer_cells'])} shown cells with per-layer scores. Relative "
                         "sensitivity = the layer's raw AutoQuantize score / the cell's largest score, averaged over "
                         f"the cells; 'in top {L.TOP_K}' counts the cells where it is among the {L.TOP_K} "
                         "highest."))
        out.append(("table", ["layer", "mean relative sensitivity", "cells", f"in top {L.TOP_K}", "max raw score",
                              "in cell"],
                    [[e["layer"], f"{e['mean_relative']:.3f}", str(e["cells"]), str(e["in_top_k"]),
                      f"{e['max_score']:.3e}", e["max_cell"]] for e in rep["top_layers"]]))
    else:
        out.append(("p", "No per-layer scores available (see Notes)."))
    out.append(("figure", "sensitivity-heatmap", plots.heatmap_caption(rep["plot_data"]["sensitivity-heatmap"])))

    # convergence
    out.append(("h2", "Convergence across dataset sizes"))
    conv_rows = [[s_["series"], f"{p['from']} ({p['from_samples']}) → {p['to']} ({p['to_samples']})",
                  str(p["layers"]), _num(p["rho"], ".4f")] for s_ in rep["convergence"] for p in s_["points"]]
    if conv_rows:
        out.append(("p", "Spearman rank correlation of per-layer raw scores between consecutive dataset sizes of "
                         "the same pair and granularity (1 = the larger dataset ranks the layers identically)."))
        out.append(("table", ["series", "sizes", "layers", "Spearman ρ"], conv_rows))
    else:
        out.append(("p", "Not available: needs the same pair and granularity at two or more dataset sizes, with "
                         "per-layer scores."))
    out.append(("figure", "convergence", "Rank correlation of per-layer scores between consecutive dataset sizes"))

    # quality vs context length
    lengths = rep["plot_data"][LENGTH_FIGURE]
    if lengths["series"]:
        out.append(("h2", "Quality vs context length"))
        out.append(("p", "Each shown cell's chosen recipe (with its KV-cache setting) evaluated on held-out samples "
                         "of each length (evaluation.seq_lens) against the unquantized model; `quantsweep "
                         "context-ceiling` applies thresholds (docs/hardware.md)."))
        out.append(("table", ["cell", *[f"{L} tokens: KL / ppl ratio / top-1" for L in lengths["seq_lens"]]],
                    [[s_["label"], *[_length_cell(s_, L) for L in lengths["seq_lens"]]] for s_ in lengths["series"]]))
        out.append(("figure", LENGTH_FIGURE, "Quality vs context length, one line per cell"))

    # failures
    out.append(("h2", "Failures and invalid rows"))
    bad = [r for r in s.rows if not r.get("valid")]
    if bad:
        out.append(("p", f"{len(bad)} of {total} rows are not valid; they never count for the frontier KPI"
                         + ("" if rep["include_invalid"] else " and are hidden from the views above") + "."))
        out.append(("table", ["cell", "status", "reasons", "error"],
                    [[r["key"], str(r.get("status")), ", ".join(r.get("reasons", [])) or "—",
                      _text(r.get("error") or "—")] for r in bad]))
    else:
        out.append(("p", "None: every row is valid."))

    # notes
    notes = list(rep["notes"])
    notes += [f"plan warning: {_text(w)}" for w in ((s.doc.get("plan") or {}).get("warnings") or [])]
    if notes:
        out.append(("h2", "Notes"))
        out.append(("ul", notes))
    return out


def _length_cell(series: dict[str, Any], seq_len: int) -> str:
    p = next((p for p in series["points"] if p["seq_len"] == seq_len), None)
    if p is None:
        return "—"
    return f"{_num(p['kl_mean'], '.3e')} / {_num(p['ppl_ratio'], '.4f')} / {_num(p['top1_agreement'], '.3f')}"


def _reference_row(view: dict[str, Any]) -> list[str]:
    """The 16-bit reference as the Cells table's first row: the unquantized model, by definition lossless."""
    ref = view["reference"]
    return [ref["key"] + " (unquantized model)", "—", "—", "—", "—", _num(ref["bits"], ".3f"), _num(ref["bits"], ".3f"),
            _num(ref["kl_mean"], ".4g"), _num(ref["ppl_ratio"], ".4f"), _num(ref["top1_agreement"], ".3f"), "—", "—",
            "reference"]


def _marginal(p: dict[str, Any]) -> str:
    v = p.get("marginal_cost_per_bit")
    if v is None:
        return "—"
    return f"{_num(v, '.3g')} vs " + ("16-bit" if p["marginal_vs"] == "16-bit reference" else p["marginal_vs"])


def _verdict(m: dict[str, Any] | None) -> str:
    if not m:
        return "—"
    if m["delta"] == 0 and m["stderr"] == 0:
        return "identical"
    return "resolved" if m["resolved"] else "within noise"


# --- renderers ---------------------------------------------------------------------------------------------------
def _md_cell(v: str) -> str:
    return str(v).replace("\\", "\\\\").replace("|", "\\|").replace("\n", " ")


def _md_item(x: Any) -> str:
    """A list item: text, or (text before, link label, link target)."""
    if isinstance(x, tuple):
        return f"{x[0]}[{x[1]}]({x[2].replace(' ', '%20')})"
    return str(x)


def _html_item(x: Any) -> str:
    e = html.escape
    if isinstance(x, tuple):
        return f'{e(x[0])}<a href="{e(x[2])}">{e(x[1])}</a>'
    return e(str(x))


def render_markdown(bl: list[Block]) -> str:
    lines: list[str] = []
    for b in bl:
        kind = b[0]
        if kind == "h1":
            lines += [f"# {b[1]}", ""]
        elif kind == "h2":
            lines += [f"## {b[1]}", ""]
        elif kind == "p":
            lines += [b[1], ""]
        elif kind == "ul":
            lines += [f"- {_md_item(x)}" for x in b[1]] + [""]
        elif kind == "code":
            lines += ["```", b[1], "```", ""]
        elif kind == "table":
            head, rows = b[1], b[2]
            lines.append("| " + " | ".join(_md_cell(h) for h in head) + " |")
            lines.append("|" + "---|" * len(head))
            lines += ["| " + " | ".join(_md_cell(c) for c in r) + " |" for r in rows]
            lines.append("")
        elif kind == "figure":
            lines += [f"![{b[2]}]({b[1]}.png)", "", f"({b[1]}.png; vector: [{b[1]}.svg]({b[1]}.svg))", ""]
    return "\n".join(lines).rstrip("\n") + "\n"


CSS = """
body { font-family: -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; margin: 2rem auto; max-width: 1200px;
       padding: 0 1rem; color: #222; line-height: 1.45; }
h1 { font-size: 1.6rem; border-bottom: 2px solid #ddd; padding-bottom: .3rem; }
h2 { font-size: 1.25rem; margin-top: 2rem; border-bottom: 1px solid #eee; }
table { border-collapse: collapse; font-size: .85rem; margin: .5rem 0 1rem; }
th, td { border: 1px solid #ddd; padding: .25rem .5rem; text-align: left; vertical-align: top; }
th { background: #f4f4f4; }
tr:nth-child(even) td { background: #fafafa; }
figure { margin: 1rem 0; overflow-x: auto; }
figure svg { max-width: 100%; height: auto; }
figcaption { font-size: .85rem; color: #555; }
.PASS { color: #1e7e34; font-weight: bold; } .FAIL { color: #c0392b; font-weight: bold; }
""".strip()


def inline_svg(svg: str, prefix: str) -> str:
    """An SVG file's text made fit to sit inside an HTML page next to others: no XML prolog, and every id (and each
    reference to one) prefixed, since matplotlib names groups `axes_1`, `line2d_1`... in every figure."""
    i = svg.find("<svg")
    svg = svg[i:] if i >= 0 else svg
    svg = re.sub(r'\bid="([^"]+)"', lambda m: f'id="{prefix}-{m.group(1)}"', svg)
    svg = re.sub(r"url\(#([^)]+)\)", lambda m: f"url(#{prefix}-{m.group(1)})", svg)
    return re.sub(r'href="#([^"]+)"', lambda m: f'href="#{prefix}-{m.group(1)}"', svg)


def render_html(bl: list[Block], svgs: dict[str, str], title: str) -> str:
    e = html.escape
    parts = ["<!DOCTYPE html>", '<html lang="en">', "<head>", '<meta charset="utf-8">',
             f"<title>{e(title)}</title>", f"<style>\n{CSS}\n</style>", "</head>", "<body>"]
    for b in bl:
        kind = b[0]
        if kind == "h1":
            parts.append(f"<h1>{e(b[1])}</h1>")
        elif kind == "h2":
            text = e(b[1])
            for status in ("PASS", "FAIL"):
                text = text.replace(f"gate {status}", f'gate <span class="{status}">{status}</span>')
            parts.append(f"<h2>{text}</h2>")
        elif kind == "p":
            parts.append(f"<p>{e(b[1])}</p>")
        elif kind == "ul":
            parts.append("<ul>" + "".join(f"<li>{_html_item(x)}</li>" for x in b[1]) + "</ul>")
        elif kind == "code":
            parts.append(f"<pre><code>{e(b[1])}</code></pre>")
        elif kind == "table":
            head = "".join(f"<th>{e(h)}</th>" for h in b[1])
            body = "".join("<tr>" + "".join(f"<td>{e(str(c))}</td>" for c in r) + "</tr>" for r in b[2])
            parts.append(f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>")
        elif kind == "figure":
            parts.append(f"<figure>{inline_svg(svgs[b[1]], b[1])}<figcaption>{e(b[2])}</figcaption></figure>")
    parts += ["</body>", "</html>"]
    return "\n".join(parts) + "\n"


# --- the command -------------------------------------------------------------------------------------------------
def render_report(
    summary_path: str | Path,
    out_dir: str | Path,
    include_invalid: bool = False,
    generated_at: str | None = None,
    bits: str = "achieved",
) -> dict[str, Any]:
    """Write the report into `out_dir`; return what was written and the counts the CLI prints. `bits`: the
    frontier's x axis, AutoQuantize's budget bits (`achieved`) or the bits a checkpoint stores (`storage`)."""
    out = check_output_dir(out_dir, "--out")  # before anything is read
    check_not_an_input([out / name for name in OUTPUTS + LENGTH_OUTPUTS], [summary_path], "--out")
    summary = load_summary(summary_path)
    rep = build_report(summary, include_invalid, generated_at or now_utc(), bits)
    rep["out_dir"] = out  # recipe links are written relative to the report's folder
    for name in OUTPUTS:
        if (out / name).is_dir() and not (out / name).is_symlink():
            raise InputError(f"--out {out}: {out / name} is a folder, where the report writes its {name}")
    pd = rep["plot_data"]
    figs = {
        "frontier": plots.draw_frontier(pd["frontier"]),
        "sensitivity-heatmap": plots.draw_heatmap(pd["sensitivity-heatmap"]),
        "convergence": plots.draw_convergence(pd["convergence"]),
    }
    if pd[LENGTH_FIGURE]["series"]:
        figs[LENGTH_FIGURE] = plots.draw_quality_vs_length(pd[LENGTH_FIGURE])
    bl = blocks(rep)
    name = (summary.doc.get("matrix") or {}).get("name") or summary.path.stem
    with staged_outputs(out) as stage:  # all files or none: an error never leaves plots without a report
        svgs = {stem: plots.save_figure(fig, stage, stem) for stem, fig in figs.items()}
        atomic_write_text(stage / REPORT_MD, render_markdown(bl))
        atomic_write_text(stage / REPORT_HTML, render_html(bl, svgs, f"quantsweep report: {name}"))
        atomic_write_text(stage / SCATTER, dumps(scatter_doc(rep)))
    files = list(OUTPUTS) + (list(LENGTH_OUTPUTS) if LENGTH_FIGURE in figs else [])
    fr = pd["frontier"]
    return {
        "out": str(out),
        "files": files,
        "include_invalid": include_invalid,
        "points": len(rep["view"]["points"]),
        "gate": rep["gate"]["status"],
        "groups": [{k: g[k] for k in ("group", "baseline", "minimum_viable", "best_value")}
                   for g in rep["view"]["groups"]],
        "decision": {k: rep["decision"][k] for k in ("cell", "runner_up", "closest")},
        "plots": {
            "frontier": {"panels": len([p for p in fr["panels"] if p["points"]]),
                         "points": sum(len(p["points"]) for p in fr["panels"])},
            "sensitivity-heatmap": {"layers": len(pd["sensitivity-heatmap"]["layers"]),
                                    "cells": len(pd["sensitivity-heatmap"]["cells"])},
            "convergence": {"series": len(pd["convergence"]["series"]), "points": pd["convergence"]["points"]},
            **({LENGTH_FIGURE: {"series": len(pd[LENGTH_FIGURE]["series"]),
                                "lengths": len(pd[LENGTH_FIGURE]["seq_lens"])}} if LENGTH_FIGURE in figs else {}),
        },
        "notes": rep["notes"],
    }


__all__ = ["build_report", "render_html", "render_markdown", "render_report", "scatter_doc"]


def _commit_text(commit: Any) -> str:
    """`{"sha": ..., "dirty": bool}` -> `4b02c1d9e8aa (dirty)`; anything else as written, or `unknown`."""
    if isinstance(commit, dict) and commit.get("sha"):
        return str(commit["sha"])[:12] + (" (dirty)" if commit.get("dirty") else "")
    return str(commit) if commit else "unknown"
