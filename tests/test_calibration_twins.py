"""engine/calibration_twins.py: which quantizers collect alike; engine/calibrated_weights.py: the weight quantizers
that sit out a calibration forward (the sweep-level checks against the naive engine are in tests/test_shared_engine.py)."""

from __future__ import annotations

import contextlib
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


def test_weight_quantizers_calibrated_already_sit_out_the_calibration_forward():
    """ModelOpt's max_calibrate: weights first, then the forward loop with every quantizer collecting. With the
    weight quantizers muted in the forward, every quantizer ends with the same amax and the same state."""
    from modelopt.torch.quantization.model_calib import (
        enable_stats_collection,
        finish_stats_collection,
        weight_only_quantize,
    )
    from modelopt.torch.quantization.nn import TensorQuantizer

    from quantsweep.engine.calibrated_weights import calibrated_weights_muted

    base = _quantized(mtq.FP8_DEFAULT_CFG)
    x = torch.randn(8, 64) * 3
    outputs, states = [], []
    for mute in (False, True):
        model = copy.deepcopy(base)
        for q in model.modules():
            if isinstance(q, TensorQuantizer):
                q._calibrator.reset()  # fresh, as AutoQuantize's per-format quantizers are
        enable_stats_collection(model)
        with calibrated_weights_muted(model) as n:
            assert n == 0  # nothing collected on the weights yet: nothing sits out
        weight_only_quantize(model)
        with calibrated_weights_muted(model) if mute else contextlib.nullcontext(0) as n:
            assert n == (2 if mute else 0)
            assert all(m.weight_quantizer._disabled == mute for m in model)
            outputs.append(model(x))
        finish_stats_collection(model)
        states.append({name: (None if q.amax is None else q.amax.clone(), q._disabled, q._if_calib, q._if_quant, q._input_dtype)
                       for name, q in model.named_modules() if isinstance(q, TensorQuantizer)})
    assert torch.equal(outputs[0], outputs[1])
    assert states[0].keys() == states[1].keys() and len(states[0]) == 6
    for name, (amax, *rest) in states[0].items():
        other = states[1][name][0]
        assert (amax is None and other is None) or torch.equal(amax, other), name
        assert tuple(rest) == states[1][name][1:], name
    assert sum(v[0] is not None for v in states[1].values()) == 4  # inputs and weights; outputs are off
    # the inputs' amax came from the forward (x is 3x wider than the weights' calibration data)
    assert float(states[1]["0.input_quantizer"][0]) == float(x.abs().max())
    # a linear whose forward is not the plain expression (it might pass another tensor than its weight) keeps
    # collecting, and so does a weight quantizer with a static bias (a second collection moves its running mean)
    enable_stats_collection(model)
    weight_only_quantize(model)
    with calibrated_weights_muted(model) as n:
        assert n == 2  # collecting again, both would sit out
    model[0]._forward_pre_dm = lambda *a: None
    with calibrated_weights_muted(model) as n:
        assert n == 1 and not model[0].weight_quantizer._disabled and model[1].weight_quantizer._disabled
    model[1].weight_quantizer._bias = {-1: None, "type": "static"}
    with calibrated_weights_muted(model) as n:
        assert n == 0
