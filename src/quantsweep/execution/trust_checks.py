"""The trust checks run on a finished cell, in both engines and the same way (docs/trust.md).

Why a module of its own: the naive runner (execution/cell_runner.py) and the shared one (shared_runner.py) finish
cells differently but must record the same `trust` block: recipe stability (a bootstrap of the per-batch scores,
pure: trust/stability.py) and, when asked for, layer-level fidelity (one evaluation per measured group, with the
cell's model: engine/layer_fidelity.py). A failing check never fails the cell: it is recorded as not computable
with its reason.
"""

from __future__ import annotations

import functools
from typing import Any

from ..engine.autoquant import SearchResult
from ..planning import Cell
from ..schema import Matrix
from ..trust.stability import GroupScores, stability_block


def stability_job(
    matrix: Matrix, cell: Cell, result: SearchResult, threads: int | None = None
) -> functools.partial[dict[str, Any]] | None:
    """The cell's recipe-stability block as a call with its inputs bound (None when `evaluation.stability.resamples`
    is 0): a pure function of plain data (trust/stability.py::stability_block), so it can run on another thread or in
    a solver process (execution/stability_pipeline.py); `threads`: how many resamples are solved at once."""
    spec = matrix.evaluation.stability
    if spec.resamples == 0:
        return None
    groups = None
    if matrix.autoquant.method == "gradient" and all(g.batch_scores is not None for g in result.groups):
        groups = [GroupScores(g.name, g.formats, g.costs, g.chosen, g.batch_scores or []) for g in result.groups]
    return functools.partial(
        stability_block, groups, cell.budget, spec.resamples, spec.seed, spec.max_flip_share, threads
    )


def stability_for(
    matrix: Matrix, cell: Cell, result: SearchResult, threads: int | None = None
) -> dict[str, Any] | None:
    """The cell's recipe stability, or None when `evaluation.stability.resamples` is 0 (see `stability_job`)."""
    job = stability_job(matrix, cell, result, threads)
    return None if job is None else job()


def trust_checks(
    ctx: Any,
    cell: Cell,
    result: SearchResult,
    model: Any = None,
    fmt: tuple[str, dict[str, Any]] | None = None,
    prepare: Any = None,
    stability: bool = True,
) -> dict[str, Any]:
    """`{"stability": ..., "layer_fidelity": ...}` for a cell whose model (with the recipe active) is `model` and
    whose format is `fmt` = (label, config as handed to ModelOpt; None for a format menu); `prepare`: see engine/layer_fidelity.py.
    With `evaluation.lm_eval` naming the cell, also `"lm_eval"`: the model through lm-eval (engine/lm_eval_runner.py),
    after layer fidelity has put the cell's recipe back. With `stability` off the block is left None, for the caller
    to fill in (the shared engine solves it beside the next cells: execution/stability_pipeline.py)."""
    out: dict[str, Any] = {
        "stability": stability_for(ctx.matrix, cell, result) if stability else None,
        "layer_fidelity": None,
    }
    spec = ctx.matrix.evaluation.layer_fidelity
    if spec.k > 0 and fmt is None and cell.is_menu:
        out["layer_fidelity"] = {"computable": False, "reason": "a format menu: layer fidelity switches one quantized "
                                 "format per group on and off, a menu has several", "k": spec.k, "seed": spec.seed}
    if spec.k > 0 and model is not None and fmt is not None:
        from modelopt.torch.quantization.algorithms import QuantRecipe

        from ..engine.layer_fidelity import layer_fidelity

        try:
            signature = QuantRecipe(fmt[1], name=fmt[0]).checkpoint_signature
            out["layer_fidelity"] = layer_fidelity(
                model, result, signature, ctx.eval_batches, ctx.baseline, spec.k, spec.seed, prepare
            )
        except Exception as exc:  # a check that fails is recorded, the cell stands
            out["layer_fidelity"] = {"computable": False, "reason": f"{type(exc).__name__}: {exc}", "k": spec.k,
                                     "seed": spec.seed}
    lm = ctx.matrix.evaluation.lm_eval
    if lm is not None and model is not None:
        from .context import selected_for_lm_eval

        if selected_for_lm_eval(lm, cell):
            from ..engine.lm_eval_runner import evaluate_model

            out["lm_eval"] = evaluate_model(model, ctx.loaded.tokenizer, lm, cell.key)  # the recipe is active
    return out
