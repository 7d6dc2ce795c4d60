"""What a finished cell leaves behind: its manifest, recipe and reports (artifacts) and its row.

A `CellRecord` is built where the cell ran (the driver's process with the local executor, a worker with Ray) and
is committed by the driver alone, in this order: artifacts written atomically (by the worker itself when it shares
the driver's filesystem, else by the driver from the record), then the row appended to `rows.jsonl` (the commit
point). A record is plain data, so it crosses process and node boundaries.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..engine.autoquant import NONE_LABEL, nonfinite_scores
from ..overlay import to_jsonable
from ..menus import menu_quantizer_summary, menu_storage_bits
from ..quant_summary import quantizer_summary, recipe_storage_bits
from ..reports.layer_report import MANIFEST, write_reports
from ..store.atomic import atomic_write_json
from ..store.validity import row_reasons
from .cell_runner import CellRun, determinism
from .context import RecordContext

ROW_SCHEMA_VERSION = "1"
RECIPE_FILE = "recipe.json"
# fields a row copies from the planned cell (`Cell.summary`)
ROW_PLAN_FIELDS = (
    "config_hash", "search_hash", "key", "pair", "weight", "activation", "granularity", "dataset_size", "samples",
    "effective_bits_target", "format_bits", "weight_quantizer", "input_quantizer", "calibration",
    "exportable", "export_reason", "export_format",  # the plan's exportability (export_support.py)
)


@dataclass
class CellRecord:
    """One cell's row and artifacts, ready to commit."""

    cell_id: str
    path: str  # the cell folder, relative to the driver's working directory as planned
    row: dict[str, Any]
    manifest: dict[str, Any]
    recipe: dict[str, Any] | None
    artifacts_written: bool = False  # True once the worker wrote them into the shared output root


def make_record(
    ctx: RecordContext, runs: list[CellRun], attempt: int, rtol: float | None = None, from_canary: bool = False
) -> CellRecord:
    """The record of a cell from its execution(s): the first run is recorded, repeats give its determinism."""
    first = runs[0]
    det = determinism(runs, rtol if rtol is not None else ctx.matrix.canary.score_rtol) if len(runs) > 1 else None
    row = build_row(ctx, first, det, attempt)
    row["from_canary"] = from_canary
    return CellRecord(
        cell_id=first.cell.id,
        path=str(first.cell.path),
        row=row,
        manifest=build_manifest(ctx, first),
        recipe=with_calibration(first.result.recipe_config, first.cell.config) if first.result is not None else None,
    )


def with_calibration(recipe: dict[str, Any], cell_config: dict[str, Any]) -> dict[str, Any]:
    """The chosen recipe with the calibration algorithm the cell was scored and evaluated with.

    ModelOpt's `get_auto_quantize_config` always names `max` (its per-recipe algorithms are "not preserved"), so
    an AWQ or SmoothQuant cell's `recipe.json`, applied with `mtq.quantize`, would silently give another model
    than the one measured. With the format's algorithm, the file reproduces the cell (as `export` does)."""
    algorithm = cell_config.get("algorithm")
    return {**recipe, "algorithm": algorithm if algorithm is not None else recipe.get("algorithm", "max")}


def _storage_bits(cell: Any, res: Any) -> dict[str, float | None]:
    """Bits per weight counting scales (docs/metrics.md): of the chosen recipe, and of the format everywhere (a
    menu: each layer in the format it chose, and its lowest-bits member everywhere)."""
    if res is None:
        return {"storage_bits": None, "format_storage_bits": None}
    if not cell.is_menu:
        layers = [(g.weight_shapes, g.chosen != NONE_LABEL) for g in res.groups]
        chosen, everywhere = recipe_storage_bits(cell.config, layers)
        return {"storage_bits": chosen, "format_storage_bits": everywhere}
    return dict(zip(("storage_bits", "format_storage_bits"), menu_storage_bits(cell.formats, res.groups), strict=True))


def write_artifacts(record: CellRecord, base: Path | None = None) -> None:
    """Write a cell's recipe, manifest and layer reports atomically into its folder (under `base` if given)."""
    cell_dir = (base / record.path) if base is not None else Path(record.path)
    if record.recipe is not None:
        atomic_write_json(cell_dir / RECIPE_FILE, record.recipe)
    atomic_write_json(cell_dir / MANIFEST, record.manifest)
    write_reports(cell_dir, record.manifest)


def build_manifest(ctx: RecordContext, run: CellRun) -> dict[str, Any]:
    cell, m = run.cell, ctx.matrix
    res = run.result
    return {
        "schema_version": ROW_SCHEMA_VERSION,
        "kind": "quantsweep.cell_manifest",
        "created_at": run.finished_at,
        "cell": {
            "id": cell.id,
            "config_hash": cell.config_hash,
            "key": cell.key,
            "pair": cell.pair.name,
            "granularity": cell.granularity.name,
            "dataset_size": cell.size_name,
            "samples": cell.samples,
            "effective_bits_target": cell.budget,
            "path": str(cell.path),
            **({"kv_cache": cell.kv_cache} if cell.kv_in_path else {}),
        },
        "model": ctx.model_info,
        "dataset": {
            **m.dataset.model_dump(mode="json", exclude={"sizes"}),
            "calib_samples": cell.calib_samples,
            "score_samples": cell.score_samples,
            "fingerprint": ctx.samples_fingerprint,
        },
        "quantization": {
            "pair": cell.pair.to_dict(),
            "granularity": {
                "name": cell.granularity.name,
                "overrides": to_jsonable(cell.granularity.overrides),
                "description": cell.granularity.description,
            },
            "effective_quantizer_summary": to_jsonable(
                menu_quantizer_summary(cell.formats) if cell.is_menu else quantizer_summary(cell.config)
            ),
            "effective_config": to_jsonable(cell.config),  # a menu: its menu document (menus.py)
            "format_bits": cell.format_bits,
            "overlay_warnings": list(cell.warnings),
            **({"kv_cache": to_jsonable(run.kv_cache) if run.kv_cache is not None else {"kv_cache": cell.kv_cache}}
               if cell.kv_in_path else {}),
        },
        "autoquant": {
            "method": m.autoquant.method,
            "batch_size": m.autoquant.batch_size,
            "effective_bits_target": cell.budget,
            "calib_steps": cell.calib_steps,
            "score_steps": cell.score_steps,
            "disabled_layers": list(m.autoquant.disabled_layers),
            "engine": run.engine,
            "fake_quant_backend": run.fake_quant_backend,
            "modelopt_call": "mtq.auto_quantize(quantization_formats=[effective_config], ...)" if not cell.is_menu
            else "mtq.auto_quantize(quantization_formats=[each config of effective_config.menu], ...)",
        },
        "search": None
        if res is None
        else {
            "achieved_bits": res.achieved_bits,
            "total_score": res.total_score,
            "satisfied": res.satisfied,
            "layer_groups": len(res.groups),
            "quantized_groups": res.quantized_groups,
            "solver": res.solver,
        },
        "layers": [] if res is None else [g.to_dict() for g in res.groups],
        "quality": run.quality,
        "trust": run.trust,
        **({"long_context": run.long_context} if run.long_context is not None else {}),
        "telemetry": run.telemetry,
        "status": run.status,
        "error": run.error,
        "versions": ctx.versions,
        "recipe_file": "recipe.json" if res is not None else None,
    }


def build_row(ctx: RecordContext, run: CellRun, det: dict[str, Any] | None, attempt: int) -> dict[str, Any]:
    cell, res = run.cell, run.result
    plan = cell.summary()  # the cell's axes and effective quantizers, as dry-run shows them
    row: dict[str, Any] = {
        "schema_version": ROW_SCHEMA_VERSION,
        "cell_id": cell.id,
        **{k: plan[k] for k in ROW_PLAN_FIELDS},
        **({"kv_cache": cell.kv_cache} if cell.kv_in_path else {}),
        "model": ctx.model_info.get("name"),
        "method": ctx.matrix.autoquant.method,
        "engine": run.engine,
        "device": ctx.device,
        "fake_quant_backend": run.fake_quant_backend,
        "status": run.status,
        "error": run.error,
        "error_type": run.error_type,
        "achieved_bits": res.achieved_bits if res else None,
        "total_score": res.total_score if res else None,
        "satisfied": res.satisfied if res else None,
        "solver": res.solver if res else None,
        **_storage_bits(cell, res),
        "layer_count": len(res.groups) if res else None,
        "quantized_layer_count": res.quantized_groups if res else None,
        "scores_finite": (not nonfinite_scores(res)) if res else None,
        "quality": run.quality,
        "trust": run.trust,
        **({"long_context": run.long_context} if run.long_context is not None else {}),
        "telemetry": run.telemetry,
        "determinism": det,
        "result_fingerprint": run.fingerprint(),
        "path": str(cell.path),
        "attempt": attempt,
        "started_at": run.started_at,
        "finished_at": run.finished_at,
    }
    row["reasons"] = row_reasons(row)
    row["valid"] = not row["reasons"]
    return row
