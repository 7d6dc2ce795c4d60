"""One cell's AutoQuantize call (the reference "naive" path): `mtq.auto_quantize` on a fresh model copy.

What it records per layer group: the candidate formats, the **raw** sensitivity scores read from the live
hparams (ModelOpt stores clamped scores, `score = min(score, prev_score)`, in `candidate_stats`, which hides real
differences between formats of equal bits), the clamped scores as ModelOpt's solver saw them, the costs and the
chosen format; plus the achieved effective bits, total score and whether the solver reached optimality.

Traps handled here (see docs/autoquantize.md): a fresh model per call; a list (never a generator) as data
loader; `effective_bits` always given and checked against the format's bits before ModelOpt asserts on it.
"""

from __future__ import annotations

import contextlib
import io
import math
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ..errors import QuantsweepError
from ..overlay import to_jsonable
from .host_memory import trim_host_memory
from .calibrated_weights import calibrated_weights_muted
from .calibration_twins import CalibrationTwins
from .captured_scores import CapturedScores
from .prefix_calibration import PrefixCalibration, shares_calibration_across_sizes
from .quant_linear import lean_linear_forwards
from .score_memory import ScoreMemory

NONE_LABEL = "none"
StepCallback = Callable[[str], None]


class CellError(QuantsweepError):
    """A per-cell failure that becomes an error row (the sweep goes on)."""

    def __init__(self, message: str, reason: str = "ERROR"):
        super().__init__(message)
        self.reason = reason


@dataclass
class LayerGroup:
    name: str  # the decision group, e.g. model.layers.3.self_attn.q_proj (fused q/k/v share one decision)
    module_names: list[str]
    formats: list[str]  # labels, lowest bits first, "none" last
    bits: list[float]
    raw_scores: list[float]
    scores: list[float]  # as stored by ModelOpt (clamped to be non-increasing in bits)
    costs: list[float]
    chosen: str
    chosen_bits: float
    weight_shapes: list[list[int]] = field(default_factory=list)  # per module, for the bits that count scales
    # per format, per score batch: the raw score's contributions (engine/batch_scores.py); None for kl_div
    batch_scores: list[list[float]] | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "module_names": self.module_names,
            "formats": self.formats,
            "bits": self.bits,
            "raw_scores": self.raw_scores,
            "scores": self.scores,
            "costs": self.costs,
            "chosen": self.chosen,
            "chosen_bits": self.chosen_bits,
            "weight_shapes": self.weight_shapes,
            "batch_scores": self.batch_scores,
        }


@dataclass
class SearchResult:
    groups: list[LayerGroup]
    achieved_bits: float
    total_score: float
    satisfied: bool
    recipe_config: dict[str, Any]  # the chosen per-module recipe as a ModelOpt quantization config (JSON-ready)
    phases: dict[str, float] = field(default_factory=dict)
    forward_calls: dict[str, int] = field(default_factory=dict)
    tokens: dict[str, int] = field(default_factory=dict)
    solver: dict[str, Any] | None = None  # exact vs ModelOpt solve of this cell (engine/exact_solver.py)
    # the shared engine's model after this solve (engine/shared.py::apply_plan): equal keys, the same model
    model_state: tuple[Any, ...] | None = field(default=None, compare=False, repr=False)

    @property
    def quantized_groups(self) -> int:
        return sum(1 for g in self.groups if g.chosen != NONE_LABEL)

    def raw_score_vector(self) -> list[float]:
        return [s for g in self.groups for s in g.raw_scores]

    def recipe_map(self) -> dict[str, str]:
        return {g.name: g.chosen for g in self.groups}


@contextlib.contextmanager
def instrument_search() -> Iterator[dict[str, Any]]:
    """Time AutoQuantize's phases (calibrate / score / search) by wrapping its searcher methods for one call."""
    from modelopt.torch.quantization import algorithms as alg

    state: dict[str, Any] = {
        "phase": "calibrate",
        "marks": {},
        "calls": {"calibrate": 0, "score": 0},
        "tokens": {"calibrate": 0, "score": 0},
    }
    patched: list[tuple[type, str, Any]] = []

    def wrap(cls: type, name: str, phase: str) -> None:
        original = cls.__dict__[name]

        def wrapper(self, *args, **kwargs):
            state["phase"] = phase
            state["marks"].setdefault(f"{phase}_start", time.perf_counter())
            try:
                return original(self, *args, **kwargs)
            finally:
                state["marks"][f"{phase}_end"] = time.perf_counter()

        patched.append((cls, name, original))
        setattr(cls, name, wrapper)

    for cls in (alg.AutoQuantizeGradientSearcher, alg.AutoQuantizeKLDivSearcher):
        wrap(cls, "estimate_sensitivity_scores", "score")
    wrap(alg._AutoQuantizeBaseSearcher, "run_search", "search")
    try:
        yield state
    finally:
        for cls, name, original in reversed(patched):
            setattr(cls, name, original)


def _calibration_needs_data() -> Callable[[nn.Module], bool] | None:
    """ModelOpt's own test of whether a max calibration needs its forward pass (any enabled activation-side
    quantizer collecting statistics), or None on a ModelOpt without it."""
    try:
        from modelopt.torch.quantization.model_calib import _needs_activation_forward_for_max_calib
    except ImportError:
        return None
    return _needs_activation_forward_for_max_calib


def counting_forward_step(
    state: dict[str, Any],
    method: str,
    on_step: StepCallback | None,
    after_calibration_forward: Callable[[nn.Module], None] | None = None,
    skip_weight_only_calibration: bool = False,
    twins: CalibrationTwins | None = None,
) -> Callable[..., Any]:
    """The `forward_step` handed to AutoQuantize: the model's output (logits for kl_div), while counting calls
    and tokens per phase (from `instrument_search`'s state) and reporting each step for progress bars.

    `skip_weight_only_calibration` (the shared engine): a calibration step for a format none of whose enabled
    activation-side quantizers collects statistics (a weight-only format) runs no forward. ModelOpt's
    `max_calibrate` calibrates every weight quantizer on its weight (`weight_only_quantize`) before the forward
    loop, and the forward's weight quantizers would only collect the max of the same weights again, so the
    calibrated state is the same (ModelOpt's own `skip_forward_without_activation_calib` option, decided by its
    `_needs_activation_forward_for_max_calib`). Only for calls whose formats all use plain max calibration. Skipped
    steps are counted as `calibrate_skipped`, not as tokens.

    `twins` (the shared engine, same condition): a format whose activation quantizers collect what an earlier
    format's did runs no calibration forward either (engine/calibration_twins.py); its steps are counted as
    `calibrate_shared`.

    In the calibration forwards that do run (same condition), the weight quantizers that `max_calibrate` calibrated
    on their weights already sit out (engine/calibrated_weights.py): the same amax, without collecting it again;
    and the plain quantized linears run `lean_linear_forwards` (the same quantizer calls and GEMM, as in the shared
    engine's evaluation)."""
    needs_data = _calibration_needs_data() if skip_weight_only_calibration else None

    def forward_step(m: nn.Module, batch: dict[str, torch.Tensor]) -> Any:
        phase = state["phase"]
        if phase == "calibrate" and needs_data is not None and not needs_data(m):
            state["calls"]["calibrate_skipped"] = state["calls"].get("calibrate_skipped", 0) + 1
            if on_step is not None:
                on_step(phase)
            return None
        if phase == "calibrate" and twins is not None and twins.skip_step(m):
            state["calls"]["calibrate_shared"] = state["calls"].get("calibrate_shared", 0) + 1
            if on_step is not None:
                on_step(phase)
            if after_calibration_forward is not None:
                after_calibration_forward(m)  # PrefixCalibration records the twin's amax like any other
            return None
        state["calls"][phase] = state["calls"].get(phase, 0) + 1
        state["tokens"][phase] = state["tokens"].get(phase, 0) + int(batch["input_ids"].numel())
        if on_step is not None:
            on_step(phase)
        if phase == "calibrate" and skip_weight_only_calibration:
            # engine/calibrated_weights.py: weights collected already; engine/quant_linear.py: ModelOpt's linears
            # called directly (its quantizer calls, collecting, without the dynamic-module machinery)
            with calibrated_weights_muted(m), lean_linear_forwards(m):
                out = m(input_ids=batch["input_ids"]).logits if method == "kl_div" else m(**batch)
        else:
            out = m(input_ids=batch["input_ids"]).logits if method == "kl_div" else m(**batch)
        if phase == "calibrate":
            if twins is not None:
                twins.after_forward(m)
            if after_calibration_forward is not None:
                after_calibration_forward(m)
        return out

    return forward_step


@dataclass
class CallOutcome:
    model: nn.Module
    search_state: dict[str, Any]
    phases: dict[str, float]
    calls: dict[str, int]
    tokens: dict[str, int]
    solver: Any = None  # the SolverRecord of the call's search, when `exact` was asked for
    scoring: dict[str, int] = field(default_factory=dict)  # captured scoring: modules replayed directly / as ModelOpt


def call_auto_quantize(
    model: nn.Module,
    *,
    configs: list[dict[str, Any]],
    budget: float,
    batches: list[dict[str, torch.Tensor]],
    calib_steps: int,
    score_steps: int,
    method: str,
    disabled_layers: list[str] | None,
    on_step: StepCallback | None = None,
    after_batch: Callable[[nn.Module], None] | None = None,
    exact: bool = False,
    captured: bool = False,
    prefixes: PrefixCalibration | None = None,
    stdout: Any = None,
) -> CallOutcome:
    """The one place that calls `mtq.auto_quantize`: phase timing, call/token counts, ModelOpt's stdout kept off
    ours (`--json`), its refusals turned into CellError. `after_batch(model)` runs after each score batch's
    backward (gradient method), when ModelOpt's score accumulators hold the sum so far. `exact`: the gradient
    search's recipe is the exact optimum when ModelOpt's is not (engine/exact_solver.py). `captured`: every candidate
format's score is replayed from one captured forward+backward (engine/captured_scores.py) instead of ModelOpt's
per-format scoring forward; the naive engine keeps ModelOpt's own. `prefixes` (with `captured`): the data-dependent
formats of the call are calibrated once for several dataset sizes (engine/prefix_calibration.py) and scored at each of them."""
    import modelopt.torch.quantization as mtq

    from .exact_solver import exact_search

    # only where every format is plain max: AWQ and SmoothQuant read the activations through hooks of their own,
    # and `layerwise` max captures each layer's inputs from the forward loop, even when no quantizer collects
    plain_max = captured and all(shares_calibration_across_sizes(c) for c in configs)
    with instrument_search() as state:
        forward_step = counting_forward_step(
            state, method, on_step, prefixes.after_calibration_batch if prefixes is not None else None,
            skip_weight_only_calibration=plain_max,
            twins=CalibrationTwins(calib_steps, prefixes.steps if prefixes is not None else ()) if plain_max else None,
        )
        kwargs: dict[str, Any] = {}
        # engine/captured_scores.py, engine/score_memory.py
        release = CapturedScores(prefixes) if captured else ScoreMemory()
        if method == "gradient":

            def forward_backward_step(m: nn.Module, batch: dict[str, torch.Tensor]) -> None:
                if not release.installed and prefixes is not None:
                    prefixes.verify(m)  # calibration is over
                release.install(m)
                forward_step(m, batch).loss.backward()  # what ModelOpt builds from loss_func
                if after_batch is not None:
                    after_batch(m)
                if batch["input_ids"].device.type == "cpu":  # a GPU's tensors are not on the host heap
                    trim_host_memory()

            kwargs["forward_backward_step"] = forward_backward_step
        solve = exact_search() if exact and method == "gradient" else contextlib.nullcontext([])
        t0 = time.perf_counter()
        try:
            with contextlib.redirect_stdout(stdout or io.StringIO()), solve as records, release:
                model, search_state = mtq.auto_quantize(
                    model,
                    constraints={"effective_bits": float(budget)},
                    quantization_formats=configs,
                    data_loader=batches,
                    forward_step=forward_step,
                    disabled_layers=list(disabled_layers or []) or None,
                    num_calib_steps=calib_steps,
                    num_score_steps=score_steps,
                    method=method,
                    verbose=False,
                    **kwargs,
                )
        except (ValueError, AssertionError) as exc:
            raise CellError(f"ModelOpt rejected the search: {exc}") from exc
        t_end = time.perf_counter()
    marks = state["marks"]
    score_start = marks.get("score_start", t_end)
    score_end = marks.get("score_end", score_start)
    phases = {"calibrate": score_start - t0, "score": score_end - score_start, "search": t_end - score_end}
    record = records[-1] if records else None
    scoring = release.stats() if isinstance(release, CapturedScores) else {}
    return CallOutcome(model, search_state, phases, dict(state["calls"]), dict(state["tokens"]), record, scoring)


def _label_for(recipe: Any, format_labels: dict[str, str]) -> str:
    sig = recipe.checkpoint_signature
    if sig in format_labels:
        return format_labels[sig]
    text = str(recipe)
    return NONE_LABEL if text.startswith("NONE(") else text


def weight_shapes(model: nn.Module, module_names: list[str]) -> list[list[int]]:
    """The weight shape of each named module (what the storage bits of a recipe depend on)."""
    shapes = []
    for name in module_names:
        try:
            w = getattr(model.get_submodule(name), "weight", None)
        except AttributeError:
            w = None
        if w is not None:
            shapes.append([int(d) for d in w.shape])
    return shapes


def _finite(x: float) -> bool:
    return isinstance(x, float | int) and math.isfinite(x)


def run_auto_quantize(
    model: nn.Module,
    *,
    formats: list[tuple[str, dict[str, Any]]],
    budget: float,
    batches: list[dict[str, torch.Tensor]],
    calib_steps: int,
    score_steps: int,
    method: str,
    disabled_layers: list[str] | None = None,
    on_step: StepCallback | None = None,
    verbose_to_stderr: bool = False,
) -> tuple[nn.Module, SearchResult]:
    """Run `mtq.auto_quantize` with `formats` = [(label, config)] on `model` (which it modifies).

    Returns the quantized model (best recipe active) and the search result.
    """
    import modelopt.torch.quantization as mtq
    from modelopt.torch.opt.utils import named_hparams
    from modelopt.torch.quantization.algorithms import QuantRecipe, QuantRecipeHparam

    from ..quant_summary import format_bits

    lowest = min(format_bits(cfg) for _, cfg in formats)
    if budget < lowest:
        raise CellError(
            f"effective-bits budget {budget:g} is below the format's {lowest:g} bits: AutoQuantize cannot reach it; "
            "raise autoquant.effective_bits or drop this pair"
        )
    if not isinstance(batches, list):
        raise TypeError("batches must be a list: AutoQuantize iterates the data loader once per phase")

    format_labels: dict[str, str] = {}
    for label, cfg in formats:
        format_labels[QuantRecipe(cfg, name=label).checkpoint_signature] = label

    from .batch_scores import increments
    from .shared import _as_floats, _snapshot

    snapshots: list[Any] = []  # ModelOpt's accumulators after each score batch (per-batch scores, for stability)
    outcome = call_auto_quantize(
        model,
        configs=[cfg for _, cfg in formats],
        budget=budget,
        batches=batches,
        calib_steps=calib_steps,
        score_steps=score_steps,
        method=method,
        disabled_layers=disabled_layers,
        on_step=on_step,
        exact=True,
        stdout=sys.stderr if verbose_to_stderr else None,
        after_batch=lambda m: snapshots.append(_snapshot(m)),
    )
    running = [_as_floats(s) for s in snapshots]
    model, search_state, phases = outcome.model, outcome.search_state, outcome.phases

    stats = search_state["candidate_stats"]
    groups: list[LayerGroup] = []
    for hp_name, hp in named_hparams(model, unique=True):
        if not isinstance(hp, QuantRecipeHparam):
            continue
        stat = stats.get(hp_name)
        if stat is None:
            continue
        recipes = list(stat["formats"])
        labels = [_label_for(r, format_labels) for r in recipes]
        raw = [float(hp.get_score(r)) for r in recipes]
        chosen = _label_for(hp.active, format_labels)
        batch_scores = None
        if running and method == "gradient":
            sigs = [r.checkpoint_signature for r in recipes]
            batch_scores = [increments([f.get(hp_name, {}).get(sig, 0.0) for f in running]) for sig in sigs]
        groups.append(
            LayerGroup(
                name=hp_name.removesuffix(".quant_recipe"),
                module_names=list(stat["module_names"]),
                formats=labels,
                bits=[float(r.compression * 16) for r in recipes],
                raw_scores=raw,
                scores=[float(s) for s in stat["scores"]],
                costs=[float(c) for c in stat["costs"]],
                chosen=chosen,
                chosen_bits=float(hp.active.compression * 16),
                weight_shapes=weight_shapes(model, list(stat["module_names"])),
                batch_scores=batch_scores,
            )
        )
    best = search_state["best"]
    recipe_config = to_jsonable(mtq.get_auto_quantize_config(search_state))
    result = SearchResult(
        groups=groups,
        achieved_bits=float(best["constraints"]["effective_bits"]),
        total_score=float(best["score"]),
        satisfied=bool(best["is_satisfied"]),
        recipe_config=recipe_config,
        phases=phases,
        forward_calls=outcome.calls,
        tokens=outcome.tokens,
        solver=outcome.solver.to_dict() if outcome.solver is not None else None,
    )
    return model, result


def nonfinite_scores(result: SearchResult) -> bool:
    return not all(_finite(s) for s in result.raw_score_vector()) or not _finite(result.total_score)
