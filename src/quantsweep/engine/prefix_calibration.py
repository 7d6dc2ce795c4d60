"""One calibration pass for every dataset size of a max-calibrated format whose activation scales depend on the data.

A static activation scale (FP8 W8A8, INT8 SmoothQuant-free W8A8, NVFP4's input global amax) is ModelOpt's max
calibration: every enabled quantizer's `MaxCalibrator` keeps the running element-wise maximum of |x| over the
calibration batches (`_calib_amax`), and `finish_stats_collection` loads it as the quantizer's `amax`. The amax of a
call calibrated on the first k batches is therefore the running maximum after batch k of a pass over more batches:
`PrefixCalibration` records it after each dataset size's prefix, during the one calibration pass over the largest
set. Weight quantizers are calibrated from the weights alone (the same at every size) and are not recorded.

Everything that scores or evaluates a smaller size then swaps the recorded amax in (`swapped` / `apply`). `verify`
checks, after ModelOpt's calibration and before anything uses the records, what this rests on: every calibrated
activation quantizer was recorded at every size, and the record over all batches *is* the amax ModelOpt loaded
(nothing after the pass changed it: ModelOpt syncs MoE experts' input amax across experts, for instance). If not,
it raises `PrefixCalibrationMismatch` and the shared engine runs those cells in one call per size instead. Sizes
share the pass only when they are whole batches (execution/shared_runner.py: 6 samples at batch 4 are batches of
4 + 2, which no prefix of a longer list has). AWQ, SmoothQuant, MSE and `layerwise` calibration keep one call per
size (`shares_calibration_across_sizes`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator
from typing import Any

import torch
from torch import nn

from ..quant_summary import calibration_method


def shares_calibration_across_sizes(config: dict[str, Any]) -> bool:
    """Plain max calibration: the amax of a prefix of the calibration set is a running maximum (see the module
    doc). Options such as `layerwise` change when quantizers collect, so they keep one call per size."""
    algorithm = config.get("algorithm", "max")
    if isinstance(algorithm, dict):
        return set(algorithm) <= {"method"} and algorithm.get("method") == "max"
    return algorithm in ("max", None) and calibration_method(config) in ("max", None)


class PrefixCalibrationMismatch(RuntimeError):
    """The one-pass calibration would not equal per-size calls for this model (the caller falls back to them)."""


class PrefixCalibration:
    """Records, per activation quantizer, its running amax after `steps` calibration batches of each format."""

    def __init__(self, steps: Iterable[int], calib_steps: int, wanted: dict[str, set[int]] | None = None) -> None:
        self.calib_steps = calib_steps
        self.steps = sorted({int(k) for k in steps} | {calib_steps})
        self.wanted = wanted  # recipe signature -> the sizes its cells use (None: every size)
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

    def verify(self, model: nn.Module) -> None:
        """After the calibration, before anything uses the records: every calibrated activation quantizer was
        recorded at every size, and the record over all batches is the amax ModelOpt loaded (nothing after the
        forward pass, such as a sync of MoE experts' amax, changed it). Otherwise `PrefixCalibrationMismatch`."""
        from modelopt.torch.opt.utils import named_hparams
        from modelopt.torch.quantization.algorithms import QuantRecipeHparam

        for _name, hparam in named_hparams(model, unique=True):
            if not isinstance(hparam, QuantRecipeHparam):
                continue
            for per_module in hparam._all_quantizer_choices.values():
                for quantizers in per_module.values():
                    for attr, q in quantizers.items():
                        if "weight_quantizer" in attr or getattr(q, "_amax", None) is None or q._dynamic:
                            continue
                        by_k = self.amax.get(q)
                        if by_k is None or set(by_k) != set(self.steps):
                            raise PrefixCalibrationMismatch(
                                "an activation quantizer was not recorded at every calibration size"
                            )
                        final, loaded = by_k[self.calib_steps], q._amax
                        if final.shape != loaded.shape or not torch.equal(final.to(loaded.device, loaded.dtype), loaded):
                            raise PrefixCalibrationMismatch(
                                "ModelOpt's calibrated amax is not the running maximum recorded during the pass"
                            )

    def sizes_for(self, quantizers: Iterable[nn.Module], signature: str) -> list[int]:
        """The smaller sizes at which a format is scored: those its cells use (none for a format whose
        quantizers were not recorded, i.e. whose calibration does not depend on the data)."""
        if not any(q in self.amax for q in quantizers):
            return []
        wanted = None if self.wanted is None else self.wanted.get(signature, set())
        return [k for k in self.prefixes if wanted is None or k in wanted]

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

    def apply(self, quantizers: Iterable[nn.Module], k: int) -> bool:
        """Leave the quantizers with (a copy of) the amax of the first `k` batches (a cell's evaluation). Returns
        whether any of them was recorded, i.e. whether what they hold depends on `k`."""
        recorded = False
        for q in quantizers:
            if q in self.amax:
                q._amax = self.amax[q][k].clone()
                recorded = True
        return recorded


def collecting_activation_quantizers(model: nn.Module) -> Iterator[tuple[str, Any]]:
    """The quantizers that collect statistics in the calibration pass under way (enable_stats_collection has
    run), other than weight quantizers."""
    from modelopt.torch.quantization.nn import TensorQuantizer

    for name, q in model.named_modules():
        if not isinstance(q, TensorQuantizer) or "weight_quantizer" in name:
            continue
        if q._disabled or not getattr(q, "_if_calib", False) or getattr(q, "_dynamic", False):
            continue
        if getattr(q, "_calibrator", None) is not None:
            yield name, q


def _calibrating_activation_quantizers(model: nn.Module) -> Iterator[tuple[str, Any]]:
    """Those of them that have collected something so far."""
    for name, q in collecting_activation_quantizers(model):
        if getattr(q._calibrator, "_calib_amax", None) is not None:
            yield name, q
