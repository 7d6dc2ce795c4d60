"""`layer-sensitivity-report.{md,json}` of one cell, built from its `manifest.json` alone (pure).

Structure follows the seed system's reports (Summary, Dataset, Quantization, Layer Sensitivity Table) with a
Quality section added. Layers are sorted by sensitivity (the raw score of the cell's format), most sensitive
first. Number formatting is pinned (`.4f` bits, `.3e` scores) so regenerating never churns the files.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..errors import InputError
from ..store.atomic import atomic_write_json, atomic_write_text, check_output_dir, dumps, staged_outputs
from .decision import APPLY_SNIPPET, RECIPE, compact_names, export_target, kept_layers
from .manifest_io import REPORT, read_manifest_file

NONE_LABEL = "none"
REPORT_MD = "layer-sensitivity-report.md"
REPORT_JSON = "layer-sensitivity-report.json"
MANIFEST = "manifest.json"


def layer_rows(manifest: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per layer group: the most aggressive non-NONE format's bits and raw score, sorted descending."""
    rows = []
    for g in manifest.get("layers", []):
        idx = [i for i, f in enumerate(g["formats"]) if f != NONE_LABEL] or list(range(len(g["formats"])))
        i = idx[0]
        rows.append(
            {
                "layer": g["name"],
                "format": g["formats"][i],
                "num_bits": float(g["bits"][i]),
                "sensitivity": float(g["raw_scores"][i]),
                "size_cost": float(g["costs"][i]),
                "chosen": g["chosen"],
                "chosen_bits": float(g["chosen_bits"]),
                "module_names": g["module_names"],
            }
        )
    rows.sort(key=lambda r: (-r["sensitivity"], r["layer"]))
    return rows


def _fmt(v: Any, spec: str) -> str:
    if isinstance(v, int | float) and not isinstance(v, bool):
        return format(v, spec)
    return "n/a" if v is None else str(v)


def _kv_table(rows: list[tuple[str, str]]) -> list[str]:
    out = ["| Key | Value |", "|---|---|"]
    out += [f"| {k} | {v} |" for k, v in rows]
    return out


def render_markdown(manifest: dict[str, Any]) -> str:
    cell, model, data = manifest["cell"], manifest["model"], manifest["dataset"]
    quant, search, aq = manifest["quantization"], manifest.get("search") or {}, manifest["autoquant"]
    quality = manifest.get("quality") or {}
    lines = [f"# AutoQuant Layer Sensitivity ({cell['key']})", "", "## Summary", ""]
    lines += _kv_table(
        [
            ("Cell id", cell["id"]),
            ("Model", f"{model.get('name')} ({model.get('architecture')}, {model.get('dtype')}, {model.get('device')})"),
            ("Quant pair", cell["pair"]),
            ("Granularity", cell["granularity"]),
            ("Dataset size", f"{cell['dataset_size']} ({cell['samples']} samples)"),
            ("Method", aq["method"]),
            ("Effective bits (target)", _fmt(cell["effective_bits_target"], ".4f")),
            ("Effective bits (from search)", _fmt(search.get("achieved_bits"), ".4f")),
            ("Total AutoQuant score", _fmt(search.get("total_score"), ".6e")),
            ("Constraint satisfied", str(search.get("satisfied"))),
            ("Quantized layer groups", f"{search.get('quantized_groups')} / {search.get('layer_groups')}"),
            ("Kept at 16 bits", _kept_text(manifest)),
        ]
    )
    lines += ["", "## Quality (held-out, teacher-forced against the unquantized model)", ""]
    lines += _kv_table(
        [
            ("Mean KL(base‖quant)", f"{_fmt(quality.get('kl_mean'), '.6e')} ± {_fmt(quality.get('kl_stderr'), '.1e')}"),
            ("KL p50 / p90 / p99 / max", " / ".join(_fmt(quality.get(k), ".3e") for k in ("kl_p50", "kl_p90", "kl_p99", "kl_max"))),
            ("Perplexity base / quant", f"{_fmt(quality.get('ppl_base'), '.4f')} / {_fmt(quality.get('ppl_quant'), '.4f')}"),
            ("Perplexity ratio", _fmt(quality.get("ppl_ratio"), ".6f")),
            ("Top-1 agreement", _fmt(quality.get("top1_agreement"), ".6f")),
            ("Evaluation tokens", _fmt(quality.get("eval_tokens"), "d")),
        ]
    )
    lines += ["", "## Dataset", ""]
    lines += _kv_table(
        [
            ("Source", str(data.get("source")) + (f" ({data['path']})" if data.get("path") else "")),
            ("Size", f"{cell['dataset_size']}"),
            ("Calibration seq len", _fmt(data.get("seq_len"), "d")),
            ("Batch size", _fmt(aq.get("batch_size"), "d")),
            ("Calibration samples / batches", f"{data.get('calib_samples')} / {aq.get('calib_steps')}"),
            ("Scoring samples / batches", f"{data.get('score_samples')} / {aq.get('score_steps')}"),
            ("Held-out evaluation samples", _fmt(data.get("eval_samples"), "d")),
            ("Data fingerprint", str(data.get("fingerprint"))),
        ]
    )
    summary = quant.get("effective_quantizer_summary", {})
    lines += ["", "## Quantization", ""]
    lines += _kv_table(
        [
            ("Base pair", f"{quant['pair']['name']} ({quant['pair'].get('base_builtin') or 'derived config'})"),
            ("Dtypes", f"W={quant['pair']['weight']} A={quant['pair']['activation']}"),
            ("Granularity", quant["granularity"]["name"]),
            ("Weight quantizer", summary.get("*weight_quantizer", {}).get("description", "n/a")),
            ("Input quantizer", summary.get("*input_quantizer", {}).get("description", "n/a")),
            ("Calibration", str(summary.get("algorithm"))),
            ("Format bits", _fmt(quant.get("format_bits"), "g")),
            ("Quant cfg overrides", "see below"),
        ]
    )
    lines += ["", "```json", json.dumps(quant["granularity"]["overrides"], indent=2, sort_keys=True), "```"]
    for w in quant.get("overlay_warnings") or []:
        lines.append(f"> warning: {w}")
    lines += [
        "",
        "## Layer Sensitivity Table",
        "",
        "Sensitivity is AutoQuantize's raw score of the cell's format for the layer group (higher = quantizing it"
        " hurts the loss more); Size Cost is the group's weight cost in that format; Chosen is what the search"
        " picked under the budget.",
        "",
        "| Layer | Num Bits | Sensitivity | Size Cost | Chosen |",
        "|---|---|---|---|---|",
    ]
    for r in layer_rows(manifest):
        lines.append(
            f"|{r['layer']}|{r['num_bits']:.1f}|{r['sensitivity']:.3e}|{r['size_cost']:.3e}|"
            f"{r['chosen']} ({r['chosen_bits']:g})|"
        )
    lines += _apply_section(cell)
    return "\n".join(lines) + "\n"


def _kept_text(manifest: dict[str, Any]) -> str:
    """The layer groups the recipe keeps unquantized, compacted (`mlp.down_proj in layers 0-2; lm_head`)."""
    kept = kept_layers(manifest)
    if kept is None:
        return "n/a"
    if not kept["names"]:
        return "none (every layer group quantized)"
    share = f", {100 * kept['weight_share']:.1f} % of the weights" if kept["weight_share"] is not None else ""
    return f"{len(kept['names'])} of {kept['groups']}{share}: {compact_names(kept['names'])}"


def _apply_section(cell: dict[str, Any]) -> list[str]:
    """How to use this cell's recipe.json: the export command and the Python snippet, with the cell's own path as
    `run` recorded it (relative to where `run` was started), so the report stays a function of the manifest."""
    path = cell.get("path")
    if not path:
        return []
    return ["", "## Apply this recipe", "",
            f"`{path}/{RECIPE}` is the recipe above as a ModelOpt quantization config. As a Hugging Face checkpoint "
            "(docs/export.md):", "", "```console",
            f"quantsweep export --cell {path} --out {export_target(str(cell.get('key') or Path(path).name))}", "```", "",
            "In Python, with ModelOpt:", "", "```python", APPLY_SNIPPET.format(recipe=f"{path}/{RECIPE}"), "```"]


def render_json(manifest: dict[str, Any]) -> dict[str, Any]:
    return {
        "schema_version": "1",
        "cell": manifest["cell"],
        "model": manifest["model"],
        "dataset": manifest["dataset"],
        "quantization": manifest["quantization"],
        "autoquant_state": manifest.get("search"),
        "quality": manifest.get("quality"),
        "layer_sensitivity": layer_rows(manifest),
    }


def read_manifest(cell_dir: str | Path) -> dict[str, Any]:
    """The cell's manifest, with every field the reports print checked (reports/manifest_io.py)."""
    path = Path(cell_dir) / MANIFEST
    if not path.exists() and not path.is_symlink():
        raise InputError(f"{path}: no manifest (is this a cell folder of a finished sweep?)")
    return read_manifest_file(path, REPORT)


def write_reports(cell_dir: str | Path, manifest: dict[str, Any]) -> tuple[Path, Path]:
    """Both reports, rendered first and then moved into the cell folder together (never one without the other)."""
    cell_dir = Path(cell_dir)
    md_text, js_doc = render_markdown(manifest), render_json(manifest)
    for name in (REPORT_MD, REPORT_JSON):
        if (cell_dir / name).is_dir() and not (cell_dir / name).is_symlink():
            raise InputError(f"{cell_dir / name}: is a folder; the cell's report is written there")
    with staged_outputs(cell_dir) as stage:
        atomic_write_text(stage / REPORT_MD, md_text)
        atomic_write_json(stage / REPORT_JSON, js_doc)
    return cell_dir / REPORT_MD, cell_dir / REPORT_JSON


def regenerate(cell_dir: str | Path) -> tuple[Path, Path]:
    """Rebuild both reports from the manifest; the manifest itself is never written."""
    cell_dir = Path(cell_dir)
    if not cell_dir.is_dir():
        raise InputError(f"--cell {cell_dir}: " + ("is a file, not a cell folder" if cell_dir.exists()
                                                    else "no such folder"))
    check_output_dir(cell_dir, "--cell")  # the reports are written beside the manifest
    return write_reports(cell_dir, read_manifest(cell_dir))


__all__ = ["dumps", "layer_rows", "regenerate", "render_json", "render_markdown", "write_reports"]
