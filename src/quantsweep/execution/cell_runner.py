"""Running one planned cell end to end: fresh model copy -> AutoQuantize -> quality -> manifest + row.

Failures inside a cell never escape as exceptions (except Ctrl-C): they become an error row with the reason
(ERROR, or OOM), so the sweep goes on.
"""

from __future__ import annotations

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

from ..engine.autoquant import CellError, SearchResult, run_auto_quantize
from ..engine.host_memory import release_memory
from ..engine.kv_cache import kv_cache_applied
from ..engine.quality import compare_to_baseline
from ..planning import Cell
from ..schema import Matrix
from .context import SweepContext
from .telemetry import PeakMemory, hardware_telemetry
from .trust_checks import trust_checks


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
    trust: dict[str, Any] | None = None  # recipe stability, layer fidelity (execution/trust_checks.py)
    long_context: dict[str, Any] | None = None  # quality and memory per evaluation.seq_lens (engine/long_context.py)
    kv_cache: dict[str, Any] | None = None  # the KV-cache quantization applied for the evaluation (engine/kv_cache.py)

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


def formats_for(matrix: Matrix, device_type: str, cell: Cell) -> tuple[list[tuple[str, dict[str, Any]]], str]:
    """The (label, config) formats handed to ModelOpt — one for a single pair, the members for a menu — and the
    fake-quant backend they use for NVFP4/MX quantizers.

    On a CPU ModelOpt cannot fake-quantize NVFP4/MX, so `auto` routes those quantizers to quantsweep's
    pure-PyTorch backend (`engine/torch_formats.py`); on CUDA `auto` keeps ModelOpt's own kernels. It needs only
    the device type, so a Ray driver that loaded no model plans union calls exactly as its workers run them.
    """
    from ..engine import torch_formats

    formats = list(cell.formats) or [(f"{cell.pair.name}/{cell.granularity.name}", cell.config)]
    choice = matrix.autoquant.fake_quant_backend
    if choice == "torch" or (choice == "auto" and device_type != "cuda"):
        routed = [(label, *torch_formats.with_torch_backend(cfg)) for label, cfg in formats]
        if any(used for _, _, used in routed):
            torch_formats.register()
            return [(label, cfg) for label, cfg, _ in routed], torch_formats.BACKEND_NAME
    return formats, "modelopt"


def format_config_for(matrix: Matrix, device_type: str, cell: Cell) -> tuple[dict[str, Any], str]:
    """`formats_for` of a single-format cell: its one config and backend."""
    formats, backend = formats_for(matrix, device_type, cell)
    if len(formats) != 1:
        raise ValueError(f"{cell.key} is a format menu: use formats_for")
    return formats[0][1], backend


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
    mem = PeakMemory(ctx.loaded.devices, gpu_period_s=m.telemetry.sample_period_s)
    model = None
    try:
        with mem:
            t = time.perf_counter()
            model = ctx.loaded.take_model()  # the master the first time, then rebuilt: never two copies
            phases["model"] = time.perf_counter() - t
            n = max(cell.calib_samples, cell.score_samples)
            batches = ctx.batches(n)
            formats, run.fake_quant_backend = formats_for(m, ctx.loaded.device.type, cell)
            model, result = run_auto_quantize(
                model,
                formats=formats,  # a menu: one call with all its formats, as ModelOpt's own multi-format search
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
            with kv_cache_applied(model, cell.kv_cache, batches, ctx.loaded.device.type,
                                  m.autoquant.fake_quant_backend) as run.kv_cache:
                quality = compare_to_baseline(model, ctx.eval_batches, ctx.baseline)
                phases["evaluate"] = time.perf_counter() - t
                if ctx.lengths:
                    run.long_context = evaluate_long_context(ctx, model, cell, mem, phases, on_step)
            t = time.perf_counter()
            run.trust = trust_checks(ctx, cell, result, model, formats[0] if len(formats) == 1 else None)
            phases["trust"] = time.perf_counter() - t
        run.status, run.result, run.quality = "ok", result, quality
    except KeyboardInterrupt:
        raise
    except Exception as exc:  # a failing cell becomes an error row; the sweep goes on
        run.error, run.error_type = describe_failure(exc)
    finally:
        del model
        release_memory(ctx.loaded.device)
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
        **hardware_telemetry([mem], m.telemetry),
    }
    return run


def evaluate_long_context(ctx: SweepContext, model: Any, cell: Cell, mem: PeakMemory, phases: dict[str, float],
                          on_step: Any = None) -> dict[str, Any]:
    """The cell's chosen recipe (with its KV-cache setting) at every evaluation length; timed as its own phase."""
    from ..engine.long_context import evaluate_lengths

    t = time.perf_counter()
    if on_step is not None:
        on_step("long_context")
    out = evaluate_lengths(model, ctx.lengths, ctx.loaded.devices, cell.kv_cache, mem)
    phases["long_context"] = time.perf_counter() - t
    return out


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
