"""One calibration pass for every dataset size of a max-calibrated format whose activation scales depend on the data.

A static activation scale (FP8 W8A8, INT8 SmoothQuant-free W8A8, NVFP4's input global amax) is ModelOpt's max
calibration: every enabled quantizer's `MaxCalibrator` keeps the running element-wise maximum of |x| over the
calibration batches (`_calib_amax`), and `finish_stats_collection` loads it as the quantizer's `amax`. The amax of a
call calibrated on the first k batches is therefore the running maximum after batch k of a pass over more batches:
`PrefixCalibration` records it after each dataset size's prefix, during the one calibration pass over the largest
set. Weight quantizers are calibrated from the weights alone (the same at every size) and are not recorded.

Everything that scores or evaluates a smaller size then swaps the recorded amax in (`swapped` / `apply`), so every
size is calibrated exactly as its own AutoQuantize call would calibrate it. `verify` checks the one thing this rests
on after ModelOpt's calibration has finished: that the recorded maximum over all batches *is* the amax ModelOpt
loaded (so no post-processing of ModelOpt's changed it); if not, the call fails rather than give different scores.
AWQ, SmoothQuant and MSE calibration search over the activations and keep one call per size
(`shares_calibration_across_sizes`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator
from typing import Any

import torch
from torch import nn

from ..quant_summary import calibration_method


def shares_calibration_across_sizes(config: dict[str, Any]) -> bool:
    """Max calibration: the amax of a prefix of the calibration set is a running maximum (see the module doc)."""
    return calibration_method(config) in ("max", None)


class PrefixCalibration:
    """Records, per activation quantizer, its running amax after `steps` calibration batches of each format."""

    def __init__(self, steps: Iterable[int], calib_steps: int) -> None:
        self.calib_steps = calib_steps
        self.steps = sorted({int(k) for k in steps} | {calib_steps})
        self.amax: dict[nn.Module, dict[int, torch.Tensor]] = {}
        self.batches = 0

    @property
    def prefixes(self) -> list[int]:
        """The sizes smaller than the call's own (the call's own is what ModelOpt leaves in the quantizers)."""
        return [k for k in self.steps if k < self.calib_steps]

    def after_calibration_batch(self, model: nn.Module) -> None:
        """Called after every calibration forward; ModelOpt calibrates one format after another, `calib_steps`
        batches each, so the position in the current format's pass is the count modulo `calib_steps`."""
        self.batches += 1
        k = (self.batches - 1) % self.calib_steps + 1
        if k not in self.steps:
            return
        for name, q in _calibrating_activation_quantizers(model):
            self.amax.setdefault(q, {})[k] = q._calibrator._calib_amax.detach().clone()

    def verify(self) -> None:
        """After the calibration: the recorded maximum over all batches equals the amax ModelOpt loaded."""
        for q, by_k in self.amax.items():
            final = by_k.get(self.calib_steps)
            loaded = getattr(q, "_amax", None)
            if final is None or loaded is None or final.shape != loaded.shape or not torch.equal(
                final.to(loaded.device, loaded.dtype), loaded
            ):
                raise RuntimeError(
                    "one calibration pass for all dataset sizes: ModelOpt's calibrated amax is not the running "
                    "maximum recorded during the pass; this format cannot share calibration across sizes"
                )

    def sizes_for(self, quantizers: Iterable[nn.Module]) -> list[int]:
        """The smaller sizes recorded for a format's quantizers (none: a weight-only part of the call)."""
        return self.prefixes if any(q in self.amax for q in quantizers) else []

    @contextlib.contextmanager
    def swapped(self, quantizers: Iterable[nn.Module], k: int) -> Iterator[None]:
        """Within the block, the quantizers hold the amax of the first `k` calibration batches."""
        saved = []
        try:
            for q in quantizers:
                if q in self.amax:
                    saved.append((q, q._amax))
                    q._amax = self.amax[q][k]
            yield
        finally:
            for q, amax in saved:
                q._amax = amax

    def apply(self, quantizers: Iterable[nn.Module], k: int) -> None:
        """Leave the quantizers with the amax of the first `k` batches (a cell's evaluation)."""
        for q in quantizers:
            if q in self.amax:
                q._amax = self.amax[q][k]


def _calibrating_activation_quantizers(model: nn.Module) -> Iterator[tuple[str, Any]]:
    from modelopt.torch.quantization.nn import TensorQuantizer

    for name, q in model.named_modules():
        if not isinstance(q, TensorQuantizer) or "weight_quantizer" in name:
            continue
        if not getattr(q, "_if_calib", False) or getattr(q, "_dynamic", False):
            continue
        cal = getattr(q, "_calibrator", None)
        if cal is not None and getattr(cal, "_calib_amax", None) is not None:
            yield name, q
