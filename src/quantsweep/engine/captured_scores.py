"""AutoQuantize's gradient scores for every candidate format from one captured forward+backward per batch.

ModelOpt's scoring forward (`auto_quantize_score_estimate_forward`) runs, for every scored module, every batch and
every candidate format: switch the format in (`hparam.active = recipe`: swap the module's quantizer objects,
through the dynamic-module machinery), call the module's quantized forward, switch back, and keep
`D_f = Q_f(Y) - Y` until the backward hook multiplies it by the output gradient. On small and mid-sized models the
time goes to that bookkeeping, not to arithmetic (docs/performance.md): ~1.8 s per batch against 0.14 s for the
plain forward+backward on a Qwen3-0.6B shape.

`CapturedScores` keeps what makes the score AutoQuantize's and removes the rest:
  * the forward only *captures* the module's input X and output Y (the unquantized model's: every configurable
    recipe stays at NONE during scoring, as in ModelOpt's own pass);
  * the backward hook, once the output gradient G is known, replays every candidate format from (X, G) with the
    quantizer objects ModelOpt calibrated for that format (`hparam._all_quantizer_choices[recipe][module]`),
    called directly: `Q_f(Y) = out_q(F.linear(in_q(X), w_q(W), b))`, the same operations QuantLinear's forward
    performs with those quantizers switched in, so the same tensor;
  * the score is ModelOpt's `_get_auto_quantize_score(G, D_f)`, accumulated into ModelOpt's own `_importance_dict`
    exactly as its hook does (first batch assigned, later batches added in place): on the device, no host sync;
  * X and Y are dropped as soon as the hook has used them, so the peak holds one module's replay at a time.
  * on a GPU the replay of a small enough module is recorded once as a CUDA graph and launched for every batch
    (engine/replay_graphs.py): the same operations without their host time.

Modules that are not plain quantized linears (any class in the MRO with a forward of its own), or whose score
module is not one of the quantized modules (MoE rules that score experts at the MLP output), are replayed the way
ModelOpt does it (switch the recipe in, call the module's forward) from the same capture: ModelOpt's computation,
only slower (no test model exercises it). tests/test_shared_engine.py checks the union
call's raw scores against the naive engine's (ModelOpt's own scoring) to 1e-6.
"""

from __future__ import annotations

import contextlib
import functools
import types
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .quant_linear import QUANTIZERS, plain_quantized_linear, quantize
from .replay_graphs import ReplayGraphs, graphable, graphs_enabled
from .score_kernel import fusable, fused_enabled, fused_score
from .score_kernel import warm as warm_score_kernel


def _none_recipe() -> Any:
    from modelopt.torch.quantization.algorithms import QuantRecipe

    return QuantRecipe(quant_cfg=None)


class CapturedScores:
    """Installed once, at the first score step (ModelOpt has set up its score modules by then); removed on exit.

    With `prefixes` (engine/prefix_calibration.py), every format calibrated in one pass for several dataset sizes
    is also replayed with the amax of each smaller size, into `hparam._qs_prefix_importance[(recipe, k)]`."""

    def __init__(self, prefixes: Any = None) -> None:
        self.prefixes = prefixes
        self.modules: list[nn.Module] = []
        self.handles: list[Any] = []
        self.installed = False
        self.fast_modules = 0
        self.slow_modules = 0
        self.released_calibrators = 0
        # on a GPU, a module's replay of all its formats is one CUDA graph launch per batch (engine/replay_graphs.py)
        self.graphs = ReplayGraphs() if graphs_enabled() and torch.cuda.is_available() else None

    def install(self, model: nn.Module) -> None:
        if self.installed:
            return
        self.installed = True
        none = _none_recipe()
        for module in model.modules():
            if not (hasattr(module, "_backward_hook_handle") and hasattr(module, "_forward_original")):
                continue
            plan = []
            for hparam in module._hparams_for_scoring:
                if not hparam.is_configurable:
                    continue
                hparam.active = none  # what ModelOpt's scoring forward sets before every forward
                recipes = [r for r in hparam.choices if r != none]
                sized = [(r, self._sizes(hparam, r)) for r in recipes]
                plan.append((hparam, sized, _fast_replay_ok(module, hparam, recipes)))
            if not plan:
                continue
            fast = all(ok for *_x, ok in plan)
            self.fast_modules += int(fast)
            self.slow_modules += int(not fast)
            module._qs_score_plan = plan
            module._qs_prefixes = self.prefixes
            weight = getattr(module, "weight", None)
            module._qs_graphs = self.graphs if fast and isinstance(weight, torch.Tensor) and weight.is_cuda else None
            if isinstance(weight, torch.Tensor) and weight.is_cuda:  # the fused score's kernel, before any replay
                warm_score_kernel(weight.device, weight.dtype)  # (once per process; the sweep's set-up did it)
            self.modules.append(module)
            module.forward = types.MethodType(_capturing_forward, module)  # ModelOpt's clean-up restores it
            self.handles.append(module.register_full_backward_hook(_score_from_capture))
        # calibration is over (and PrefixCalibration.verify has read what it needs): the calibrators' copies go
        self.released_calibrators = release_calibration_statistics(self.modules)

    def _sizes(self, hparam: Any, recipe: Any) -> list[int]:
        if self.prefixes is None:
            return []
        return self.prefixes.sizes_for(recipe_quantizers(hparam, recipe), recipe.checkpoint_signature)

    def __enter__(self) -> CapturedScores:
        return self

    def __exit__(self, *exc: Any) -> None:
        for h in self.handles:
            h.remove()
        self.handles.clear()
        for module in self.modules:  # a forward whose backward never came keeps nothing alive
            module.__dict__.pop("_qs_captures", None)
            module.__dict__.pop("_qs_graphs", None)
        self.modules.clear()
        if self.graphs is not None:
            self.graphs.close()

    def stats(self) -> dict[str, Any]:
        """What the scoring did, for the union call's telemetry."""
        out: dict[str, Any] = {
            "replayed_modules": self.fast_modules,
            "modelopt_replayed_modules": self.slow_modules,
            "released_calibrators": self.released_calibrators,
        }
        out.update(self.graphs.stats() if self.graphs is not None else {"graph_modules": 0, "graph_replays": 0})
        return out


def _fast_replay_ok(module: nn.Module, hparam: Any, recipes: list[Any]) -> bool:
    """A plain quantized linear (engine/quant_linear.py) that is itself one of the hparam's quantized modules, with
    the three usual quantizers in every recipe: its quantized output is out_q(F.linear(in_q(X), w_q(W), b))."""
    if not plain_quantized_linear(module):
        return False  # a class with its own forward (Falcon's x @ W.T + b, real-quant GEMMs, LoRA): ModelOpt's way
    for recipe in recipes:
        quantizers = hparam._all_quantizer_choices.get(recipe, {}).get(module)
        if quantizers is None or set(quantizers) != QUANTIZERS:
            return False
    return True


def _capturing_forward(module: nn.Module, input: Any, *args: Any, **kwargs: Any) -> Any:
    """The unquantized forward, keeping (X, Y) for the backward hook (only when a gradient will come: with
    gradient checkpointing the scores are taken in the recomputation, as in ModelOpt)."""
    output = module._forward_original(input, *args, **kwargs)
    module.output_diff_dict = {}  # ModelOpt's own backward hook finds nothing to do
    if torch.is_grad_enabled():
        y = output[0] if isinstance(output, tuple) else output
        # a stack: a module called twice in one forward gets its backward calls in reverse order
        module.__dict__.setdefault("_qs_captures", []).append(
            (input, args, kwargs, y.detach(), _version(input), y._version)
        )
    return output


def _version(x: Any) -> int | None:
    return x._version if isinstance(x, torch.Tensor) else None


def _score_from_capture(module: nn.Module, grad_input: Any, grad_output: Any) -> None:
    captures = module.__dict__.get("_qs_captures")
    if not captures:
        return
    capture = captures.pop()
    x, args, kwargs, y, x_version, y_version = capture
    if _version(x) != x_version:
        raise RuntimeError(
            "AutoQuantize scoring: a scored module's input was modified in place after its forward; its "
            "quantization error cannot be replayed"
        )
    g = grad_output[0]
    chunked = _needs_chunks(g)
    with torch.no_grad():
        if y._version != y_version:  # the output was modified in place downstream: take it again
            y = _output(module._forward_original(x, *args, **kwargs)).detach()
        graphs = module.__dict__.get("_qs_graphs")
        if (
            graphs is not None
            and not chunked
            and not args
            and not kwargs
            and all(fast for *_x, fast in module._qs_score_plan)
            and graphable(x, y, g)
            and graphs.run(module, (x, y, g), functools.partial(_graph_body, module),
                           functools.partial(_zero_accumulators, module, g.device))
        ):
            return
        # once per module, not once per format; a large output (lm_head) keeps its gradient as it is (_score_in_chunks)
        _replay(module, x, args, kwargs, y, g if chunked else g.float(), chunked)


def _graph_body(module: nn.Module, x: torch.Tensor, y: torch.Tensor, g: torch.Tensor) -> None:
    """What a module's CUDA graph records (engine/replay_graphs.py): the eager replay, from its static inputs."""
    _replay(module, x, (), {}, y, g.float(), False)


def _zero_accumulators(module: nn.Module, device: torch.device) -> None:
    """Before a capture: every score this module's replay adds to exists (a graph adds in place; 0 + s is s)."""
    for hparam, recipes, _fast in module._qs_score_plan:
        for recipe, sizes in recipes:
            for k in (None, *sizes):
                store = _store(hparam, recipe, k)
                if store[module] is None:
                    store[module] = torch.zeros((), dtype=torch.float32, device=device)


def _store(hparam: Any, recipe: Any, k: int | None) -> dict[nn.Module, Any]:
    """ModelOpt's accumulators of `recipe` (k None), or those of its calibration on the first k batches."""
    if k is None:
        return hparam._importance_dict[recipe]
    extra = hparam.__dict__.setdefault("_qs_prefix_importance", {})
    return extra.setdefault((recipe, k), dict.fromkeys(hparam.score_modules))


def _replay(
    module: nn.Module, x: Any, args: tuple, kwargs: dict, y: torch.Tensor, grad: torch.Tensor, chunked: bool
) -> None:
    """Every candidate format of `module` replayed from (X, Y, G), each score added to its accumulator."""
    weight = module.weight if any(fast for *_x, fast in module._qs_score_plan) else None  # once, not per format
    bias = getattr(module, "bias", None)
    fused = grad.is_cuda and fused_enabled()
    for hparam, recipes, fast in module._qs_score_plan:
        for recipe, sizes in recipes:
            wq = None  # the quantized weight: weights are calibrated from the weights alone, so one per format
            last = sizes[-1] if sizes else None
            for k in (None, *sizes):
                store = _store(hparam, recipe, k)
                if k is None:
                    swap = contextlib.nullcontext()
                else:
                    swap = module._qs_prefixes.swapped(recipe_quantizers(hparam, recipe), k)
                with swap:
                    if fast:
                        q = hparam._all_quantizer_choices[recipe][module]
                        if wq is None:
                            wq = quantize(q["weight_quantizer"], weight)
                        diff = quantize(q["output_quantizer"], F.linear(quantize(q["input_quantizer"], x), wq, bias))
                        if k == last:
                            wq = None  # not held while the score's float temporaries are (the peak, at lm_head)
                    else:
                        diff = _slow_replay(module, hparam, recipe, x, args, kwargs)
                current = store[module]
                if not chunked and fused and fusable(diff, y, grad):
                    score = fused_score(diff, y, grad)  # one pass over the output (engine/score_kernel.py)
                else:
                    diff -= y  # a fresh tensor: in place, as ModelOpt does
                    score = _score_in_chunks(grad, diff) if chunked else _score(grad, diff)
                if current is None:
                    store[module] = score
                else:
                    current += score
                del diff


def _score(grad: torch.Tensor, diff: torch.Tensor) -> torch.Tensor:
    """ModelOpt's `_get_auto_quantize_score(grad, diff)` = (G.float() * D.float()).clamp(-1e10, 1e10).square().sum(),
    the same element-wise operations in place on one float copy of D (G is converted once per module): the same
    value, with one temporary of the output's size instead of five."""
    x = diff.float()
    x.mul_(grad)
    x.clamp_(-1e10, 1e10)
    x.square_()
    return x.sum()


# Outputs of at least this many elements are scored a slice of rows at a time (slices of this many elements).
CHUNK_ELEMENTS = 1 << 26
CHUNK_SLICE_ELEMENTS = 1 << 24


def _needs_chunks(grad: torch.Tensor) -> bool:
    return grad.numel() >= CHUNK_ELEMENTS and grad.dim() >= 2


def _score_in_chunks(grad: torch.Tensor, diff: torch.Tensor) -> torch.Tensor:
    """`_score` for an output as large as a Llama-3 lm_head's (2048 tokens x 128256: 263M elements), without its
    two float32 copies of the whole output (2 GB there, alive together at the peak of the score pass): the same
    element-wise operations, a slice of rows at a time, summed. Only the order of the float32 sum differs from
    ModelOpt's single reduction (a relative difference of order 1e-7; the engines are compared to 1e-6)."""
    width = diff.shape[-1]
    g, d = grad.reshape(-1, width), diff.reshape(-1, width)
    rows = max(1, CHUNK_SLICE_ELEMENTS // width)
    total = None
    for start in range(0, d.shape[0], rows):
        x = d[start : start + rows].float()
        x.mul_(g[start : start + rows])  # bf16 gradient promoted to float32 element by element: G.float() * D
        x.clamp_(-1e10, 1e10)
        x.square_()
        part = x.sum()
        total = part if total is None else total.add_(part)
        del x
    return total


def release_calibration_statistics(modules: list[nn.Module]) -> int:
    """Drop what ModelOpt's max calibrators keep once calibration is over (`_calib_amax`: a copy of every block
    amax, 562 MB for four group-wise formats on a Llama-3-8B shape, alive to the end of the call although nothing
    reads it after `load_calib_amax`). Returns how many were released."""
    from modelopt.torch.quantization.calib import MaxCalibrator

    hparams = {id(hp): hp for module in modules for hp, *_rest in module._qs_score_plan}.values()
    released = 0
    for hparam in hparams:
        for recipe in hparam._all_quantizer_choices:
            for q in recipe_quantizers(hparam, recipe):
                cal = getattr(q, "_calibrator", None)
                if type(cal) is MaxCalibrator and cal._calib_amax is not None:
                    cal.reset()
                    released += 1
    return released


def recipe_quantizers(hparam: Any, recipe: Any) -> list[nn.Module]:
    """Every quantizer object ModelOpt made for `recipe` in this decision group (each recipe has its own)."""
    return [q for per_module in hparam._all_quantizer_choices[recipe].values() for q in per_module.values()]


def _slow_replay(module: nn.Module, hparam: Any, recipe: Any, x: Any, args: tuple, kwargs: dict) -> torch.Tensor:
    """ModelOpt's way: switch the recipe in, call the module's (quantized) forward, switch back to NONE."""
    try:
        hparam.active = recipe
        return _output(module._forward_original(x, *args, **kwargs))
    finally:
        hparam.active = _none_recipe()


def _output(out: Any) -> torch.Tensor:
    return out[0] if isinstance(out, tuple) else out
