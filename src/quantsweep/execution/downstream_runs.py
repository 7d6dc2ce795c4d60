"""The model side of the lm-eval post-phase (execution/lm_eval_phase.py): in the process that holds the sweep's
model (the driver with the local executor, one Ray worker with the Ray executor), the unquantized baseline and
each requested cell's model, rebuilt from its recipe, through lm-eval.

Why rebuilt: with `evaluation.lm_eval.cells: frontier` the cells to evaluate are known only after the last one
finished, when their models are long gone. Each is rebuilt from a fresh copy of the unquantized model with the
cell's recipe and calibration (engine/cell_model.py, the rules `export` uses), and its KL on the held-out
samples is measured again (`rebuilt_kl_mean`) so that the row shows the lm-eval scores belong to the model that
was measured (the driver compares it with the row's `quality.kl_mean`).
"""

from __future__ import annotations

import os
import platform
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from ..engine.cell_model import CellCalibration
from ..planning import Cell

BASELINE = "baseline"  # the label of the baseline's result (cells are labelled by their id)


@dataclass(frozen=True)
class DownstreamJob:
    """One cell to rebuild and evaluate (plain data: it crosses to a Ray worker)."""

    cell: Cell
    recipe: dict[str, Any]  # recipe.read_recipe's config (integer block-size axes restored)
    calibration: CellCalibration


def _process() -> dict[str, Any]:
    """Which process evaluated (the Ray test checks that one process evaluated the baseline)."""
    return {"pid": os.getpid(), "host": platform.node()}


def run_downstream(ctx: Any, jobs: list[DownstreamJob], baseline: bool,
                   message: Callable[[str], None] = lambda _m: None) -> Iterator[tuple[str, dict[str, Any]]]:
    """(BASELINE or a cell id, lm-eval block) as each finishes. Never raises for one cell (except Ctrl-C): a cell
    that cannot be rebuilt gets a `computable: false` block with the reason."""
    from ..engine.data import make_batches
    from ..engine.host_memory import release_memory
    from ..engine.lm_eval_runner import evaluate_model
    from ..engine.quality import compare_to_baseline

    spec = ctx.matrix.evaluation.lm_eval
    tok = ctx.loaded.tokenizer
    if baseline:
        message(f"lm-eval: the unquantized baseline ({', '.join(spec.tasks)})")
        model = ctx.loaded.take_model()
        try:
            block = evaluate_model(model, tok, spec, BASELINE)
        finally:
            del model
            release_memory(ctx.loaded.device)
        yield BASELINE, {**block, "evaluated_by": _process()}
    for job in jobs:
        message(f"lm-eval: {job.cell.key} (rebuilt from its recipe)")
        model = None
        try:
            from ..engine.cell_model import apply_recipe

            model = ctx.loaded.take_model()
            calib = make_batches(ctx.samples.pool(job.calibration.samples), job.calibration.batch_size,
                                 ctx.loaded.device, labels=False)
            model = apply_recipe(model, job.recipe, job.calibration, calib)
            kl = float(compare_to_baseline(model, ctx.eval_batches, ctx.baseline)["kl_mean"])
            block = {**evaluate_model(model, tok, spec, job.cell.key), "model": "rebuilt", "rebuilt_kl_mean": kl}
        except KeyboardInterrupt:
            raise
        except Exception as exc:  # recorded on the row; the sweep's results stand
            block = {"computable": False, "reason": f"rebuilding the cell's model: {type(exc).__name__}: {exc}"[:500],
                     "num_fewshot": spec.num_fewshot, "limit": spec.limit, "model": "rebuilt"}
        finally:
            del model
            release_memory(ctx.loaded.device)
        yield job.cell.id, {**block, "evaluated_by": _process()}
