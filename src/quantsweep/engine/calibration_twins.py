"""One calibration forward for every format whose activation quantizers collect the same statistics.

AutoQuantize calibrates its formats one after another, each with a forward pass over the calibration batches
(`_AutoQuantizeBaseSearcher`'s loop over `search_recipes`). Under plain max calibration that forward is the
*unquantized* model: `enable_stats_collection` turns every calibrating quantizer's quantization off while it
collects, and disables the others. So each activation quantizer (input, output) collects the running max of the
same activations whatever the format, and two formats whose collecting activation quantizers are configured alike,
module by module, calibrate to the same amax: FP8 W8A8 at three weight granularities has three passes that differ
only in the weights, which ModelOpt calibrates on the weights themselves before the forward (`weight_only_quantize`;
the weight quantizers would only collect the max of the same weights again in the forward, the argument behind the
weight-only skip in engine/autoquant.py).

`CalibrationTwins` records the running amax of each collecting activation quantizer after every recorded step of a
pass that ran (the prefix sizes of engine/prefix_calibration.py and the last step). When a later format's pass
starts with the same collecting quantizers, by module name, each with the same `collect_signature`, it is that
pass's *twin*: its steps run no forward, and at every recorded step its calibrators are given a copy of the first
pass's running amax there, so that ModelOpt's `finish_stats_collection` loads the amax the forward would have made
and PrefixCalibration records the same per-size values. Only for calls whose formats are all plain max
(`shares_calibration_across_sizes`), like the weight-only skip; a quantizer whose calibrator is not ModelOpt's
`MaxCalibrator`, a static bias, or any quantizer of the model that transforms its input with quantization off (a
pre-quant scale, a rotation: `_transforms_inputs`) makes no twin.
tests/test_shared_engine.py checks a call with twins against the naive engine's calls.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from .prefix_calibration import collecting_activation_quantizers

# the quantizer attributes that are state, not configuration (the dtype seen last; set by the forward)
_STATE_ATTRS = frozenset({"_input_dtype", "_if_calib", "_if_quant"})


def collect_signature(q: nn.Module) -> tuple[Any, ...] | None:
    """What decides what a quantizer collects in a max calibration pass: its class and configuration (ModelOpt's
    own list of saved properties: bits, axis, block sizes, dynamic, bias, rotation, ...) and its calibrator's
    class and settings. None when it is not a plain `MaxCalibrator` quantizer without a pre-quant scale."""
    from modelopt.torch.quantization.calib import MaxCalibrator

    cal = getattr(q, "_calibrator", None)
    if type(cal) is not MaxCalibrator or getattr(q, "pre_quant_scale", None) is not None:
        return None
    if getattr(q, "_bias_calibrator", None) is not None:  # a static bias is calibrated too: not copied here
        return None
    if getattr(cal, "_track_amax", False):
        return None
    props = q.get_modelopt_state(properties_only=True)
    config = tuple(sorted((k, repr(v)) for k, v in props.items() if k not in _STATE_ATTRS))
    settings = tuple(sorted((k, repr(v)) for k, v in vars(cal).items() if not isinstance(v, torch.Tensor)))
    return type(q), config, type(cal), settings


def _transforms_inputs(model: nn.Module) -> bool:
    """Any quantizer of the pass, collecting or not, that changes its input even with quantization off (a
    pre-quant scale, a rotation): then the calibration forward is not the unquantized model's, and no pass is
    anybody's twin."""
    from modelopt.torch.quantization.nn import TensorQuantizer

    for q in model.modules():
        if not isinstance(q, TensorQuantizer):
            continue
        if getattr(q, "pre_quant_scale", None) is not None:
            return True
        if getattr(q, "rotate_is_enabled", False) or getattr(q, "rotate_back_is_enabled", False):
            return True
    return False


@dataclass
class _Pass:
    quantizers: dict[str, nn.Module]
    signature: dict[str, Any] | None  # None: not shareable
    source: _Pass | None = None  # the pass this one is a twin of
    amax: dict[int, dict[str, torch.Tensor | None]] = field(default_factory=dict)  # recorded step -> name -> amax


class CalibrationTwins:
    """Decides, at the first step of each calibration pass that needs data, whether an earlier pass already
    collected its statistics; see the module doc."""

    def __init__(self, calib_steps: int, record_steps: Iterable[int] = ()) -> None:
        self.calib_steps = calib_steps
        self.record_steps = sorted({int(k) for k in record_steps if 0 < int(k) <= calib_steps} | {calib_steps})
        self.steps = 0  # data-needing calibration steps seen
        self.passes: list[_Pass] = []
        self.twinned = 0  # passes that ran no forward

    @property
    def _k(self) -> int:
        return (self.steps - 1) % self.calib_steps + 1

    def skip_step(self, model: nn.Module) -> bool:
        """Called before each data-needing calibration step; True: this pass is a twin, run no forward (its
        calibrators already hold what the forward would have collected by this step, where it is read)."""
        self.steps += 1
        k = self._k
        if k == 1:
            self.passes.append(self._start(model))
        current = self.passes[-1]
        if current.source is None:
            return False
        if k in self.record_steps:
            for name, q in current.quantizers.items():
                amax = current.source.amax[k][name]
                q._calibrator._calib_amax = None if amax is None else amax.clone()
        return True

    def after_forward(self, model: nn.Module) -> None:
        """Called after each calibration forward that ran: record the running amax at the recorded steps."""
        current = self.passes[-1] if self.passes else None
        k = self._k
        if current is None or current.signature is None or k not in self.record_steps:
            return
        current.amax[k] = {
            name: None if q._calibrator._calib_amax is None else q._calibrator._calib_amax.detach().clone()
            for name, q in current.quantizers.items()
        }

    def _start(self, model: nn.Module) -> _Pass:
        quantizers = dict(collecting_activation_quantizers(model))
        signature: dict[str, Any] | None = None if _transforms_inputs(model) else {}
        for name, q in quantizers.items() if signature is not None else ():
            sig = collect_signature(q)
            if sig is None:
                signature = None
                break
            signature[name] = sig
        new = _Pass(quantizers, signature)
        if signature:
            for earlier in self.passes:
                if earlier.source is None and earlier.signature == signature and len(earlier.amax) == len(
                    self.record_steps
                ):
                    new.source = earlier
                    self.twinned += 1
                    break
        return new
