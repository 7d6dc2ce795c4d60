"""The report's decision: one recommendation for the whole sweep, and the recipes of the recommended cells.

Why a module of its own: the per-group roles (`frontier.py`) answer "which cell of this group", but a reader
wants one answer for the sweep, the evidence beside it (the runner-up, and whether their difference is more than
noise), what would pass when nothing does, and how to act on it: which layers the chosen recipe keeps in higher
precision, where its `recipe.json` is and the one command that applies it. Pure (no torch); the only files read
are the cell manifests the summary already points at, to list kept layers and find `recipe.json`.

The rule (docs/reports.md, "The decision"): among the shown cells with measured bits and quality that meet the
matrix's `kpi.max_quality`, the fewest bits (the frontier's x axis), ties broken by the quality value, then by
storage bits, then by key.
"""

from __future__ import annotations

import math
import os
import re
from pathlib import Path
from typing import Any

from ..errors import InputError
from ..inputs.documents import DATA, read_json_object
from .frontier import what_would_pass
from .summary_io import MANIFEST, Summary, manifest_candidates

NONE_LABEL = "none"
RECIPE = "recipe.json"
MAX_LISTED = 40  # kept layer names printed per cell; the manifest has the rest
APPLY_SNIPPET = (
    "import modelopt.torch.quantization as mtq\n"
    "from quantsweep.recipe import load_recipe\n"
    'model = mtq.quantize(model, load_recipe("{recipe}"), forward_loop)'
)
# the noise comparison that matches each quality metric (reports/noise.py)
_NOISE_METRIC = {"kl_mean": "kl", "ppl_ratio": "ln_ppl_ratio"}


def _rankable(view: dict[str, Any]) -> list[dict[str, Any]]:
    return [p for p in view["points"] if p["achieved_bits"] is not None and p["quality"] is not None]


def _order(p: dict[str, Any]) -> tuple[Any, ...]:
    storage = p.get("storage_bits")
    return (p["achieved_bits"], p["quality"], storage if storage is not None else math.inf, p["key"])


def _desc(p: dict[str, Any], metric: str) -> str:
    return f"{p['key']} ({p['achieved_bits']:.3f} bits, {metric} {p['quality']:.4g})"


def overall_recommendation(view: dict[str, Any], comparisons: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """`{"cell", "runner_up", "closest", "eligible", "rankable", "would_pass", "lines"}`: the sweep's one
    recommendation (`cell`, None when nothing passes) with the sentences that say what, why and against what.

    `comparisons` are the report's paired one-axis comparisons (`noise.comparisons`): when the chosen cell and the
    runner-up differ in one axis, the text says whether their quality difference is resolved or within noise."""
    metric, limit = view["metric"], view["max_quality"]
    rankable = _rankable(view)
    # a recommendation must be exportable (export_support.py); rows without the flag (older summaries) count as such
    eligible = sorted((p for p in rankable if p["meets_quality"] and p.get("exportable") is not False), key=_order)
    passed_over = [p for p in rankable if p["meets_quality"] and p.get("exportable") is False]
    out: dict[str, Any] = {"cell": None, "runner_up": None, "closest": None, "eligible": len(eligible),
                           "rankable": len(rankable), "would_pass": None, "lines": []}
    if not rankable:
        out["lines"] = ["No recommendation: no shown cell has measured bits and quality."]
        return out
    if not eligible:
        would = what_would_pass(rankable, metric, limit, view.get("bits", "achieved"))
        out["closest"], out["would_pass"] = would["closest"], would
        out["lines"] = [would["text"]]
        return out
    best = eligible[0]
    out["cell"] = best["key"]
    lines = [f"Use {best['key']}: {_what(best, metric, limit)}.",
             *([f"Passed over: {len(passed_over)} cell(s) that meet the limit but cannot be exported "
                f"({passed_over[0]['key']}: {passed_over[0].get('export_reason') or 'no reason recorded'})."]
               if any(_order(p) < _order(best) for p in passed_over) else []),
             f"Why: the fewest bits among the {len(eligible)} of {len(rankable)} shown cells that meet {metric} <= "
             f"{limit:g} (ties: better {metric}, then fewer storage bits)."]
    # the runner-up is the next *other choice* (another format or budget); the same choice calibrated on another
    # dataset size is the same deployment decision, reported on its own line
    others = [p for p in eligible[1:] if _choice(p) != _choice(best)] or eligible[1:]
    if others:
        runner = others[0]
        out["runner_up"] = runner["key"]
        lines.append(f"Runner-up: {_desc(runner, metric)}. {_versus(best, runner, metric, comparisons or [])}")
    else:
        lines.append("Runner-up: none; no other shown cell meets the limit.")
    smaller = [p for p in rankable if p["achieved_bits"] < best["achieved_bits"]]
    if smaller:  # the answer to "can it be smaller?": the best of what was tried below the choice
        below = min(smaller, key=lambda p: (p["quality"], -p["achieved_bits"], p["key"]))
        lines.append(f"Nothing smaller meets the limit: the best cell below {best['achieved_bits']:.3f} bits, "
                     f"{_desc(below, metric)}, misses it by {below['quality'] - limit:.4g}.")
    same = [p for p in rankable if p is not best and _choice(p) == _choice(best) and p["key"] != out["runner_up"]]
    if same:
        lines.append("Calibration size: the same format and budget calibrated on "
                     + "; ".join(_same(best, p, metric) for p in sorted(same, key=_order)) + ".")
    out["lines"] = lines
    return out


def _choice(p: dict[str, Any]) -> tuple[Any, ...]:
    """What a deployment decides: the model, the format (pair and granularity) and the budget."""
    return (p.get("model"), p["pair"], p["granularity"], p.get("effective_bits_target"))


def _same(best: dict[str, Any], p: dict[str, Any], metric: str) -> str:
    size = f"{p['dataset_size']}" + (f" ({p['samples']} samples)" if p.get("samples") is not None else "")
    if p["achieved_bits"] == best["achieved_bits"] and p["quality"] == best["quality"]:
        return f"{size} gives the same bits and {metric}"
    verdict = "also meets the limit" if p["meets_quality"] else "fails the limit"
    return f"{size} gives {p['achieved_bits']:.3f} bits, {metric} {p['quality']:.4g} ({verdict})"


def _what(p: dict[str, Any], metric: str, limit: float) -> str:
    size = f"{p['dataset_size']}" + (f" ({p['samples']} samples)" if p.get("samples") is not None else "")
    budget = p.get("effective_bits_target")
    parts = [f"{p['pair']} with {p['granularity']} scales, calibrated on {size}"]
    if isinstance(budget, int | float):
        parts.append(f"budget {budget:g} bits")
    parts.append(f"{p['achieved_bits']:.3f} bits")
    if p.get("storage_bits") is not None:
        parts.append(f"{p['storage_bits']:.3f} storage bits")
    quality = f"{metric} {p['quality']:.4g} (limit {limit:g})"
    extra = [f"{m} {p[m]:.4g}" for m in ("kl_mean", "ppl_ratio") if m != metric and p.get(m) is not None]
    return ", ".join(parts) + "; " + ", ".join([quality, *extra])


def _versus(best: dict[str, Any], runner: dict[str, Any], metric: str, comparisons: list[dict[str, Any]]) -> str:
    db = runner["achieved_bits"] - best["achieved_bits"]
    dq = runner["quality"] - best["quality"]
    if db == 0 and dq == 0:
        return "Same bits and the same quality: either will do (the tie went to storage bits, then the name)."
    text = f"It uses {db:+.3f} bits for {metric} {dq:+.4g}"
    text += " (better quality)." if dq < 0 else " (worse quality)." if dq > 0 else " (the same quality)."
    name = _NOISE_METRIC.get(metric)
    for e in comparisons:
        if {e["a"], e["b"]} == {best["key"], runner["key"]} and name in e["metrics"]:
            m = e["metrics"][name]
            verdict = ("identical outputs" if m["identical"] else "resolved" if m["resolved"]
                       else "within noise: do not choose between them on this evidence")
            text += (f" Paired on the same held-out sequences the difference is {verdict} (|Δ{name}| "
                     f"{abs(m['delta']):.3g} ± {m['stderr']:.2g}).")
    return text


# --- the recipes of the recommended cells ----------------------------------------------------------------------
def recommended_keys(view: dict[str, Any], overall: dict[str, Any]) -> list[str]:
    """The overall choice first, then each group's minimum-viable and best-value cells, each once."""
    keys = [overall["cell"]] if overall.get("cell") else []
    for g in view["groups"]:
        keys += [g["minimum_viable"], g["best_value"]]
    return list(dict.fromkeys(k for k in keys if k))


def kept_layers(manifest: dict[str, Any]) -> dict[str, Any] | None:
    """`{"names", "groups", "weight_share", "by_format"}`: the layer groups the cell's recipe kept unquantized
    (`chosen == "none"`), out of how many, their share of the weights (from the 16-bit cost, None when costs are
    not recorded), and the quantized groups per chosen format (several for a format menu's mixed recipe); None
    when the manifest does not record choices (a trimmed manifest)."""
    layers = [g for g in manifest.get("layers") or [] if isinstance(g, dict)]
    if not layers or any("chosen" not in g for g in layers):
        return None
    kept = [g for g in layers if g.get("chosen") == NONE_LABEL]
    share = None
    sizes = [_none_cost(g) for g in layers]
    if all(s is not None for s in sizes) and sum(sizes) > 0:  # type: ignore[arg-type]
        share = sum(_none_cost(g) for g in kept) / sum(sizes)  # type: ignore[misc]
    by_format: dict[str, list[str]] = {}  # the quantized groups per chosen format, in the manifest's order
    for g in layers:
        if g.get("chosen") != NONE_LABEL:
            by_format.setdefault(str(g.get("chosen")), []).append(str(g.get("name")))
    return {"names": [str(g.get("name")) for g in kept], "groups": len(layers), "weight_share": share,
            "by_format": by_format}


def _none_cost(g: dict[str, Any]) -> float | None:
    formats, costs = g.get("formats") or [], g.get("costs")
    if NONE_LABEL not in formats or not isinstance(costs, list) or len(costs) != len(formats):
        return None
    v = costs[formats.index(NONE_LABEL)]
    return float(v) if isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v) else None


_LAYER = re.compile(r"^(?P<prefix>.*\blayers\.)(?P<index>\d+)\.(?P<rest>.+)$")


def compact_names(names: list[str]) -> str:
    """`lm_head; mlp.down_proj in layers 0-2, 29; self_attn.q_proj in layer 5`: per-block modules grouped by the
    module name within the block, block indices as ranges; other names as they are. Order: first appearance."""
    groups: dict[tuple[str, str], list[int]] = {}
    out: list[tuple[str, Any]] = []
    for n in names:
        m = _LAYER.match(n)
        if m is None:
            out.append(("name", n))
            continue
        key = (m["prefix"], m["rest"])
        if key not in groups:
            groups[key] = []
            out.append(("group", key))
        groups[key].append(int(m["index"]))
    text = []
    for kind, v in out:
        if kind == "name":
            text.append(v)
        else:
            idx = sorted(set(groups[v]))
            word = "layer" if len(idx) == 1 else "layers"
            text.append(f"{v[1]} in {word} {_ranges(idx)}")
    return "; ".join(text)


def _ranges(idx: list[int]) -> str:
    """[0, 1, 2, 5, 7, 8] -> "0-2, 5, 7-8"."""
    parts, i = [], 0
    while i < len(idx):
        j = i
        while j + 1 < len(idx) and idx[j + 1] == idx[j] + 1:
            j += 1
        parts.append(str(idx[i]) if i == j else f"{idx[i]}-{idx[j]}")
        i = j + 1
    return ", ".join(parts)


def cell_folder(summary: Summary, row: dict[str, Any]) -> Path | None:
    """The folder whose manifest belongs to the row (the same search and identity check as the layer views)."""
    if not row.get("path"):
        return None
    for cand in manifest_candidates(summary.path, row["path"]):
        try:
            doc = read_json_object(cand / MANIFEST, DATA, "cell manifest")
        except (InputError, OSError):
            continue
        if (doc.get("cell") or {}).get("id") == row.get("cell_id"):
            return cand
    return None


def recipes(summary: Summary, view: dict[str, Any], overall: dict[str, Any]) -> list[dict[str, Any]]:
    """Per recommended cell: `{"key", "roles", "folder", "recipe", "kept", "why"}` (`recipe` None when no
    recipe.json is beside the manifest; `kept` None when the manifest records no choices, `why` says so)."""
    rows = {r["key"]: r for r in summary.rows}
    roles: dict[str, list[str]] = {}
    if overall.get("cell"):
        roles.setdefault(overall["cell"], []).append("overall")
    for g in view["groups"]:
        for role in ("minimum_viable", "best_value"):
            if g[role]:
                roles.setdefault(g[role], []).append(role)
    out = []
    for key in recommended_keys(view, overall):
        row = rows[key]
        entry: dict[str, Any] = {"key": key, "roles": roles.get(key, []), "folder": None, "recipe": None,
                                 "kept": None, "why": None}
        manifest, why = summary.manifest(row)
        if manifest is None:
            entry["why"] = f"no manifest ({why})"
            out.append(entry)
            continue
        folder = cell_folder(summary, row)
        entry["folder"] = str(folder) if folder is not None else None
        if folder is not None and (folder / RECIPE).is_file():
            entry["recipe"] = str(folder / RECIPE)
        entry["kept"] = kept_layers(manifest)
        if entry["kept"] is None:
            entry["why"] = "its manifest does not record which format each layer group got"
        out.append(entry)
    return out


def export_target(key: str) -> str:
    """A folder name for the suggested `export --out`: the cell's key with its slashes as dashes."""
    return "exported/" + re.sub(r"[^A-Za-z0-9._@-]+", "-", key)


# --- blocks ------------------------------------------------------------------------------------------------------
def _link(path: str, out_dir: str | Path | None) -> str:
    """The recipe's address as a link target: relative to the report's folder (so it opens from report.md and
    report.html), or as found when the report's folder is not known."""
    if out_dir is None:
        return path
    return Path(os.path.relpath(Path(path).resolve(), Path(out_dir).resolve())).as_posix()


def decision_blocks(overall: dict[str, Any]) -> list[tuple[Any, ...]]:
    """The "Decision" section: the sweep's one answer, right under the header."""
    return [("h2", "Decision"), ("ul", list(overall["lines"]))]


def recipe_blocks(entries: list[dict[str, Any]], out_dir: str | Path | None = None) -> list[tuple[Any, ...]]:
    """The "Recipes of the recommended cells" section: kept layers, recipe link, the commands that apply it."""
    out: list[tuple[Any, ...]] = [("h2", "Recipes of the recommended cells")]
    if not entries:
        out.append(("p", "No recommended cell."))
        return out
    out.append(("p", "Each recommended cell's recipe: the layer groups it kept at 16 bits (AutoQuantize's "
                     "`chosen` = none in the cell's manifest.json), its recipe.json, and how to apply it: "
                     "`quantsweep export` writes a Hugging Face checkpoint of it (docs/export.md); in your own "
                     "code, `load_recipe` turns it into a ModelOpt config."))
    role_text = {"overall": "overall choice", "minimum_viable": "minimum viable", "best_value": "best value"}
    first_recipe = None
    for e in entries:
        items: list[Any] = []
        kept = e["kept"]
        if kept is None:
            items.append(f"kept at 16 bits: unknown, {e['why']}")
        elif not kept["names"]:
            items.append(f"kept at 16 bits: none of its {kept['groups']} layer groups (every layer quantized)")
        else:
            share = f", {100 * kept['weight_share']:.1f} % of the weights" if kept["weight_share"] is not None else ""
            names = kept["names"][:MAX_LISTED]
            more = (f" … and {len(kept['names']) - MAX_LISTED} more (manifest.json)"
                    if len(kept["names"]) > MAX_LISTED else "")
            items.append(f"kept at 16 bits: {len(kept['names'])} of {kept['groups']} layer groups{share}: "
                         f"{compact_names(names)}{more}")
        if kept is not None and len(kept.get("by_format") or {}) > 1:  # a format menu's mixed recipe
            for fmt, fnames in kept["by_format"].items():
                more = (f" … and {len(fnames) - MAX_LISTED} more (manifest.json)" if len(fnames) > MAX_LISTED else "")
                items.append(f"chosen {fmt}: {len(fnames)} of {kept['groups']} layer groups: "
                             f"{compact_names(fnames[:MAX_LISTED])}{more}")
        if e["recipe"] is not None:
            first_recipe = first_recipe or e["recipe"]
            items.append(("recipe: ", RECIPE, _link(e["recipe"], out_dir)))
        elif e["folder"] is not None:
            items.append(f"recipe: no {RECIPE} beside its manifest in {e['folder']}")
        if e["recipe"] is not None:  # export rebuilds the cell from its manifest and recipe.json
            items.append(f"apply: quantsweep export --cell {e['folder']} --out {export_target(e['key'])}")
        out.append(("p", f"{e['key']} ({', '.join(role_text[r] for r in e['roles'])})"))
        out.append(("ul", items))
    if first_recipe is not None:
        out.append(("p", "In Python, with ModelOpt (the recipe's integer block-size keys restored by load_recipe):"))
        out.append(("code", APPLY_SNIPPET.format(recipe=first_recipe)))
    return out
