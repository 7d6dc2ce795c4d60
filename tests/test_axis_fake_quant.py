"""The per-axis fake quantization kernel (engine/axis_fake_quant.py) against the arithmetic of ModelOpt's CUDA
kernel, in Triton's CPU interpreter (a subprocess: the interpreter is chosen when Triton is imported). The
interpreter has no libdevice (the kernel takes `rint` from exact operations there) and truncates where a GPU rounds
when it converts to bfloat16, so bfloat16 and the compiled `rint` are checked against ModelOpt's own kernel on the
GPU (tests/test_gpu_cuda.py::test_axis_fake_quant_kernel_gives_modelopts_bits); float16 checks the rounding here."""

from __future__ import annotations

import textwrap

import pytest
from triton_helpers import run_interpreted

pytest.importorskip("triton")

SCRIPT = textwrap.dedent(
    """
    import json, torch
    from quantsweep.engine.axis_fake_quant import TILE, bounds, fake_quant_axis

    def cuda_kernel(x, amax, axis, num_bits, narrow):
        # tensor_quant_gpu.cu's fake_tensor_quant_device, element by element, in float32 torch operations
        hi, lo = bounds(num_bits, narrow)
        shape = [1] * x.dim()
        shape[axis] = -1
        a = amax.float().reshape(shape)
        scale = torch.tensor(hi) / a
        q = torch.round(x.float() * scale)  # rint: half to even, the sign of a zero kept
        q = torch.where(q > hi, torch.tensor(hi), torch.where(q < lo, torch.tensor(lo), q))
        return torch.where(a < 2.0**-24, torch.zeros(()), q / scale).to(x.dtype)

    def same_bits(a, b):
        # bit for bit, but for the payload of a NaN (numpy and torch may spell it differently)
        nan = torch.isnan(a)
        ints = {torch.float32: torch.int32, torch.float16: torch.int16}[a.dtype]
        return bool(torch.equal(nan, torch.isnan(b)) and torch.equal(a.view(ints)[~nan], b.view(ints)[~nan]))

    out = {}
    g = torch.Generator().manual_seed(0)
    for dt in (torch.float32, torch.float16):
        for shape, axis, bits, narrow in (((7, 300), 0, 4, True), ((300, 7), 1, 8, False), ((3, 11, 5), 1, 8, True),
                                          ((2 * TILE // 128 + 3, 128), 0, 4, True), ((5, 1500), 0, 8, True),
                                          ((3, 5, 1500), 1, 4, True)):
            x = (torch.randn(shape, generator=g) * 3).to(dt)
            amax = torch.rand(shape[axis], generator=g) * 4 + 0.01
            amax[0], amax[1], amax[2] = 0.0, 1e-9, 0.5  # zero, below 2^-24, most values clamped
            amax[3] = float("inf")  # ModelOpt divides 0 by 0 there: NaN, with or without the zero shortcut
            want = cuda_kernel(x, amax, axis, bits, narrow)
            for shortcut in (True, False):
                got = fake_quant_axis(x, amax, axis, bits, narrow, zero_shortcut=shortcut)
                out[f"{dt}{shape}{axis}{shortcut}"] = [same_bits(got, want), int((got != x).sum()),
                                                       int((got == 0).sum()), int(torch.signbit(got[got == 0]).sum()),
                                                       int(torch.isnan(got).sum())]
    # ties go to even and keep their sign at zero; beyond amax clamps to +-bound (INT4 narrow, amax 7: steps of 1.0)
    x = torch.tensor([[0.5, 1.5, 2.5, -0.5, -2.5, 6.5, 100.0, -100.0, 3.4999998, -0.2]])
    out["ties"] = [str(v) for v in fake_quant_axis(x, torch.tensor([7.0]), 0, 4, True).tolist()[0]]
    print(json.dumps(out))
    """
)


def test_axis_kernel_computes_modelopts_cuda_arithmetic_in_the_interpreter():
    out = run_interpreted(SCRIPT)
    ties = out.pop("ties")
    assert ties == ["0.0", "2.0", "2.0", "-0.0", "-2.0", "6.0", "7.0", "-7.0", "3.0", "-0.0"]
    assert len(out) == 24
    for case, (same, changed, zeros, negative_zeros, nans) in out.items():
        assert same, case
        # the reference is not the identity; zeros (what the shortcut passes through); the inf amax's NaN row
        assert changed > 0 and zeros > negative_zeros and nans > 0, case
    assert sum(v[3] for v in out.values()) > 100  # negative zeros, kept


@pytest.mark.parametrize("dtype", ["*bf16", "*fp16", "*fp32"])
@pytest.mark.parametrize("shortcut", [True, False])
@pytest.mark.parametrize("columns", [4096, 1500])
def test_the_compiled_kernel_uses_the_cuda_kernels_instructions(dtype, shortcut, columns):
    """The arithmetic as compiled for an H100/H200 (sm_90 PTX, built on the CPU): IEEE round-to-nearest divisions
    and products with subnormals kept (no .ftz, no approximate division, no fused multiply-add), `rint` as
    cvt.rni, the downcast rounding to nearest: the instructions nvcc emits for ModelOpt's kernel, which is built
    without fast math. (libdevice's own div_rn, for instance, would compile to div.rn.ftz.f32.)"""
    import re

    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from quantsweep.engine import axis_fake_quant as afq

    br, bc = afq.tile(columns)
    signature = {"x_ptr": dtype, "amax_ptr": "*fp32", "out_ptr": dtype, "R": "i32", "C": "i32", "col_tiles": "i32",
                 "max_bound": "fp32", "min_bound": "fp32", "BR": "constexpr", "BC": "constexpr",
                 "ZERO_SHORTCUT": "constexpr", "INTERPRETED": "constexpr"}
    aligned = [["tt.divisibility", 16]]
    attrs = {(0,): aligned, (1,): aligned, (2,): aligned, **({(4,): aligned} if columns % 16 == 0 else {})}
    source = ASTSource(fn=afq._kernel(), signature=signature, attrs=attrs,
                       constexprs={"BR": br, "BC": bc, "ZERO_SHORTCUT": shortcut, "INTERPRETED": False})
    ptx = triton.compile(source, target=GPUTarget("cuda", 90, 32),
                         options={"num_warps": afq.NUM_WARPS, "enable_fp_fusion": False}).asm["ptx"]
    float_ops = set(re.findall(r"\b(?:div|mul|fma|add|sub|rcp|cvt)\.[a-z0-9.]*f(?:32|16)[a-z0-9.]*", ptx))
    assert "div.rn.f32" in float_ops and "mul.rn.f32" in float_ops and "cvt.rni.f32.f32" in float_ops, float_ops
    assert not any(".ftz" in op or op.startswith(("fma", "rcp", "div.full", "div.approx")) for op in float_ops), float_ops
    if dtype != "*fp32":  # the downcast rounds to nearest even
        assert any(op.startswith(f"cvt.rn.{dtype[1:].replace('fp', 'f')}") for op in float_ops), float_ops
def test_the_replacement_is_guarded_by_the_modelopt_it_was_written_against():
    """The hash of ModelOpt's wrapper and CUDA source: a ModelOpt upgrade fails here (re-check the kernel's
    arithmetic against the new source and run the GPU test, then update KNOWN_SOURCES), and at run time the
    replacement is simply not installed."""
    from quantsweep.engine import axis_fake_quant

    assert axis_fake_quant.sources_hash() == axis_fake_quant.KNOWN_SOURCES


def test_the_set_up_compiles_the_kernel_only_for_sweeps_with_int_formats():
    """engine/warm_up.py: the per-axis kernel's variants are compiled in the set-up where a format has an integer
    quantizer (INT4 blocks, INT8), not for FP8 or NVFP4 sweeps, which never call it."""
    import modelopt.torch.quantization as mtq

    from quantsweep.engine.warm_up import _has_int_quantizer

    assert _has_int_quantizer(mtq.INT4_BLOCKWISE_WEIGHT_ONLY_CFG) and _has_int_quantizer(mtq.INT8_DEFAULT_CFG)
    assert not _has_int_quantizer(mtq.FP8_DEFAULT_CFG) and not _has_int_quantizer(mtq.NVFP4_DEFAULT_CFG)
    assert not _has_int_quantizer({"quant_cfg": [{"quantizer_name": "*", "cfg": {"num_bits": True}}]})
