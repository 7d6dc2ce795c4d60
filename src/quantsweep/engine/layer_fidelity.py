"""Layer-level fidelity: is AutoQuantize's per-group proxy score a good predictor of the harm a group does?

The proxy (a gradient-weighted output error, summed over score batches) ranks the decision groups; the recipe
follows that ranking. Here the ranking is checked against measurement, the way exllamav3 checked its proxy
against per-layer swaps (Spearman 0.84): quantize ONE decision group at a time in the cell's format, every other
group unquantized, and measure the KL divergence against the unquantized model on the sweep's held-out samples
(engine/quality.py, the same measurement as the cell's own quality). The groups measured are the K with the
highest proxy score plus K others chosen at random (seeded): the top alone would only test the head of the
ranking, where it matters most; the random ones test the rest. Spearman's rho between the proxy scores and the
measured KLs is reported with n (trust/ranks.py). It costs one evaluation per measured group, so it is opt-in
(`evaluation.layer_fidelity.k`).

The model is the cell's (its recipe active); every group is switched back to the recipe it had before returning.
With the shared engine, a group the cell left unquantized still holds the union call's calibration, so the runner
passes `prepare(hparam, recipe)` to bring it to the cell's calibration size first (engine/prefix_calibration.py).
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

from torch import nn

from ..trust.ranks import spearman
from .autoquant import NONE_LABEL, SearchResult
from .quality import BaselineOutputs, compare_to_baseline


def pick_groups(scores: dict[str, float], k: int, seed: int) -> list[tuple[str, str]]:
    """[(group, "top" | "random")]: the k highest scores, then k of the others drawn with `random.Random(seed)`
    (all of them when fewer remain)."""
    ranked = sorted(scores, key=lambda g: (-scores[g], g))
    top = ranked[:k]
    rest = sorted(ranked[k:])
    drawn = random.Random(seed).sample(rest, min(k, len(rest)))
    return [(g, "top") for g in top] + [(g, "random") for g in drawn]


def layer_fidelity(
    model: nn.Module,
    result: SearchResult,
    signature: str,
    eval_batches: list[dict[str, Any]],
    baseline: BaselineOutputs,
    k: int,
    seed: int,
    prepare: Callable[[Any, Any], None] | None = None,
) -> dict[str, Any]:
    """The layer_fidelity block of a cell whose quantized format has the ModelOpt recipe `signature`."""
    from modelopt.torch.opt.utils import get_hparam
    from modelopt.torch.quantization.algorithms import QuantRecipe

    none = QuantRecipe(quant_cfg=None)
    scores: dict[str, float] = {}
    for g in result.groups:
        quantized = [i for i, f in enumerate(g.formats) if f != NONE_LABEL]
        if len(quantized) == 1:
            scores[g.name] = float(g.raw_scores[quantized[0]])
    settings = {"k": k, "seed": seed}
    if not scores:
        return {"computable": False, "reason": "no group with exactly one quantized format", **settings}
    hparams = {g.name: get_hparam(model, f"{g.name}.quant_recipe") for g in result.groups}
    before = {name: hp.active for name, hp in hparams.items()}
    measured = []
    try:
        for hp in hparams.values():
            hp.active = none
        for name, picked in pick_groups(scores, k, seed):
            hp = hparams[name]
            recipe = next((r for r in hp.choices if r.checkpoint_signature == signature), None)
            if recipe is None:
                raise ValueError(f"the cell's format is not a choice of {name}")
            if prepare is not None:
                prepare(hp, recipe)
            hp.active = recipe
            try:
                kl = float(compare_to_baseline(model, eval_batches, baseline)["kl_mean"])
            finally:
                hp.active = none
            measured.append({"name": name, "picked": picked, "proxy_score": scores[name], "kl_mean": kl})
    finally:
        for name, hp in hparams.items():
            hp.active = before[name]
    rank = spearman([m["proxy_score"] for m in measured], [m["kl_mean"] for m in measured])
    return {"computable": rank["rho"] is not None, "reason": rank["reason"], **settings, "measured": len(measured),
            "rho": rank["rho"], "n": rank["n"], "groups": measured}
