"""A max calibration's forward passes without the weight quantizers that are calibrated already.

ModelOpt's `max_calibrate` first calibrates every weight quantizer on its weight (`weight_only_quantize`: the
weight through the quantizer, collecting) and then runs the forward loop with every calibrating quantizer still
collecting, so each batch's forward passes every weight through its quantizer again: a reduction over the whole
weight and the calibrator's running max, per linear and batch, to collect the max of the same weight. In a GPU
sampling profile of the reference matrix (27 cells, Qwen3-0.6B shape, FP8 W8A8 at 3 weight granularities) those
weight-quantizer calls were 21 % of the calibration forward.

`calibrated_weights_muted(model)` switches such quantizers off for one forward: a collecting quantizer does not
quantize (`enable_stats_collection` turned quantization off), so it returns its input, and so does a disabled one;
the running max of the same weight is the same value, so nothing it would have collected is lost; and the one
attribute a disabled quantizer's forward writes (`_input_dtype`, kept for saving) is put back. Only plain
`TensorQuantizer`s of plain quantized linears (engine/quant_linear.py: their forward passes `self.weight`, the
tensor `weight_only_quantize` collected; a module that passes another one, a dequantized FP8 checkpoint weight say,
keeps collecting) whose `MaxCalibrator` already holds an amax, without a static bias, with nothing that changes
their input with quantization off (a pre-quant scale, a rotation), and only in calls whose formats are all plain max calibration
(engine/autoquant.py, as the weight-only skip): anything else collects as ModelOpt made it.
tests/test_shared_engine.py compares the scores, recipes and quality of calls calibrated this way with the naive
engine's.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from torch import nn

from .quant_linear import plain_quantized_linear

_UNSET = object()


def _already_calibrated_weight_quantizers(model: nn.Module) -> list[nn.Module]:
    from modelopt.torch.quantization.calib import MaxCalibrator
    from modelopt.torch.quantization.nn import TensorQuantizer

    out = []
    for module in model.modules():
        q = module._modules.get("weight_quantizer")
        if type(q) is not TensorQuantizer or q._disabled or not q._if_calib or q._if_quant or getattr(q, "_dynamic", True):
            continue
        if not plain_quantized_linear(module):  # its forward might pass another tensor (a dequantized FP8 weight)
            continue
        if q.__dict__.get("_bias_calibrator") is not None or q.bias is not None:
            continue  # a static bias: a second collection would move its running mean
        cal = q._calibrator
        if type(cal) is not MaxCalibrator or cal._calib_amax is None:
            continue
        if q.pre_quant_scale is not None or q.rotate_is_enabled or q.rotate_back_is_enabled:
            continue
        out.append(q)
    return out


@contextlib.contextmanager
def calibrated_weights_muted(model: nn.Module) -> Iterator[int]:
    """Inside, the weight quantizers of `model` calibrated already (see the module docstring) are disabled; yields
    how many. Their state is restored on the way out, also after an exception."""
    muted = _already_calibrated_weight_quantizers(model)
    dtypes = [q.__dict__.get("_input_dtype", _UNSET) for q in muted]
    for q in muted:
        q._disabled = True
    try:
        yield len(muted)
    finally:
        for q, dtype in zip(muted, dtypes, strict=True):
            q._disabled = False
            if dtype is _UNSET:
                q.__dict__.pop("_input_dtype", None)
            else:
                q._input_dtype = dtype
