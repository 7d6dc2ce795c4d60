"""`quantsweep dry-run`: the plan of a sweep as a document, and its Rich rendering. No side effects."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from .gitinfo import git_commit
from .inputs.preflight import preflight_inputs
from .matrix_io import load_matrix
from .planning import DEFAULT_MAX_CELLS, expand
from .schema import SCHEMA_VERSION


def build_dry_run(matrix_path: Path, max_cells: int = DEFAULT_MAX_CELLS) -> dict[str, Any]:
    m = load_matrix(matrix_path)
    input_warnings = preflight_inputs(m)  # the model's headers and the dataset, as `run` checks them
    plan = expand(m, str(matrix_path), max_cells)
    warnings = [*plan.warnings, *input_warnings]
    if m.model.trust_remote_code:
        warnings.insert(0, "model.trust_remote_code is true: `run` will execute the model folder's own Python code")
    canary: dict[str, Any] = {"enabled": m.canary.enabled}
    if plan.canary_cell is not None:
        canary.update(
            {
                "cell": plan.canary_cell.key,
                "cell_id": plan.canary_cell.id,
                "repeats": m.canary.repeats,
                "max_baseline_perplexity": m.canary.max_baseline_perplexity,
                "score_rtol": m.canary.score_rtol,
                "checks": ["baseline_finite_loss", "baseline_perplexity", "determinism", "telemetry_present"],
            }
        )
    return {
        "schema_version": SCHEMA_VERSION,
        "kind": "quantsweep.dry_run",
        "matrix": {"file": str(matrix_path), "name": m.name, "description": m.description},
        "commit": git_commit(matrix_path),
        "model": {**m.model.model_dump(mode="json"), "display_name": m.model.display_name()},
        "dataset": m.dataset.model_dump(mode="json"),
        "autoquant": m.autoquant.model_dump(mode="json"),
        "repeats": m.repeats,
        "sweep_dir": str(plan.sweep_dir),
        "cells": [c.summary() for c in plan.cells],
        "canary": canary,
        "labels": dict(m.labels),
        "kpi_thresholds": m.kpi.model_dump(mode="json"),
        "execution": m.execution.model_dump(mode="json"),
        "warnings": warnings,
        "estimate": plan.estimate(),
    }


def _minimum(cell: dict[str, Any]) -> str:
    """' (min 15.82)' when disabled layers lift the least reachable bits above the format's own."""
    low = cell.get("min_effective_bits")
    return f" (min {low:.4g})" if low is not None and low > cell["format_bits"] + 1e-9 else ""


def _export_mark(cell: dict[str, Any]) -> str:
    """The dry-run table's `export` column: can `quantsweep export` write this cell (export_support.py)."""
    return {True: "yes", False: "no", None: "unknown"}[cell.get("exportable")]


def export_notes(cells: list[dict[str, Any]]) -> list[str]:
    """One line per pair/granularity that cannot be exported (or whose exportability is unknown), with the why."""
    seen: dict[str, str] = {}
    for c in cells:
        if c.get("exportable") is not True:
            name = f"{c['pair']}/{c['granularity']}"
            label = "not exportable" if c.get("exportable") is False else "exportability unknown"
            seen.setdefault(name, f"{label}: {name}: {c.get('export_reason')}")
    return list(seen.values())


def render_dry_run(doc: dict[str, Any], console: Console) -> None:
    mx, model, ds, aq = doc["matrix"], doc["model"], doc["dataset"], doc["autoquant"]
    commit = doc["commit"]
    commit_text = "not in a git work tree" if commit is None else commit["sha"][:12] + (" (dirty)" if commit["dirty"] else "")
    console.print(f"[bold]Matrix[/] {mx['name']}  ({mx['file']})  commit {commit_text}")
    if mx["description"]:
        console.print(f"  {mx['description']}")
    src = model["source"] + (f" {model['path']}" if model.get("path") else "") + (
        f" preset={model['preset']}" if model.get("preset") else ""
    )
    console.print(f"[bold]Model[/] {model['display_name']}: {src}, dtype {model['dtype']}, device {model['device']}")
    sizes = ", ".join(f"{k}={v}" for k, v in ds["sizes"].items())
    console.print(
        f"[bold]Dataset[/] {ds['source']}{' ' + ds['path'] if ds.get('path') else ''}: seq_len {ds['seq_len']}, "
        f"sizes {sizes}, held-out {ds['eval_samples']} samples, seed {ds['seed']}"
    )
    console.print(
        f"[bold]AutoQuantize[/] method {aq['method']}, batch {aq['batch_size']}, budgets {aq['effective_bits']}, "
        f"score_size {aq['score_size'] or 'all'}, calib_size {aq['calib_size']}"
        + (f", disabled {aq['disabled_layers']}" if aq["disabled_layers"] else "")
    )
    t = Table(title=f"{len(doc['cells'])} cells -> {doc['sweep_dir']}")
    for col in ("id", "pair", "W/A", "granularity", "size", "bits (budget/format)", "weight quantizer", "input quantizer",
                "export", "path", "flags"):
        t.add_column(col, overflow="fold")
    for c in doc["cells"]:
        t.add_row(
            c["id"],
            c["pair"],
            f"{c['weight']}/{c['activation']}",
            c["granularity"],
            f"{c['dataset_size']} ({c['samples']})",
            f"{c['effective_bits_target']:g}/{c['format_bits']:g}" + _minimum(c),
            c["weight_quantizer"],
            c["input_quantizer"],
            _export_mark(c),
            c["path"],
            ",".join(c["flags"]),
        )
    console.print(t)
    for line in export_notes(doc["cells"]):
        console.print(line, highlight=False)
    can = doc["canary"]
    if can["enabled"]:
        console.print(
            f"[bold]Canary[/] {can.get('cell')} x{can.get('repeats')}: baseline perplexity < "
            f"{can.get('max_baseline_perplexity')}, scores within rtol {can.get('score_rtol')}, telemetry present"
        )
    else:
        console.print("[bold]Canary[/] disabled")
    if doc["labels"]:
        console.print("[bold]Labels[/] " + ", ".join(f"{k}={v}" for k, v in doc["labels"].items()))
    console.print("[bold]KPI thresholds[/] " + ", ".join(f"{k}={v}" for k, v in doc["kpi_thresholds"].items()))
    ex = doc["execution"]
    if ex["executor"] == "ray":
        where = ex["ray_address"] or "a local Ray instance"
        console.print(
            f"[bold]Execution[/] Ray ({where}): workers {ex['workers'] or 'one per GPU'}, "
            f"GPUs per worker {ex['gpus_per_worker'] if ex['gpus_per_worker'] is not None else 'auto'}",
            highlight=False,
        )
    else:
        console.print("[bold]Execution[/] local (this process)")
    est = doc["estimate"]
    console.print(
        f"[bold]Work[/] {est['cells']} AutoQuantize calls, {est['unique_formats']} unique formats; "
        f"per-cell path: {est['calibration_batches_per_cell_sum']} calibration + "
        f"{est['scoring_batches_per_cell_sum']} scoring batches; canary {est['canary_runs']} runs"
    )
    for w in doc["warnings"]:
        console.print(f"[yellow]warning:[/] {w}", highlight=False)
