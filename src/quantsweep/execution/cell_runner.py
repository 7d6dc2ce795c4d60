"""Running one planned cell end to end: fresh model copy -> AutoQuantize -> quality -> manifest + row.

Failures inside a cell never escape as exceptions (except Ctrl-C): they become an error row with the reason
(ERROR, or OOM), so the sweep goes on.
"""

from __future__ import annotations

import gc
import hashlib
import json
import math
import time
import traceback
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch

from ..engine.autoquant import CellError, SearchResult, nonfinite_scores, run_auto_quantize
from ..engine.data import TokenSamples, make_batches
from ..engine.models import LoadedModel
from ..engine.quality import BaselineOutputs, compare_to_baseline
from ..overlay import to_jsonable
from ..planning import Cell
from ..quant_summary import quantizer_summary
from ..schema import Matrix
from ..store.validity import row_reasons
from .telemetry import PeakMemory

ROW_SCHEMA_VERSION = "1"
# fields a row copies from the planned cell (`Cell.summary`)
ROW_PLAN_FIELDS = (
    "config_hash", "search_hash", "key", "pair", "weight", "activation", "granularity", "dataset_size", "samples",
    "effective_bits_target", "format_bits", "weight_quantizer", "input_quantizer", "calibration",
)


@dataclass
class SweepContext:
    """What every cell of a sweep shares: loaded once, reused."""

    matrix: Matrix
    loaded: LoadedModel
    samples: TokenSamples
    eval_batches: list[dict[str, torch.Tensor]]
    baseline: BaselineOutputs
    versions: dict[str, Any]
    engine: str = "naive"
    _batch_cache: dict[tuple[int, bool], list[dict[str, torch.Tensor]]] = field(default_factory=dict)

    def batches(self, n_samples: int) -> list[dict[str, torch.Tensor]]:
        labels = self.matrix.autoquant.method == "gradient"
        key = (n_samples, labels)
        if key not in self._batch_cache:
            self._batch_cache[key] = make_batches(
                self.samples.pool(n_samples), self.matrix.autoquant.batch_size, self.loaded.device, labels
            )
        return self._batch_cache[key]


@dataclass
class CellRun:
    """The outcome of one execution of a cell."""

    cell: Cell
    status: str  # "ok" | "error"
    started_at: str
    finished_at: str
    result: SearchResult | None = None
    quality: dict[str, Any] | None = None
    telemetry: dict[str, Any] = field(default_factory=dict)
    error: str | None = None
    error_type: str | None = None
    fake_quant_backend: str = "modelopt"
    engine: str = "naive"  # which path produced it: "naive" (one AutoQuantize call) or "shared"

    def fingerprint(self) -> str | None:
        """Hash of what the cell computed (chosen recipe + raw scores), for DUPLICATE_RESULT and determinism."""
        if self.result is None:
            return None
        payload = json.dumps(
            {"recipe": self.result.recipe_map(), "scores": self.result.raw_score_vector()}, sort_keys=True
        )
        return hashlib.sha256(payload.encode()).hexdigest()[:16]


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def _is_oom(exc: BaseException) -> bool:
    if isinstance(exc, torch.cuda.OutOfMemoryError | MemoryError):
        return True
    return isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower()


def cell_format_config(ctx: SweepContext, cell: Cell) -> tuple[dict[str, Any], str]:
    """The config handed to ModelOpt and the fake-quant backend it uses for NVFP4/MX quantizers.

    On a CPU ModelOpt cannot fake-quantize NVFP4/MX, so `auto` routes those quantizers to quantsweep's
    pure-PyTorch backend (`engine/torch_formats.py`); on CUDA `auto` keeps ModelOpt's own kernels.
    """
    from ..engine import torch_formats

    choice = ctx.matrix.autoquant.fake_quant_backend
    if choice == "torch" or (choice == "auto" and ctx.loaded.device.type != "cuda"):
        config, used = torch_formats.with_torch_backend(cell.config)
        if used:
            torch_formats.register()
            return config, torch_formats.BACKEND_NAME
    return cell.config, "modelopt"


def describe_failure(exc: BaseException) -> tuple[str, str]:
    """(error text for the row, error type): a CellError's own message and reason, else the exception type,
    message and where it was raised; out-of-memory errors get the type OOM."""
    if isinstance(exc, CellError):
        return str(exc), exc.reason
    tb = traceback.extract_tb(exc.__traceback__)
    where = f" (at {Path(tb[-1].filename).name}:{tb[-1].lineno})" if tb else ""
    return f"{type(exc).__name__}: {exc}{where}", "OOM" if _is_oom(exc) else type(exc).__name__


def execute_cell(ctx: SweepContext, cell: Cell, on_step: Any = None) -> CellRun:
    """Run one cell; never raises except KeyboardInterrupt."""
    m = ctx.matrix
    started = _now()
    t_start = time.perf_counter()
    phases: dict[str, float] = {}
    run = CellRun(cell=cell, status="error", started_at=started, finished_at=started)
    mem = PeakMemory(ctx.loaded.device)
    model = None
    try:
        with mem:
            t = time.perf_counter()
            model = ctx.loaded.fresh_copy()
            phases["copy"] = time.perf_counter() - t
            n = max(cell.calib_samples, cell.score_samples)
            batches = ctx.batches(n)
            label = f"{cell.pair.name}/{cell.granularity.name}"
            config, run.fake_quant_backend = cell_format_config(ctx, cell)
            model, result = run_auto_quantize(
                model,
                formats=[(label, config)],
                budget=cell.budget,
                batches=batches,
                calib_steps=cell.calib_steps,
                score_steps=cell.score_steps,
                method=m.autoquant.method,
                disabled_layers=m.autoquant.disabled_layers,
                on_step=on_step,
            )
            phases.update(result.phases)
            t = time.perf_counter()
            if on_step is not None:
                on_step("evaluate")
            quality = compare_to_baseline(model, ctx.eval_batches, ctx.baseline)
            phases["evaluate"] = time.perf_counter() - t
        run.status, run.result, run.quality = "ok", result, quality
    except KeyboardInterrupt:
        raise
    except Exception as exc:  # a failing cell becomes an error row; the sweep goes on
        run.error, run.error_type = describe_failure(exc)
    finally:
        del model
        gc.collect()
        if ctx.loaded.device.type == "cuda":
            torch.cuda.empty_cache()
    run.finished_at = _now()
    tokens = {
        "calibration": run.result.tokens.get("calibrate", 0) if run.result else 0,
        "scoring": run.result.tokens.get("score", 0) if run.result else 0,
        "evaluation": sum(int(b["input_ids"].numel()) for b in ctx.eval_batches) if run.status == "ok" else 0,
    }
    run.telemetry = {
        "device": str(ctx.loaded.device),
        "wall_s": round(time.perf_counter() - t_start, 3),
        "phases": {k: round(v, 3) for k, v in phases.items()},
        **mem.as_mb(),
        "tokens": tokens,
        "tokens_processed": sum(tokens.values()),
        "forward_calls": run.result.forward_calls if run.result else {},
        "torch_threads": torch.get_num_threads(),
    }
    return run


def determinism(runs: list[CellRun], rtol: float) -> dict[str, Any] | None:
    """Compare repeated executions: same chosen recipe and raw per-layer scores within `rtol`."""
    ok_runs = [r for r in runs if r.status == "ok" and r.result is not None]
    if len(runs) < 2:
        return None
    if len(ok_runs) < len(runs):
        return {"runs": len(runs), "deterministic": False, "identical_recipe": False, "max_rel_score_diff": None,
                "note": "a repeat failed"}
    ref = ok_runs[0].result
    assert ref is not None
    identical = all(r.result is not None and r.result.recipe_map() == ref.recipe_map() for r in ok_runs[1:])
    max_rel = 0.0
    for r in ok_runs[1:]:
        assert r.result is not None
        a, b = ref.raw_score_vector(), r.result.raw_score_vector()
        if len(a) != len(b):
            max_rel = math.inf
            continue
        for x, y in zip(a, b, strict=True):
            denom = max(abs(x), abs(y), 1e-30)
            max_rel = max(max_rel, abs(x - y) / denom if (x or y) else 0.0)
    return {
        "runs": len(runs),
        "identical_recipe": identical,
        "max_rel_score_diff": max_rel,
        "rtol": rtol,
        "deterministic": identical and max_rel <= rtol,
    }


def build_manifest(ctx: SweepContext, run: CellRun) -> dict[str, Any]:
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
        },
        "model": ctx.loaded.info,
        "dataset": {
            **m.dataset.model_dump(mode="json", exclude={"sizes"}),
            "calib_samples": cell.calib_samples,
            "score_samples": cell.score_samples,
            "fingerprint": ctx.samples.fingerprint,
        },
        "quantization": {
            "pair": cell.pair.to_dict(),
            "granularity": {
                "name": cell.granularity.name,
                "overrides": to_jsonable(cell.granularity.overrides),
                "description": cell.granularity.description,
            },
            "effective_quantizer_summary": to_jsonable(quantizer_summary(cell.config)),
            "effective_config": to_jsonable(cell.config),
            "format_bits": cell.format_bits,
            "overlay_warnings": list(cell.warnings),
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
            "modelopt_call": "mtq.auto_quantize(quantization_formats=[effective_config], ...)",
        },
        "search": None
        if res is None
        else {
            "achieved_bits": res.achieved_bits,
            "total_score": res.total_score,
            "satisfied": res.satisfied,
            "layer_groups": len(res.groups),
            "quantized_groups": res.quantized_groups,
        },
        "layers": [] if res is None else [g.to_dict() for g in res.groups],
        "quality": run.quality,
        "telemetry": run.telemetry,
        "status": run.status,
        "error": run.error,
        "versions": ctx.versions,
        "recipe_file": "recipe.json" if res is not None else None,
    }


def build_row(ctx: SweepContext, run: CellRun, det: dict[str, Any] | None, attempt: int) -> dict[str, Any]:
    cell, res = run.cell, run.result
    plan = cell.summary()  # the cell's axes and effective quantizers, as dry-run shows them
    row: dict[str, Any] = {
        "schema_version": ROW_SCHEMA_VERSION,
        "cell_id": cell.id,
        **{k: plan[k] for k in ROW_PLAN_FIELDS},
        "model": ctx.loaded.info.get("name"),
        "method": ctx.matrix.autoquant.method,
        "engine": run.engine,
        "device": str(ctx.loaded.device),
        "fake_quant_backend": run.fake_quant_backend,
        "status": run.status,
        "error": run.error,
        "error_type": run.error_type,
        "achieved_bits": res.achieved_bits if res else None,
        "total_score": res.total_score if res else None,
        "satisfied": res.satisfied if res else None,
        "layer_count": len(res.groups) if res else None,
        "quantized_layer_count": res.quantized_groups if res else None,
        "scores_finite": (not nonfinite_scores(res)) if res else None,
        "quality": run.quality,
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
