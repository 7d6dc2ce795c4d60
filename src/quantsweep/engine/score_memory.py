"""Dropping ModelOpt's per-format quantization errors once they are used (the naive engine's scoring).

ModelOpt's gradient score needs, for every scored module m and candidate format f, the difference
D_f = Q_f(Y) - Y between the module's output with f switched on and without. Its scoring forward keeps every D_f
in `module.output_diff_dict` until the backward hook has multiplied them by the output gradient, and then (until
the next forward overwrites it) longer still: at the end of every backward, every layer's D_f is alive (5.6 GB per
format on a Llama-3-8B with 4x512 tokens in bf16). A second backward hook, after ModelOpt's, drops them.

The shared engine does not need this: it replaces ModelOpt's scoring forward altogether
(engine/captured_scores.py) and never holds a D_f longer than one replay.
"""

from __future__ import annotations

from typing import Any

from torch import nn


class ScoreMemory:
    """Installed once, at the first score step (ModelOpt has patched its score modules by then)."""

    def __init__(self) -> None:
        self.handles: list[Any] = []
        self.installed = False

    def install(self, model: nn.Module) -> None:
        if self.installed:
            return
        self.installed = True
        for module in model.modules():
            if hasattr(module, "_backward_hook_handle") and hasattr(module, "_forward_original"):
                self.handles.append(module.register_full_backward_hook(_drop_output_diffs))

    def __enter__(self) -> ScoreMemory:
        return self

    def __exit__(self, *exc: Any) -> None:
        for h in self.handles:
            h.remove()
        self.handles.clear()


def _drop_output_diffs(module: nn.Module, grad_input: Any, grad_output: Any) -> None:
    """Runs after ModelOpt's backward hook (hooks run in order): the differences are no longer needed."""
    module.output_diff_dict = {}
