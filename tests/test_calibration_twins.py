"""engine/calibration_twins.py: which quantizers collect alike (the sweep-level check against the naive engine is in
tests/test_shared_engine.py)."""

from __future__ import annotations

import copy
import warnings

import torch

warnings.filterwarnings("ignore")

import modelopt.torch.quantization as mtq  # noqa: E402

from quantsweep.engine.calibration_twins import _transforms_inputs, collect_signature  # noqa: E402


def _quantized(config: dict) -> torch.nn.Module:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.Linear(64, 64))
    mtq.quantize(model, copy.deepcopy(config), lambda m: m(torch.randn(4, 64)))
    return model


def test_input_quantizers_of_formats_that_differ_only_in_weights_collect_alike():
    fp8 = _quantized(mtq.FP8_DEFAULT_CFG)
    fp8_blocks = copy.deepcopy(mtq.FP8_DEFAULT_CFG)
    fp8_blocks["quant_cfg"] = [*fp8_blocks["quant_cfg"],
                               {"quantizer_name": "*weight_quantizer", "cfg": {"num_bits": (4, 3), "block_sizes": {-1: 32}}}]
    fp8_g32 = _quantized(fp8_blocks)
    int8 = _quantized(mtq.INT8_DEFAULT_CFG)
    sig = collect_signature(fp8[0].input_quantizer)
    assert sig is not None and sig == collect_signature(fp8_g32[0].input_quantizer)  # only the weights differ
    assert collect_signature(fp8[0].weight_quantizer) != collect_signature(fp8_g32[0].weight_quantizer)
    assert collect_signature(int8[0].input_quantizer) != sig  # 8-bit integers: another kind, even if the max is the same
    assert not _transforms_inputs(fp8)


def test_a_quantizer_that_transforms_its_input_or_calibrates_a_bias_makes_no_twin():
    model = _quantized(mtq.FP8_DEFAULT_CFG)
    q = model[0].input_quantizer
    q._bias_calibrator = object()  # what an affine quantizer carries: its bias is calibrated as well
    assert collect_signature(q) is None
    q._bias_calibrator = None
    model[1].weight_quantizer.pre_quant_scale = torch.ones(64)  # AWQ-style scale: the forward is not the plain model's
    assert _transforms_inputs(model)
    assert collect_signature(model[1].input_quantizer) is not None  # the quantizer itself is fine; the pass is not
