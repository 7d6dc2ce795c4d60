"""Running cells with the shared engine: group them into union calls, then solve and evaluate each cell.

Per-cell telemetry amortises the union call's shared work over its cells (its calibrate/score/copy seconds and
tokens divided by the number of cells); the full figures of the union call are kept under `telemetry.shared`.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from typing import Any

import torch

from ..engine.autoquant import CellError
from ..engine.host_memory import release_memory, trim_host_memory
from ..engine.kv_cache import kv_cache_applied
from ..engine.quality import start_comparison
from ..engine.modelopt_bookkeeping import fast_modelopt_bookkeeping
from ..engine.quant_linear import lean_linear_forwards
from ..engine.shared import (
    PrefixCalibrationMismatch,
    UnionCall,
    UnionResult,
    calibration_depends_on_data,
    calibration_rescales_weights,
    apply_plan,
    run_union,
    shares_calibration_across_sizes,
)
from ..planning import Cell
from ..schema import Matrix
from .cell_plans import CellPlans
from .cell_runner import CellRun, _now, describe_failure, evaluate_long_context, formats_for
from .context import SweepContext
from .shared_evaluations import SharedEvaluations, evaluation_key
from .telemetry import PeakMemory, by_device_mb, hardware_telemetry
from . import stability_pipeline
from .stability_pipeline import StabilityPipeline
from .trust_checks import stability_job, trust_checks
from .work_units import UnitMember, WorkUnit


Member = tuple[Cell, list[tuple[str, dict[str, Any]]], str]  # a cell, the (label, config) it is solved with, backend


def plan_union_calls(
    matrix: Matrix, device_type: str, cells: list[Cell], prefix_calibration: bool = True, fold: bool = True
) -> list[tuple[UnionCall, list[Member]]]:
    """Group cells so that every group can share one AutoQuantize call (see engine/shared.py).

    Sizes share a call through prefixes of one list of batches; a cell whose sample counts are not multiples of
    the batch size has a short last batch that no prefix of a longer list has, so it gets a call of its own
    batches. `prefix_calibration=False` keeps max-calibrated formats at one call per size (the fallback when a
    model's calibration cannot be recorded by prefix, see engine/prefix_calibration.py).

    A format whose calibration rescales the weights (AWQ, SmoothQuant) never shares a call with another format
    (engine/shared.py::calibration_rescales_weights); its budgets still share one.

    A format menu puts all its members in one call (its recipe is one model with each layer in its chosen
    format): a data-free call when no member's calibration depends on the data, else a calibrated one at the
    cell's calibration size (by prefix when every member is max-calibrated), where a weight-only member is
    calibrated from the weights as anywhere else, so every member's scores are those of its own call.

    Weight-only cells join the one-pass calibrated call when there is one (`_fold_data_free`; `fold=False` keeps
    them apart, the retry of a folded call that failed): a weight-only format is calibrated from the weights in
    any call and scored from the same captured forward+backward, so its scores are those of a data-free call of
    its own, while the sweep saves one call's set-up and one forward+backward per score batch. Ray still splits
    the call by formats when workers would idle (execution/work_units.py).

    Needs only the matrix and the device type, so a Ray driver groups cells exactly as its workers will."""
    method = matrix.autoquant.method
    batch = matrix.autoquant.batch_size
    groups: dict[tuple, tuple[UnionCall, list[Member]]] = {}
    for cell in cells:
        formats, backend = formats_for(matrix, device_type, cell)
        configs = [config for _, config in formats]
        own_batches = bool(cell.calib_samples % batch or cell.score_samples % batch)
        free = method == "gradient" and _weight_only(formats)
        by_prefix = (
            prefix_calibration
            and not own_batches
            and method == "gradient"
            and not free
            and all(shares_calibration_across_sizes(c) for c in configs)
        )
        if free:
            key: tuple = ("data-free",)
        elif by_prefix:
            key = ("calib-max",)  # one calibration pass for every size (engine/prefix_calibration.py)
        elif method == "gradient":
            key = ("calib", cell.calib_samples)
        else:
            key = ("calib", cell.calib_samples, "score", cell.score_samples)
        if own_batches and method == "gradient":
            key = (*key, "samples", cell.calib_samples, cell.score_samples)
        if any(calibration_rescales_weights(c) for c in configs):
            key = (*key, f"{cell.pair.name}/{cell.granularity.name}")  # a call of its own: see the function
        if key not in groups:
            name = "-".join(str(k) for k in key)
            call = UnionCall(key=name, calib_steps=1 if free else cell.calib_steps, score_steps=0)
            call.prefix_calibration = by_prefix
            groups[key] = (call, [])
        call, members = groups[key]
        if by_prefix:
            call.calib_steps = max(call.calib_steps, cell.calib_steps)
        labels = [call.add_format(label, config, cell.calib_steps) for label, config in formats]
        call.score_steps = max(call.score_steps, cell.score_steps)
        call.cell_ids.append(cell.id)
        # a single format is solved under the union's label for it (as ever); a menu's members keep the cell's own
        solve_with = [(labels[0], configs[0])] if len(formats) == 1 else formats
        members.append((cell, solve_with, backend))
    return _fold_data_free(groups) if fold else list(groups.values())


def _fold_data_free(groups: dict[tuple, tuple[UnionCall, list[Member]]]) -> list[tuple[UnionCall, list[Member]]]:
    """The data-free call's plain-max cells moved into the one-pass calibrated call ("calib-max"), if both exist.

    Each weight-only format is added at the calibrated call's own size: its calibration reads the weights only
    (no forward, `calibrate_skipped`) and `UnionCall.score_key` gives its cells its one score series at every size,
    so no prefix is recorded for it and the calibration pass stays as long as the calibrated formats need. A cell
    with a format that is not plain max (a `layerwise` option) stays in the data-free call: in the calibrated call
    it would turn off the weight-only skip and the calibration twins of every format (autoquant.py's `plain_max`)."""
    free, calibrated = groups.get(("data-free",)), groups.get(("calib-max",))
    if free is None or calibrated is None:
        return list(groups.values())
    call, members = calibrated
    free_call, free_members = free
    kept: list[Member] = []
    for cell, formats, backend in free_members:
        if not all(shares_calibration_across_sizes(config) for _label, config in formats):
            kept.append((cell, formats, backend))
            continue
        labels = [call.add_format(label, config, call.calib_steps) for label, config in formats]
        solve_with = [(labels[0], formats[0][1])] if len(formats) == 1 else formats
        members.append((cell, solve_with, backend))
        call.cell_ids.append(cell.id)
        call.score_steps = max(call.score_steps, cell.score_steps)
        call.folded = True
    del groups[("data-free",)]
    if kept:  # the data-free call again, of the cells that stayed
        rest = UnionCall(key=free_call.key, calib_steps=free_call.calib_steps, score_steps=0)
        for cell, formats, _backend in kept:
            for label, config in formats:
                rest.add_format(label, config, cell.calib_steps)
            rest.score_steps = max(rest.score_steps, cell.score_steps)
            rest.cell_ids.append(cell.id)
        groups[("data-free",)] = (rest, kept)
    return list(groups.values())


def _weight_only(formats: list[tuple[str, dict[str, Any]]]) -> bool:
    """A cell none of whose formats depends on the data: one score series for every size, wherever its call."""
    return not any(calibration_depends_on_data(config) for _label, config in formats)


def refused_cells(cells: list[Cell]) -> list[Cell]:
    """Cells whose configuration ModelOpt refuses: kept out of union calls (one refused format would fail the
    whole call) and recorded as error rows straight away."""
    return [c for c in cells if "invalid_for_modelopt" in c.flags]


def unsolvable_menus(cells: list[Cell]) -> list[Cell]:
    """Menu cells with a member whose calibration rescales the weights (AWQ, SmoothQuant): the shared engine
    refuses them (an error row naming `--engine naive`).

    Why: such a format's scales stay in its own quantizers only while AutoQuantize searches; ModelOpt folds the
    chosen layers' scales into the shared weights at the end of a search with the chosen recipe
    (engine/shared.py::calibration_rescales_weights), which a union call run at 16 bits never does, so the model
    a union call leaves would not be the one a menu search gives. The naive engine runs the menu as one
    `mtq.auto_quantize` call, which ModelOpt handles itself."""
    return [c for c in cells if c.is_menu and any(calibration_rescales_weights(cfg) for cfg in c.format_configs)]


def unsolvable_message(cell: Cell) -> str:
    rescaling = [label for label, cfg in cell.formats if calibration_rescales_weights(cfg)]
    return (f"format menu {cell.pair.name}: {', '.join(rescaling)} rescales the weights in its calibration "
            "(AWQ / SmoothQuant), which the shared engine cannot solve from a union call; run this matrix with "
            "--engine naive")


def work_units(matrix: Matrix, device_type: str, engine: str, cells: list[Cell]) -> list[WorkUnit]:
    """The cells as units of work for distributed execution: one per union call (shared engine; the cells
    ModelOpt refuses form one unit of their own, which only writes their error rows), one per cell (naive)."""
    eval_steps = max(1, math.ceil(matrix.dataset.eval_samples / matrix.autoquant.batch_size))
    if engine != "shared" or matrix.repeats > 1:
        return [
            WorkUnit(c.key, [UnitMember(c.id, c.key, c.calib_steps, c.score_steps)], matrix.repeats, eval_steps)
            for c in cells
        ]
    units = []
    refused = refused_cells(cells) + unsolvable_menus(cells)
    if refused:
        units.append(WorkUnit("refused by ModelOpt", [UnitMember(c.id, c.key, 0, 0) for c in refused], 1, 0))
    for call, members in plan_union_calls(matrix, device_type, [c for c in cells if c not in refused]):
        units.append(
            WorkUnit(
                f"union {call.key}",
                [UnitMember(c.id, "+".join(label for label, _cfg in fmts), call.calib_steps, c.score_steps,
                            tuple(label for label, _cfg in fmts) if len(fmts) > 1 else (),
                            c.calib_steps if call.prefix_calibration and not _weight_only(fmts) else 0)
                 for c, fmts, _b in members],
                1,
                eval_steps,
            )
        )
    return units


def _prepare_for(union: UnionResult, calib_steps: int) -> Any:
    """For layer fidelity: a format switched on in a group brings its quantizers to the cell's calibration size
    first, as `apply_plan` (engine/shared.py) does for the groups the cell quantizes."""
    if union.prefixes is None:
        return None
    from ..engine.captured_scores import recipe_quantizers

    return lambda hparam, recipe: union.prefixes.apply(recipe_quantizers(hparam, recipe), calib_steps)


def _error_run(cell: Cell, exc: BaseException, started: str) -> CellRun:
    run = CellRun(cell=cell, status="error", started_at=started, finished_at=_now(), engine="shared")
    run.error, run.error_type = describe_failure(exc)
    return run


def execute_shared(
    ctx: SweepContext,
    cells: list[Cell],
    on_step: Callable[[str], None] | None = None,
    on_union: Callable[[UnionCall, int], None] | None = None,
) -> Iterator[CellRun]:
    """Yield one CellRun per cell (in union-call order); never raises except KeyboardInterrupt."""
    m = ctx.matrix
    invalid = refused_cells(cells)
    for cell in invalid:  # kept out of union calls: one refused format would fail the whole call
        reasons = "; ".join(w for w in cell.warnings if "rejected by ModelOpt" in w)
        yield _error_run(cell, CellError(f"ModelOpt refuses this configuration: {reasons}"), _now())
    unsolvable = [c for c in unsolvable_menus(cells) if c not in invalid]
    for cell in unsolvable:
        yield _error_run(cell, CellError(unsolvable_message(cell)), _now())
    cells = [c for c in cells if c not in invalid and c not in unsolvable]
    queue = plan_union_calls(m, ctx.loaded.device.type, cells)
    bootstraps = m.evaluation.stability.resamples > 0  # no solver processes to start for none
    processes = stability_pipeline.solver_processes(ctx.loaded.device.type) if bootstraps else 0
    with StabilityPipeline(processes) as pipeline:
        try:
            yield from _union_calls(ctx, queue, pipeline, on_step, on_union)
        except KeyboardInterrupt:
            yield from pipeline.drain()  # the cells already finished are recorded before the run stops
            raise


def _union_calls(
    ctx: SweepContext,
    queue: list[tuple[UnionCall, list[Member]]],
    pipeline: StabilityPipeline,
    on_step: Callable[[str], None] | None,
    on_union: Callable[[UnionCall, int], None] | None,
) -> Iterator[CellRun]:
    """execute_shared's union calls, in queue order; each cell's stability is solved on the pipeline's thread or in
    its solver processes."""
    m = ctx.matrix
    threads = pipeline.solver_threads  # resamples solved at once per bootstrap
    while queue:
        call, members = queue.pop(0)
        if on_union is not None:
            on_union(call, len(members))
        started = _now()
        union: UnionResult | None = None
        mem = PeakMemory(ctx.loaded.devices, gpu_period_s=m.telemetry.sample_period_s)
        model = None
        try:
            with mem:
                t = time.perf_counter()
                model = ctx.loaded.take_model()  # the master the first time, then rebuilt: never two copies
                model_s = time.perf_counter() - t
                n = max(max(c.calib_samples, c.score_samples) for c, *_ in members)
                with fast_modelopt_bookkeeping():  # ModelOpt's recipe hashing and quantizer set-up, shortened
                    union = run_union(
                        model, call, ctx.batches(n), m.autoquant.method, m.autoquant.disabled_layers, on_step
                    )
        except KeyboardInterrupt:
            raise
        except PrefixCalibrationMismatch:  # this model's calibration cannot be shared by prefix: one call per size
            model = None
            release_memory(ctx.loaded.device)
            fallback = plan_union_calls(m, ctx.loaded.device.type, [c for c, *_ in members], prefix_calibration=False)
            queue[:0] = fallback
            continue
        except Exception as exc:  # the whole group fails: one error row per cell
            model = None
            release_memory(ctx.loaded.device)
            if call.folded:  # weight-only cells folded into a calibrated call: each kind gets its own call again
                queue[:0] = plan_union_calls(m, ctx.loaded.device.type, [c for c, *_ in members], fold=False)
                continue
            for cell, *_ in members:
                yield _error_run(cell, exc, started)
            continue
        share = len(members)
        shared_tel = {
            "union": call.key,
            "cells": share,
            "formats": len(call.formats),
            "model_s": round(model_s, 3),
            **{f"{k}_s": round(v, 3) for k, v in union.phases.items()},
            "tokens": union.tokens,
            **({"calibration_sizes": union.prefixes.steps} if union.prefixes is not None else {}),
            **union.scoring,
            "peak_host_rss_mb": round(mem.peak_rss / 2**20, 1),
            "peak_device_mb": None if mem.peak_device is None else round(mem.peak_device / 2**20, 1),
        }
        if len(mem.peak_by_device) > 1:
            shared_tel["peak_device_mb_by_device"] = by_device_mb([mem])
        evaluations = SharedEvaluations()
        plans = CellPlans.for_members(union, members, m.autoquant.method)  # execution/cell_plans.py
        for index, (cell, formats, backend) in enumerate(members):
            run = CellRun(
                cell=cell, status="error", started_at=_now(), finished_at=_now(), fake_quant_backend=backend,
                engine="shared",
            )
            cell_mem = PeakMemory(ctx.loaded.devices, gpu_period_s=m.telemetry.sample_period_s)
            phases: dict[str, float] = {}
            shared_with: str | None = None
            try:
                with cell_mem, fast_modelopt_bookkeeping():  # not across the yields below
                    if on_step is not None:
                        on_step("solve")
                    result = apply_plan(union, plans.take(index))
                    phases["search"] = result.phases["search"]
                    t = time.perf_counter()
                    if on_step is not None:
                        on_step("evaluate")
                    with kv_cache_applied(union.model, cell.kv_cache, ctx.batches(cell.calib_samples),
                                          ctx.loaded.device.type, m.autoquant.fake_quant_backend) as run.kv_cache:
                        key = evaluation_key(result.model_state, cell.kv_cache, cell.calib_samples)
                        earlier = evaluations.lookup(key)  # a cell before it evaluated the same model
                        planned = 0.0
                        if earlier is None:
                            with lean_linear_forwards(union.model):  # the same outputs, without ModelOpt's host time
                                pending = start_comparison(union.model, ctx.eval_batches, ctx.baseline)
                            planned = plans.prepare(index + 1)  # the next cell's plan, while the device evaluates
                            quality = pending.finish()
                        else:
                            shared_with, quality = earlier
                        phases["evaluate"] = time.perf_counter() - t - planned  # the plan is the next cell's search
                        if ctx.lengths:
                            run.long_context = evaluate_long_context(ctx, union.model, cell, cell_mem, phases,
                                                                     on_step)
                    t = time.perf_counter()
                    run.trust = trust_checks(
                        ctx, cell, result, union.model, formats[0] if len(formats) == 1 else None,
                        _prepare_for(union, cell.calib_steps), stability=False,
                    )
                    phases["trust"] = time.perf_counter() - t
                    if ctx.loaded.device.type == "cpu":  # a GPU's tensors are not on the host heap
                        trim_host_memory()
                run.status, run.result, run.quality = "ok", result, quality
                if shared_with is None:  # shared only from a cell that finished (not one whose later checks failed)
                    evaluations.record(key, cell.key, quality)
            except KeyboardInterrupt:
                raise
            except Exception as exc:
                run.error, run.error_type = describe_failure(exc)
            run.finished_at = _now()
            amortised = {
                "model": model_s / share,
                "calibrate": union.phases["calibrate"] / share,
                "score": union.phases["score"] / share,
            }
            phases = {**amortised, **phases}
            tokens = {
                "calibration": union.tokens.get("calibrate", 0) // share,
                "scoring": union.tokens.get("score", 0) // share,
                # a cell that took another's evaluation ran none of its own
                "evaluation": sum(int(b["input_ids"].numel()) for b in ctx.eval_batches)
                if run.status == "ok" and shared_with is None else 0,
            }
            if run.result is not None:
                run.result.tokens = {"calibrate": tokens["calibration"], "score": tokens["scoring"]}
                run.result.forward_calls = union.forward_calls
            peak_dev = [x for x in (mem.peak_device, cell_mem.peak_device) if x is not None]
            run.telemetry = {
                "device": str(ctx.loaded.device),
                "wall_s": round(sum(phases.values()), 3),
                "phases": {k: round(v, 3) for k, v in phases.items()},
                "peak_host_rss_mb": round(max(mem.peak_rss, cell_mem.peak_rss) / 2**20, 1),
                "peak_device_mb": round(max(peak_dev) / 2**20, 1) if peak_dev else None,
                "tokens": tokens,
                "tokens_processed": sum(tokens.values()),
                "forward_calls": union.forward_calls,
                "torch_threads": torch.get_num_threads(),
                "shared": shared_tel,
                **({"evaluation_shared_with": shared_with} if shared_with is not None else {}),
                # the union call's span and this cell's own: the cell's amortised timings come from both
                **hardware_telemetry([mem, cell_mem], m.telemetry),
            }
            if len(mem.peak_by_device) > 1:
                run.telemetry["peak_device_mb_by_device"] = by_device_mb([mem, cell_mem])
            job = stability_job(m, cell, run.result, threads) if run.status == "ok" else None
            if job is not None:
                pipeline.submit(run, job)
            else:
                pipeline.hold(run)
            yield from pipeline.ready()
        yield from pipeline.drain()  # nothing outlives the call (a Ray unit is one call)
        del union, model
        release_memory(ctx.loaded.device)


__all__ = ["execute_shared", "plan_union_calls", "refused_cells", "unsolvable_menus", "work_units", "Any"]
