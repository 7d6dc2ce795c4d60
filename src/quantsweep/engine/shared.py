"""The shared engine: one AutoQuantize *union* call serves many cells; each cell is then solved and evaluated.

Why it gives the naive per-cell results (docs/shared-engine.md has the argument in full):
  * ModelOpt calibrates each format of a call separately, with the whole model in that format, so a format's
    calibration does not depend on the other formats in the call;
  * the gradient score S(m, f) = sum_batches sum (dL/dY_m * (Q_f(Y_m) - Y_m))^2 uses the gradient of the
    *unquantized* model, the same for every format, so one forward+backward per batch serves all formats;
  * scores are plain sums over batches, so the score of the first k batches is the running sum after batch k:
    we snapshot ModelOpt's own accumulators after every batch, and a cell scoring k batches reads snapshot k;
  * raw scores (read from the live hparams, as the naive path does) are not affected by ModelOpt's cross-format
    clamp; a cell's solver input is rebuilt from them exactly as a single-format call builds it
    (formats [f, NONE], clamped NONE score, the same costs) and solved with ModelOpt's own solver.

Calibration that depends on the data (static activation scales, AWQ, SmoothQuant) gets one union call per
distinct calibration size; calibration that does not (weight-only max, MX, per-token dynamic activations) is done
once, on one batch, for every dataset size, and the sizes share one scoring pass by prefix.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ..overlay import canonical_json
from ..quant_summary import calibration_method, format_bits
from .captured_scores import recipe_quantizers
from .prefix_calibration import PrefixCalibration, PrefixCalibrationMismatch, shares_calibration_across_sizes
from .recipe_configs import CellRecipeConfigs
from .autoquant import NONE_LABEL, CellError, LayerGroup, SearchResult, call_auto_quantize, weight_shapes
from .batch_scores import increments
from .exact_solver import exact_search

StepCallback = Callable[[str], None]


def calibration_depends_on_data(config: dict[str, Any]) -> bool:
    """True when a format's calibrated state depends on the calibration samples (so sizes cannot share it)."""
    if calibration_method(config) not in ("max", None):
        return True  # AWQ, SmoothQuant, MSE ... search over activations
    for entry in config.get("quant_cfg", []):
        if entry.get("quantizer_name") != "*input_quantizer" or "parent_class" in entry:
            continue
        cfg = entry.get("cfg")
        if cfg is None or entry.get("enable", True) is False:
            continue
        for attrs in cfg if isinstance(cfg, list) else [cfg]:
            if attrs.get("enable", True) is False or attrs.get("type") == "dynamic":
                continue  # per-token / dynamic scales are computed from each input at run time
            block = attrs.get("block_sizes") or {}
            if block.get("type") == "dynamic" and tuple(block.get("scale_bits") or ()) == (8, 0):
                continue  # MX: E8M0 block scales from each input, no calibrated amax
            return True
    return False


def calibration_rescales_weights(config: dict[str, Any]) -> bool:
    """True for formats whose calibration rescales the weights themselves (AWQ, SmoothQuant: a pre-quant scale
    on the input and its inverse folded into the weight).

    ModelOpt keeps those scales in the format's own quantizers while AutoQuantize calibrates, but folds them into
    the shared weights at the end of its search; with more than one format in the call, the other formats (and
    the 16-bit choice) then see rescaled weights without the matching input scale. Measured on the tiny model:
    an AWQ and a SmoothQuant format in one call gave the same scores as their own calls but KL 0.020 and 0.0036
    where their own calls (and `mtq.auto_quantize` with one format) give 0.00015 and 0.000019. So such a format
    gets a call of its own: what the naive engine does, and what ModelOpt handles correctly."""
    algorithm = config.get("algorithm")
    text = json.dumps(algorithm, default=str).lower() if algorithm is not None else ""
    return any(name in text for name in ("awq", "smoothquant", "svdquant"))


@dataclass
class UnionFormat:
    label: str
    config: dict[str, Any]
    signature: str = ""
    calib_steps: set[int] = field(default_factory=set)  # the calibration sizes of the cells that use it
    data_free: bool = False  # its calibration does not depend on the data: one score series serves every size


@dataclass
class UnionCall:
    """One `mtq.auto_quantize` call over the union of the formats of several cells."""

    key: str
    calib_steps: int
    score_steps: int
    formats: list[UnionFormat] = field(default_factory=list)
    cell_ids: list[str] = field(default_factory=list)
    prefix_calibration: bool = False  # one calibration pass for every size (engine/prefix_calibration.py)
    folded: bool = False  # weight-only cells joined it (execution/shared_runner.py::_fold_data_free)

    def add_format(self, label: str, config: dict[str, Any], calib_steps: int = 0) -> str:
        canon = canonical_json(config)
        for f in self.formats:
            if canonical_json(f.config) == canon:
                f.calib_steps.add(calib_steps)
                return f.label
        self.formats.append(UnionFormat(label, config, calib_steps={calib_steps},
                                        data_free=not calibration_depends_on_data(config)))
        return label

    def score_key(self, signature: str, calib_steps: int) -> str:
        """Where a cell's scores are kept: its format's own, or those at a smaller calibration size. A format whose
        calibration does not depend on the data (a weight-only member of a menu in a calibrated call) is not
        recorded per size (engine/prefix_calibration.py): its own series is every size's."""
        data_free = any(f.signature == signature and f.data_free for f in self.formats)
        if self.prefix_calibration and calib_steps < self.calib_steps and not data_free:
            return f"{signature}@{calib_steps}"
        return signature


@dataclass
class UnionResult:
    """What a union call leaves behind for its cells."""

    call: UnionCall
    model: nn.Module
    state: dict[str, Any]
    # per decision group (hparam name) -> per recipe signature -> cumulative raw score after batch k (k = 1..)
    cumulative: dict[str, dict[str, list[float]]]
    recipes: dict[str, Any]  # signature -> QuantRecipe
    phases: dict[str, float]
    tokens: dict[str, int]
    forward_calls: dict[str, int]
    prefixes: PrefixCalibration | None = None
    scoring: dict[str, int] = field(default_factory=dict)
    recipe_configs: CellRecipeConfigs = field(init=False)
    # per decision group, its modules' weight shapes: the same for every cell of the call (looked up once)
    shapes: dict[str, list[list[int]]] = field(default_factory=dict)
    hparams: dict[str, Any] = field(default_factory=dict)  # per decision group, its hparam (looked up once)

    def __post_init__(self) -> None:
        self.recipe_configs = CellRecipeConfigs(
            {k: v for k, v in self.state.items() if k not in ("best", "quantizer_states")}
        )


@dataclass
class _Snapshot:
    """ModelOpt's score accumulators after one batch: one device tensor (a single copy, no host sync) and, per
    decision group and recipe signature, which of its entries belong to the group's score modules."""

    values: torch.Tensor | None
    index: dict[str, dict[str, list[int]]]


def _snapshot(model: nn.Module) -> _Snapshot:
    from modelopt.torch.opt.utils import named_hparams
    from modelopt.torch.quantization.algorithms import QuantRecipeHparam

    tensors: list[torch.Tensor] = []
    index: dict[str, dict[str, list[int]]] = {}

    def positions(hp: Any, per_module: dict[Any, torch.Tensor | None]) -> list[int]:
        out = []
        for sm in hp.score_modules:  # in ModelOpt's order: `get_score` sums them in this order
            if per_module[sm] is not None:
                out.append(len(tensors))
                tensors.append(per_module[sm].detach().reshape(()))
        return out

    for name, hp in named_hparams(model, unique=True):
        if not isinstance(hp, QuantRecipeHparam):
            continue
        per_recipe = index.setdefault(name, {})
        for recipe, per_module in hp._importance_dict.items():
            per_recipe[recipe.checkpoint_signature] = positions(hp, per_module)
        for (recipe, k), per_module in hp.__dict__.get("_qs_prefix_importance", {}).items():
            per_recipe[f"{recipe.checkpoint_signature}@{k}"] = positions(hp, per_module)
    values = torch.stack([t.to(tensors[0].device) for t in tensors]) if tensors else None
    return _Snapshot(values, index)


def _as_floats(snap: _Snapshot) -> dict[str, dict[str, float]]:
    """The same reduction as `QuantRecipeHparam.get_score` (each score module's float32 value as a Python float,
    summed in order), from one transfer to the host."""
    values = snap.values.float().cpu().tolist() if snap.values is not None else []
    out: dict[str, dict[str, float]] = {}
    for name, per_recipe in snap.index.items():
        out[name] = {}
        for sig, positions in per_recipe.items():
            total = 0
            for i in positions:
                total += values[i]
            out[name][sig] = float(total)
    return out


def run_union(
    model: nn.Module,
    call: UnionCall,
    batches: list[dict[str, torch.Tensor]],
    method: str,
    disabled_layers: list[str] | None,
    on_step: StepCallback | None = None,
) -> UnionResult:
    """One AutoQuantize call over all formats of `call`, recording cumulative raw scores after every batch.

    The budget is 16 bits, so ModelOpt's own solve keeps every layer unquantized and never folds AWQ /
    SmoothQuant scales into the weights: every format's quantizers stay as calibrated, ready to be switched on
    per cell.
    """
    from modelopt.torch.quantization.algorithms import QuantRecipe

    snapshots: list[_Snapshot] = []
    recipes: dict[str, Any] = {}
    for f in call.formats:
        r = QuantRecipe(f.config, name=f.label)
        f.signature = r.checkpoint_signature
        recipes[f.signature] = r
    none = QuantRecipe(quant_cfg=None)
    recipes[none.checkpoint_signature] = none
    prefixes = None
    if call.prefix_calibration:
        prefixes = PrefixCalibration(
            {k for f in call.formats for k in f.calib_steps},
            call.calib_steps,
            wanted={f.signature: set(f.calib_steps) for f in call.formats},
        )

    outcome = call_auto_quantize(
        model,
        configs=[f.config for f in call.formats],
        budget=16.0,
        batches=batches,
        calib_steps=call.calib_steps,
        score_steps=call.score_steps,
        method=method,
        disabled_layers=disabled_layers,
        on_step=on_step,
        after_batch=lambda m: snapshots.append(_snapshot(m)),  # ModelOpt's accumulators after this batch
        captured=True,
        prefixes=prefixes,
    )
    model, search_state = outcome.model, outcome.search_state
    if method == "kl_div" or not snapshots:
        snapshots = [_snapshot(model)]  # kl_div: cells of this call all score every batch (no prefixes)
    floats = [_as_floats(s) for s in snapshots]
    cumulative: dict[str, dict[str, list[float]]] = {}
    for name in floats[-1]:
        cumulative[name] = {sig: [f[name][sig] for f in floats] for sig in floats[-1][name]}
    return UnionResult(
        call=call,
        model=model,
        state=search_state,
        cumulative=cumulative,
        recipes=recipes,
        phases=outcome.phases,
        tokens=outcome.tokens,
        forward_calls=outcome.calls,
        prefixes=prefixes,
        scoring=outcome.scoring,
    )


@dataclass
class CellPlan:
    """A cell's solve before it touches the model (`plan_cell`): its candidate lists, ModelOpt's (or the exact)
    choice per group, its recipe config and the solver's record. `apply_plan` switches it into the union model."""

    label_of: dict[str, str]
    calib_steps: int
    none: Any
    cell_stats: dict[str, dict[str, Any]]
    raw_by_group: dict[str, list[float]]
    batch_by_group: dict[str, list[list[float]] | None]
    best: dict[str, dict[str, Any]]
    satisfied: bool
    total: float
    recipe_config: dict[str, Any]
    solver: dict[str, Any] | None
    seconds: float


def plan_cell(
    union: UnionResult,
    formats: list[tuple[str, dict[str, Any]]],
    budget: float,
    score_steps: int,
    method: str,
    calib_steps: int | None = None,
) -> CellPlan:
    """Rebuild what AutoQuantize called with the cell's `formats` = [(label, config)] (one format, or a menu's
    members) would hand its solver and solve it with ModelOpt's solver, without touching the model (raises
    CellError as that call would). `apply_plan` then switches the union model's layers to the chosen recipe,
    calibrated on the cell's own `calib_steps` batches (ready for evaluation); the two may be called apart: the
    shared runner plans the next cell while the device still evaluates this one (execution/cell_plans.py).

    Per decision group, ModelOpt's solver sees the candidates in `QuantRecipe` order (compression, then config
    signature: `hparam.choices` is a sorted set), their scores clamped to be non-increasing in that order
    (`initialize_candidate_stats`: `score = min(score, prev_score)`, the 16-bit choice scoring 0) and their costs
    (weight size x compression, independent of the other candidates). The union call's order restricted to the
    cell's formats and 16 bits is that order, and each format's raw score is its own (docs/shared-engine.md), so
    the rebuilt lists are those of a call with exactly these formats."""
    from modelopt.torch.quantization.algorithms import (
        AutoQuantizeGradientSearcher,
        AutoQuantizeKLDivSearcher,
        QuantRecipe,
    )

    lowest = min(format_bits(config) for _, config in formats)
    if budget < lowest:
        raise CellError(
            f"effective-bits budget {budget:g} is below the format's {lowest:g} bits: AutoQuantize cannot reach it; "
            "raise autoquant.effective_bits or drop this pair"
        )
    t0 = time.perf_counter()
    label_of = {QuantRecipe(config, name=label).checkpoint_signature: label for label, config in formats}
    calib_steps = calib_steps or union.call.calib_steps
    none = QuantRecipe(quant_cfg=None)
    none_sig = none.checkpoint_signature
    stats_all = union.state["candidate_stats"]
    k = score_steps if method == "gradient" else None
    cell_stats: dict[str, dict[str, Any]] = {}
    raw_by_group: dict[str, list[float]] = {}
    batch_by_group: dict[str, list[list[float]] | None] = {}
    for name, stat in stats_all.items():
        sigs = [r.checkpoint_signature for r in stat["formats"]]
        if set(sigs) == {none_sig} and not set(label_of) & set(sigs):
            # a group `autoquant.disabled_layers` keeps unquantized: its only choice is 16 bits, in every call
            cell_stats[name] = {**stat, "formats": list(stat["formats"]), "scores": [0.0] * len(sigs),
                                "costs": list(stat["costs"])}
            raw_by_group[name] = [0.0] * len(sigs)
            batch_by_group[name] = None if k is None else [[0.0] * k for _ in sigs]  # nothing scored
            continue
        for sig, label in label_of.items():
            if sig not in sigs:
                raise CellError(f"format {label} missing from the shared search of {name}")
        # the cell's candidates in ModelOpt's order (QuantRecipe.__lt__), 16 bits among them
        order = sorted([sigs.index(sig) for sig in label_of] + [sigs.index(none_sig)], key=lambda i: stat["formats"][i])
        raw_scores: list[float] = []
        per_batch: list[list[float]] | None = None if k is None else []
        for idx in order:
            sig = sigs[idx]
            if sig == none_sig:
                raw_scores.append(0.0)
                if per_batch is not None:
                    per_batch.append([0.0] * k)
                continue
            series = union.cumulative.get(name, {}).get(union.call.score_key(sig, calib_steps))
            if series is None:
                raise CellError(f"no scores recorded for {label_of[sig]} in {name}")
            raw_scores.append(series[(k if k is not None else len(series)) - 1])
            if per_batch is not None:
                per_batch.append(increments(series, k))  # kl_div: not a sum over batches
        clamped, prev = [], float("inf")
        for s in raw_scores:  # ModelOpt's clamp over the cell's candidate list
            s = min(s, prev)
            clamped.append(s)
            prev = s
        cell_stats[name] = {
            **{key: v for key, v in stat.items() if key not in ("formats", "scores", "costs")},
            "formats": [stat["formats"][idx] for idx in order],
            "scores": clamped,
            "costs": [stat["costs"][idx] for idx in order],
        }
        raw_by_group[name] = raw_scores
        batch_by_group[name] = per_batch
    searcher = AutoQuantizeGradientSearcher() if method == "gradient" else AutoQuantizeKLDivSearcher()
    searcher.candidate_stats = cell_stats
    searcher.cost_model = union.state.get("cost_model", "weight")
    searcher.cost = union.state.get("cost", {})
    searcher.active_moe_expert_ratio = union.state.get("active_moe_expert_ratio")
    searcher.config = {
        **searcher.default_search_config,
        "cost_model": searcher.cost_model,
        "cost": searcher.cost,
        "active_moe_expert_ratio": searcher.active_moe_expert_ratio,
    }
    total = searcher._get_total_weight_size_from_candidate_stats(cell_stats)
    _check_feasible(cell_stats, budget)
    solve = exact_search() if method == "gradient" else contextlib.nullcontext([])
    with contextlib.redirect_stdout(io.StringIO()), _quiet_warnings(), solve as records:
        best, satisfied = searcher.run_search_with_stats(total * budget / 16.0, verbose=False)

    recipe_config = union.recipe_configs.config_for({n: i["format"] for n, i in best.items()}, none)
    return CellPlan(
        label_of=label_of,
        calib_steps=calib_steps,
        none=none,
        cell_stats=cell_stats,
        raw_by_group=raw_by_group,
        batch_by_group=batch_by_group,
        best=best,
        satisfied=bool(satisfied),
        total=total,
        recipe_config=recipe_config,
        solver=records[-1].to_dict() if records else None,
        seconds=time.perf_counter() - t0,
    )


def apply_plan(union: UnionResult, plan: CellPlan) -> SearchResult:
    """A cell's solve, second half (after `plan_cell`): switch the union model's groups to the plan's recipe, with
    the cell's own calibration size for data-dependent formats, and describe the solve (its `search` phase: both
    halves)."""
    from modelopt.torch.opt.utils import get_hparam

    t0 = time.perf_counter()
    none, label_of, calib_steps = plan.none, plan.label_of, plan.calib_steps
    cell_stats, raw_by_group, batch_by_group = plan.cell_stats, plan.raw_by_group, plan.batch_by_group
    best, satisfied, total = plan.best, plan.satisfied, plan.total

    def label(recipe: Any) -> str:
        return NONE_LABEL if recipe == none else label_of[recipe.checkpoint_signature]

    groups: list[LayerGroup] = []
    state: list[tuple[str, str, int | None]] = []
    chosen_cost = 0.0
    chosen_score = 0.0
    for name, info in best.items():
        stat = cell_stats[name]
        chosen = info["format"]
        hparam = union.hparams.get(name)
        if hparam is None:
            hparam = union.hparams[name] = get_hparam(union.model, name)  # the call's model keeps its structure
        switch_recipe(hparam, union.recipes[chosen.checkpoint_signature])
        prefix = None
        if union.prefixes is not None and chosen != none:
            if union.prefixes.apply(recipe_quantizers(hparam, chosen), calib_steps):
                prefix = calib_steps
        state.append((name, chosen.checkpoint_signature, prefix))
        chosen_cost += info["costs"]
        chosen_score += info["scores"]
        groups.append(
            LayerGroup(
                name=name.removesuffix(".quant_recipe"),
                module_names=list(stat["module_names"]),
                formats=[label(r) for r in stat["formats"]],
                bits=[float(r.compression * 16) for r in stat["formats"]],
                raw_scores=raw_by_group[name],
                scores=[float(s) for s in stat["scores"]],
                costs=[float(c) for c in stat["costs"]],
                chosen=label(chosen),
                chosen_bits=float(chosen.compression * 16),
                weight_shapes=_shapes(union, name, stat),
                batch_scores=batch_by_group[name],
            )
        )
    return SearchResult(
        groups=groups,
        achieved_bits=float(chosen_cost / total * 16),
        total_score=float(chosen_score),
        satisfied=bool(satisfied),
        recipe_config=plan.recipe_config,
        phases={"search": plan.seconds + time.perf_counter() - t0},
        solver=plan.solver,
        model_state=tuple(state),
    )


def switch_recipe(hparam: Any, recipe: Any) -> None:
    """`hparam.active = recipe`, skipped when it is so already. ModelOpt's setter checks the recipe against every
    choice and sets each quantizer of each of the group's modules again through the dynamic module's `__setattr__`
    (~0.2 ms a group on an H200 host, every group of every cell), although consecutive cells mostly keep a group's
    recipe. Skipped only when the active recipe is this very object and every one of its quantizers is the module's
    own already (whoever switched what in between, e.g. the layer-fidelity check, switches back the same way)."""
    choices = getattr(hparam, "_all_quantizer_choices", None)
    if (
        choices is not None
        and getattr(hparam, "_active", None) is recipe
        and recipe in choices
        and all(module._modules.get(attr) is q for module, qs in choices[recipe].items() for attr, q in qs.items())
    ):
        return
    hparam.active = recipe


def _shapes(union: UnionResult, name: str, stat: dict[str, Any]) -> list[list[int]]:
    if name not in union.shapes:
        union.shapes[name] = weight_shapes(union.model, list(stat["module_names"]))
    return [list(s) for s in union.shapes[name]]  # each cell's groups own their lists


def _check_feasible(cell_stats: dict[str, dict[str, Any]], budget: float) -> None:
    """What ModelOpt's `_verify_resolved_constraint` checks before a single-format call (the naive engine): the
    cheapest choice of every group must fit the budget. Same test, same message, so both engines give the same
    error row (a budget below the minimum, typically because `disabled_layers` keeps large layers at 16 bits)."""
    uncompressed = sum(max(stat["costs"]) for stat in cell_stats.values())
    minimum = sum(min(stat["costs"]) for stat in cell_stats.values())
    if uncompressed > 0 and minimum > uncompressed * float(budget) / 16.0 + uncompressed * 1e-12:
        raise CellError(
            f"ModelOpt rejected the search: The effective_bits target {float(budget)} is infeasible for the resolved "
            f"module search spaces. The minimum achievable effective bits is {minimum / uncompressed * 16:.4f}."
        )


@contextlib.contextmanager
def _quiet_warnings():
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def finite(x: float) -> bool:
    return math.isfinite(x)


__all__ = [
    "UnionCall",
    "UnionResult",
    "calibration_depends_on_data",
    "PrefixCalibrationMismatch",
    "run_union",
    "shares_calibration_across_sizes",
    "plan_cell",
    "apply_plan",
    "CellPlan",
    "sys",
]
