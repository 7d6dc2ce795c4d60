"""The pure-PyTorch NVFP4 / MX fake quantizers against hand-computed values (bit-exact), and inside ModelOpt."""

from __future__ import annotations

import pytest
import torch

from quantsweep.engine.torch_formats import (
    BACKEND_NAME,
    mx_fake_quant,
    nvfp4_fake_quant,
    with_torch_backend,
)


def t(*v):
    return torch.tensor(v, dtype=torch.float32)


# --- NVFP4 (global amax 2688 -> global scale exactly 1) -------------------------------------------------------
def test_nvfp4_rounding_ties_signs_and_zero_block():
    x = t(6, 3, 1.5, -0.75, 0.2, 0.25, 0.26, -6, 5, 5.1, 0, -0.0, 1.25, 1.75, 2.5, 3.5)
    # block amax 6 -> scale fp8(6/6)=1: plain E2M1 rounding, ties to even (0.25->0, 0.75->1, 1.25->1,
    # 1.75->2, 2.5->2, 3.5->4, 5->4), 5.1->6
    expected = t(6, 3, 1.5, -1, 0, 0, 0.5, -6, 4, 6, 0, 0, 1, 2, 2, 4)
    zeros = torch.zeros(16)
    y = nvfp4_fake_quant(torch.stack([x, zeros]), 2688.0)
    assert torch.equal(y[0], expected)
    assert torch.equal(y[1], zeros)  # a block whose max is 0 stays 0 (scale falls back to 1)


def test_nvfp4_block_scale_is_rounded_to_fp8():
    # block amax 7: scale 7/6 = 1.1667 -> E4M3 1.125; 7/1.125 = 6.22 -> 6 -> 6.75; 1 / 1.125 = 0.889 -> 1 -> 1.125
    x = t(7, 1, *[0] * 14)
    y = nvfp4_fake_quant(x, 2688.0)
    assert y[0].item() == 6.75 and y[1].item() == 1.125 and torch.count_nonzero(y[2:]) == 0


def test_nvfp4_saturation_when_values_exceed_the_global_amax():
    # global amax 26.88 -> global scale 0.01; block amax 60 -> 60/0.06 = 1000 -> clamped to 448 -> scale 4.48
    x = t(60, -60, 4.48, *[0] * 13)
    y = nvfp4_fake_quant(x, 26.88)
    s = torch.tensor(448.0).to(torch.float8_e4m3fn).float() * (torch.tensor(26.88) / 2688.0)
    assert torch.equal(y[:3], torch.stack([6 * s, -6 * s, 1 * s]))


def test_nvfp4_block_boundaries_and_padding():
    # 20 columns: block 0 = cols 0..15, block 1 = cols 16..19 padded with zeros to 16
    x = torch.zeros(2, 20)
    x[0, 0], x[0, 15] = 6.0, 0.7  # block 0: scale 1 -> 0.7 -> 0.5
    x[0, 16], x[0, 19] = 3.0, 1.0  # block 1: amax 3 -> scale 0.5 -> 3 -> 3, 1 -> 1
    x[1, 17] = -0.3  # block amax 0.3 -> scale 0.05 (fp8 of 0.05 is 0.05078125) -> -0.3/0.0508 = -5.9 -> -6
    y = nvfp4_fake_quant(x, 2688.0)
    assert y[0, 0] == 6 and y[0, 15] == 0.5 and y[0, 16] == 3 and y[0, 19] == 1
    s = torch.tensor(0.05).to(torch.float8_e4m3fn).float()
    assert y[1, 17] == -6 * s and torch.count_nonzero(y) == 5
    assert y.shape == (2, 20)


def test_nvfp4_tiny_block_scale_guard():
    # ModelOpt replaces a block scale below 1e-5 by 1: such a block quantizes to zero
    x = t(5e-5, -4e-5, *[0] * 14)
    assert torch.count_nonzero(nvfp4_fake_quant(x, 2688.0)) == 0


def test_nvfp4_keeps_dtype_and_shape():
    x = torch.randn(3, 4, 32, dtype=torch.bfloat16)
    y = nvfp4_fake_quant(x, x.float().abs().max())
    assert y.dtype == torch.bfloat16 and y.shape == x.shape


# --- MX (E8M0 block scales) ------------------------------------------------------------------------------------
def test_mxfp4_power_of_two_scale_rounds_up():
    # amax 6 -> ratio 1 -> scale 1 (exact power of two: not rounded up)
    a = mx_fake_quant(t(6, -3, 2.5, 0.25, *[0] * 28), (2, 1))
    assert a[:4].tolist() == [6, -3, 2, 0]
    # amax 7 -> ratio 1.167 -> unscale 2: 7/2 = 3.5 -> tie -> 4 -> 8; 1/2 = 0.5 -> 0.5 -> 1
    b = mx_fake_quant(t(7, 1, *[0] * 30), (2, 1))
    assert b[:2].tolist() == [8, 1]


def test_mxfp8_mxfp6_mxint8_and_zero_block():
    # MXFP8: amax 500 -> ratio 1.116 -> unscale 2; 500/2 = 250 -> E4M3 256 -> 512; 3/2 = 1.5 -> 1.5 -> 3
    assert mx_fake_quant(t(500, 3, *[0] * 30), (4, 3))[:2].tolist() == [512, 3]
    # MXFP6 E3M2: amax 28 -> scale 1; 27 -> tie between 26? no: 27 lies between 24 and 28, bound 26 -> 28
    assert mx_fake_quant(t(28, 27, 9, 11, *[0] * 28), (3, 2))[:4].tolist() == [28, 28, 8, 12]
    # MXINT8: amax 100 -> ratio 0.787 -> unscale 1; rint with ties to even
    assert mx_fake_quant(t(100, 2.5, 3.5, -2.5, *[0] * 28), 8)[:4].tolist() == [100, 2, 4, -2]
    assert torch.count_nonzero(mx_fake_quant(torch.zeros(32), (2, 1))) == 0


def test_with_torch_backend_marks_only_block_formats():
    from quantsweep.catalogue import QUANT_PAIRS

    cfg, used = with_torch_backend(QUANT_PAIRS["wfp4_afp8"].config())
    assert used
    by_name = {e["quantizer_name"]: e for e in cfg["quant_cfg"] if "cfg" in e}
    assert by_name["*weight_quantizer"]["cfg"]["backend"] == BACKEND_NAME
    assert "backend" not in by_name["*input_quantizer"]["cfg"]  # FP8 per-tensor runs natively on a CPU
    cfg, used = with_torch_backend(QUANT_PAIRS["wint4_afp16"].config())
    assert not used and "backend" not in str(cfg)


@pytest.mark.parametrize("pair", ["wfp4_afp16", "wfp4_afp4", "wmxfp4_amxfp4", "wmxfp8_amxfp8", "wmxint8_amxint8"])
def test_modelopt_quantize_runs_on_cpu_with_the_backend(pair):
    """Without the backend ModelOpt raises on a CPU; with it the quantized Linear equals our function."""
    import modelopt.torch.quantization as mtq

    from quantsweep.catalogue import QUANT_PAIRS
    from quantsweep.engine import torch_formats

    torch_formats.register()
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(64, 32, bias=False))
    weight = model[0].weight.detach().clone()
    x = torch.randn(4, 64)
    cfg, used = with_torch_backend(QUANT_PAIRS[pair].config())
    assert used
    mtq.quantize(model, cfg, lambda m: m(x))
    wq = model[0].weight_quantizer(weight)
    if pair.startswith("wfp4"):
        expected = nvfp4_fake_quant(weight, weight.abs().max())
    else:
        expected = mx_fake_quant(weight, QUANT_PAIRS[pair].config()["quant_cfg"][1]["cfg"]["num_bits"])
    assert torch.equal(wq, expected)
    out = model(x.requires_grad_())
    out.sum().backward()  # the straight-through backward works
    assert x.grad is not None and torch.isfinite(x.grad).all()


def test_e4m3_rounding_matches_torch_cast_across_normals_and_subnormals():
    from quantsweep.engine.torch_formats import _to_e4m3

    g = torch.Generator().manual_seed(0)
    x = torch.cat(
        [
            torch.exp2(torch.empty(20000).uniform_(-14, 9, generator=g)) * torch.randn(20000, generator=g).sign(),
            torch.tensor([0.0, 2.0**-9, 2.0**-10, 3 * 2.0**-11, 2.0**-6, 448.0, 464.0, 1e6, -1e6, 0.0625 + 2.0**-8]),
        ]
    )
    expected = x.clamp(-448, 448).to(torch.float8_e4m3fn).float()
    assert torch.equal(_to_e4m3(x), expected)
    # ties to even in the subnormal range: 2^-10 is half of the smallest subnormal 2^-9 -> 0
    assert _to_e4m3(torch.tensor([2.0**-10, 3 * 2.0**-10])).tolist() == [0.0, 2.0**-8]
