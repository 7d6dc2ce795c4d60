"""Simulated weight-quantization error: format resolution, exact errors on tiny matrices, ModelOpt parity."""

from __future__ import annotations

import math

import pytest
import torch

from quantsweep.errors import InputError
from quantsweep.weights.quant_error import (
    DEFAULT_FORMATS,
    backend_name,
    error_text,
    fake_quantize,
    quant_errors,
    resolve_format,
    simulate,
    split_format_list,
)


def test_default_formats_resolve_and_describe_their_weight_quantizer():
    fmts = {n: resolve_format(n) for n in DEFAULT_FORMATS}
    assert fmts["wint8_afp16/default"].attributes == {"num_bits": 8, "axis": 0}
    assert fmts["wint4_afp16/default"].attributes == {"num_bits": 4, "block_sizes": {-1: 128, "type": "static"}}
    assert fmts["wint4_afp16/w_group64"].attributes == {"num_bits": 4, "block_sizes": {-1: 64, "type": "static"}}
    assert fmts["wint4_afp16/w_group64"].description == "int4 group64 static"
    assert fmts["wfp8_afp16/default"].attributes == {"num_bits": (4, 3), "axis": None}
    assert all(not f.needs_gpu and not f.warnings for f in fmts.values())


def test_format_names_are_validated():
    assert split_format_list(["wint8_afp16, wint4_afp16/w_group64", "wint8_afp16/default"]) == [
        "wint8_afp16/default",
        "wint4_afp16/w_group64",
    ]
    with pytest.raises(InputError, match="unknown quant pair 'wint3_afp16'"):
        resolve_format("wint3_afp16/default")
    with pytest.raises(InputError, match="unknown granularity 'w_group7'"):
        resolve_format("wint4_afp16/w_group7")
    with pytest.raises(InputError, match="not PAIR/GRANULARITY"):
        resolve_format("a/b/c")


def test_data_dependent_calibration_is_flagged():
    fmt = resolve_format("wint4_afp16_awq/default")
    assert fmt.calibration == "awq_lite"
    assert any("max calibration" in w for w in fmt.warnings)


def test_noop_overlay_is_flagged():
    # a_per_token_dynamic touches the input quantizer, which a weight-only pair disables
    assert any("does nothing" in w for w in resolve_format("wint8_afp16/a_per_token_dynamic").warnings)


def test_int8_per_channel_error_by_hand():
    w = torch.tensor([[1.0, 0.3], [-2.0, 0.5]])
    res = simulate(w, resolve_format("wint8_afp16/default"))
    # row scales 1/127 and 2/127: 0.3 -> 38/127, 0.5 -> round(31.75) = 32 -> 64/127
    q = torch.tensor([[1.0, 38 / 127], [-2.0, 64 / 127]], dtype=torch.float64)
    d = q - w.double()
    assert res["max_abs_err"] == pytest.approx(float(d.abs().max()), rel=1e-5)
    assert res["rel_fro"] == pytest.approx(float(d.norm() / w.double().norm()), rel=1e-5)
    assert res["rel_max"] == pytest.approx(float(d.abs().max()) / 2.0, rel=1e-5)
    assert res["sqnr_db"] == pytest.approx(10 * math.log10(float(w.double().norm() ** 2 / d.norm() ** 2)), rel=1e-4)


def test_exactly_representable_weights_have_zero_error():
    k = torch.tensor([[127, -3, 0, 64], [-127, 5, 1, 2]], dtype=torch.float32)
    w = k * torch.tensor([[0.5], [0.25]]) / 127  # row amax 0.5 / 0.25, every value on the int8 grid
    res = simulate(w, resolve_format("wint8_afp16/default"))
    assert res["rel_fro"] == 0.0 and res["max_abs_err"] == 0.0 and math.isinf(res["sqnr_db"])


def test_groups_beat_per_tensor_on_a_matrix_with_a_hot_row():
    gen = torch.Generator().manual_seed(0)
    w = torch.randn(64, 256, generator=gen)
    w[3] *= 50
    g64 = simulate(w, resolve_format("wint4_afp16/w_group64"))["rel_fro"]
    g128 = simulate(w, resolve_format("wint4_afp16/default"))["rel_fro"]
    per_tensor = simulate(w, resolve_format("wint4_afp16/w_per_tensor"))["rel_fro"]
    assert g64 < g128 < per_tensor


def test_fake_quantize_equals_modelopt_quantize_on_a_linear():
    """The standalone quantizer gives the same weights as `mtq.quantize` on an nn.Linear with the same config."""
    import modelopt.torch.quantization as mtq

    from quantsweep.overlay import apply_overlay
    from quantsweep.planning import resolve_granularity, resolve_pair

    for name in ("wint4_afp16/w_group64", "wint8_afp16/default", "wfp8_afp16/default"):
        pair, gran = name.split("/")
        config, _ = apply_overlay(resolve_pair(pair).config, resolve_granularity(gran).overrides)
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Linear(192, 48, bias=False))
        w = model[0].weight.detach().clone()
        mtq.quantize(model, config, forward_loop=lambda m: m(torch.randn(4, 192)))
        with torch.no_grad():
            expected = model[0].weight_quantizer(model[0].weight)
        ours = fake_quantize(w, resolve_format(name).attributes)
        assert torch.equal(ours, expected), name


def test_gpu_only_format_with_modelopt_kernels_raises_on_cpu_with_a_clear_text():
    fmt = resolve_format("wfp4_afp16/default")
    assert fmt.needs_gpu
    with pytest.raises(Exception) as exc:
        simulate(torch.randn(16, 64), fmt, "cpu", backend="modelopt")
    text = error_text(exc.value, fmt, "cpu", "modelopt")
    assert "only on CUDA" in text and text.startswith(type(exc.value).__name__)


def test_gpu_only_format_uses_the_pytorch_backend_on_cpu_by_default():
    from quantsweep.engine.torch_formats import BACKEND_NAME, nvfp4_fake_quant

    fmt = resolve_format("wfp4_afp16/default")
    assert backend_name(fmt, "auto", "cpu") == BACKEND_NAME and backend_name(fmt, "auto", "cuda") == "modelopt"
    assert backend_name(resolve_format("wint8_afp16"), "torch", "cpu") == "modelopt"  # not an NVFP4/MX quantizer
    w = torch.randn(16, 64, generator=torch.Generator().manual_seed(0))
    res = simulate(w, fmt)
    # max calibration gives the per-tensor amax; the backend then quantizes 16-element blocks
    expected = nvfp4_fake_quant(w, w.abs().max(), 16)
    d = expected.double() - w.double()
    assert res["rel_fro"] == pytest.approx(float(d.norm() / w.double().norm()), rel=1e-6)


def test_quant_errors_precomputed_reference_is_the_same():
    w = torch.randn(8, 32)
    q = w + 0.01
    assert quant_errors(w, q) == quant_errors(w, q, (float(w.double().norm() ** 2), float(w.abs().max())))
