"""Holding one candidate format's quantization error at a time while ModelOpt scores, not all of them.

ModelOpt's gradient score needs, for every scored module m and candidate format f, the difference
D_f = Q_f(Y) - Y between the module's output with f switched on and without. Its scoring forward computes every
D_f during the forward pass and keeps them in `module.output_diff_dict` until the backward hook has multiplied
them by the output gradient, and then (until the next forward overwrites it) longer still. So at the end of a
forward, every format's D_f of the `lm_head` is alive (4 x 0.5 GB for four formats on a Llama-3-8B with 4x512
tokens in bf16), and at the end of every backward, every layer's D_f for every format is (5.6 GB per format).

`ScoreMemory`, installed on the model after ModelOpt's own set-up (at the first score step), always drops a
module's differences once its backward hook has used them; with `lazy` (CPU models) it also replaces ModelOpt's
scoring forward by one that keeps only the module's input and output, and hands ModelOpt's backward hook a
mapping that computes each D_f when the hook reaches it (`_LazyDiffs`): the same call of the module's quantized
forward on the same input with the same calibrated quantizers, the same subtraction, so the same tensor; it is
only computed later, once, and released before the next format's. A second backward hook then drops the
module's references. Scores are unchanged: tests/test_shared_engine.py checks the shared engine's union calls
(on demand, two or more formats) against the naive engine's single-format calls (ModelOpt's own forward) to 1e-6.
The peak holds one format's difference per module instead of all of them.
"""

from __future__ import annotations

import types
from collections.abc import Iterator, Mapping
from typing import Any

import torch
from torch import nn


class ScoreMemory:
    """`lazy`: compute the differences on demand (host memory); otherwise only drop them after use.

    Measured on an H200 (Llama-3-8B shape, 8 weight-only cells, `benchmarks/big_models.py --part 8b`): on demand
    took the union call's peak from 23.2 to 22.2 GB but its time from 8.2 to 10.1 s, and every naive call 15 %
    slower: computing in the backward hooks costs the GPU more than the memory is worth there. On the CPU
    quickstart it took the peak host memory from 2.7 to 2.5 GB at no measurable cost. So: on for CPU models, and
    only for modules with two or more candidate formats (with one, there is nothing to hold back).
    """

    def __init__(self, lazy: bool = False) -> None:
        self.lazy = lazy
        self.handles: list[Any] = []
        self.installed = False

    def install(self, model: nn.Module) -> None:
        """Once, at the first score step (ModelOpt has patched its score modules by then)."""
        if self.installed:
            return
        self.installed = True
        for module in model.modules():
            if hasattr(module, "_backward_hook_handle") and hasattr(module, "_forward_original"):
                if self.lazy and _candidates(module) >= 2:
                    module.forward = types.MethodType(_lazy_scoring_forward, module)  # ModelOpt's clean-up restores it
                self.handles.append(module.register_full_backward_hook(_drop_output_diffs))

    def __enter__(self) -> ScoreMemory:
        return self

    def __exit__(self, *exc: Any) -> None:
        for h in self.handles:
            h.remove()
        self.handles.clear()


def _candidates(module: nn.Module) -> int:
    none = _none_recipe()
    return max((sum(1 for r in hp.choices if r != none) for hp in module._hparams_for_scoring if hp.is_configurable),
               default=0)


def _none_recipe() -> Any:
    from modelopt.torch.quantization.algorithms import QuantRecipe

    return QuantRecipe(quant_cfg=None)


def _lazy_scoring_forward(module: nn.Module, input: Any, *args: Any, **kwargs: Any) -> Any:
    """ModelOpt's `auto_quantize_score_estimate_forward`, with the differences left to be computed on demand."""
    none = _none_recipe()
    for hparam in module._hparams_for_scoring:
        if hparam.is_configurable:
            hparam.active = none
    output = module._forward_original(input, *args, **kwargs)
    if not torch.is_grad_enabled():  # gradient checkpointing: the differences are taken in the recomputation
        return output
    base = (output[0] if isinstance(output, tuple) else output).detach()
    module.output_diff_dict = {
        hparam: (_LazyDiffs(module, hparam, input, args, kwargs, base) if hparam.is_configurable else {})
        for hparam in module._hparams_for_scoring
    }
    return output


class _LazyDiffs(Mapping):
    """recipe -> Q_recipe(Y) - Y of one module, each computed when asked for (ModelOpt's hook iterates `items()`)."""

    def __init__(self, module: nn.Module, hparam: Any, input: Any, args: tuple, kwargs: dict, base: torch.Tensor):
        self.module, self.hparam, self.input, self.args, self.kwargs, self.base = module, hparam, input, args, kwargs, base
        self.version = input._version if isinstance(input, torch.Tensor) else None
        none = _none_recipe()
        self.recipes = [r for r in hparam.choices if r != none]

    def __len__(self) -> int:
        return len(self.recipes)

    def __iter__(self) -> Iterator[Any]:
        return iter(self.recipes)

    def __getitem__(self, recipe: Any) -> torch.Tensor:
        if recipe not in self.recipes:
            raise KeyError(recipe)
        return self._diff(recipe)

    def items(self) -> Iterator[tuple[Any, torch.Tensor]]:  # type: ignore[override]
        for recipe in self.recipes:
            yield recipe, self._diff(recipe)

    def _diff(self, recipe: Any) -> torch.Tensor:
        if self.version is not None and self.input._version != self.version:
            raise RuntimeError(
                "AutoQuantize scoring: a scored module's input was modified in place after its forward; its "
                "quantization error cannot be recomputed"
            )
        none = _none_recipe()
        try:
            with torch.no_grad():
                self.hparam.active = recipe
                out = self.module._forward_original(self.input, *self.args, **self.kwargs)
                if isinstance(out, tuple):
                    return (out[0] - self.base).detach()
                out -= self.base
                return out.detach()
        finally:
            self.hparam.active = none


def _drop_output_diffs(module: nn.Module, grad_input: Any, grad_output: Any) -> None:
    """Runs after ModelOpt's backward hook (hooks run in order): the module's inputs, outputs and any difference
    are no longer needed until its next forward."""
    module.output_diff_dict = {}
