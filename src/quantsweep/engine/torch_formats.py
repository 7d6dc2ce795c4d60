"""Pure-PyTorch fake quantization for NVFP4 and the MX formats, registered as a ModelOpt quant backend.

ModelOpt 0.47 fake-quantizes NVFP4 (a Triton kernel) and MXFP4/MXFP6/MXFP8/MXINT8 (a CUDA extension) only on
CUDA; on a CPU they fail with "amax must be a CUDA tensor for dynamic block quantization". ModelOpt lets a
project register its own backend (`register_quant_backend(name, fn)` plus `"backend": name` in a quantizer's
attributes); `fn(inputs, quantizer)` then replaces the whole fake-quant step. These functions reproduce the
arithmetic of ModelOpt's kernels step by step (same float32 operation order, same rounding and tie rules, the
same quirks), so that a CPU sweep and a GPU sweep agree:

NVFP4 (`kernels/quantization/gemm/fp4_kernel_hopper.py`, `common/nvfp4_quant.py`):
  global_scale = global_amax / (6 * 448)                       (global_amax: the calibrated amax, its max)
  per 16-element block along the last dim (zero padding):
  s = fp8_e4m3(min(block_amax / (6 * global_scale), 448)) * global_scale
  s = s if s >= 1e-5 else 1                                    (ModelOpt's guard: tiny blocks quantize to 0)
  y = sign(x) * E2M1(|x| / s) * s, E2M1 rounding to {0, .5, 1, 1.5, 2, 3, 4, 6} with ties to even, saturating.

MX (`kernels/quantization/gemm/tensor_quant_mx.{cu,h}`, the "NV" E8M0 algorithm):
  per 32-element block: ratio = block_amax / format_max (float32);
  unscale = 2^ceil(log2(ratio)) read from ratio's bits (ModelOpt's exact rule), scale = 1 / unscale;
  a block whose amax is 0, inf or NaN uses scale = unscale = 1;
  y = sign(x) * convert(|x| * scale) * unscale, convert = E2M1 / E3M2 / E2M3 tables (ties to even, saturating),
  E4M3 (round to nearest even, saturating at 448) or INT8 (rint, clamp to +-127).

The backward pass is the identity (straight-through), as ModelOpt's own `pass_through_bwd=True` default, which
AutoQuantize's gradient score relies on.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
import torch.nn.functional as F

BACKEND_NAME = "quantsweep_torch"

E2M1_VALUES = (0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0)
E3M2_VALUES = (
    0, 0.0625, 0.125, 0.1875, 0.25, 0.3125, 0.375, 0.4375, 0.5, 0.625, 0.75, 0.875, 1, 1.25, 1.5, 1.75,
    2, 2.5, 3, 3.5, 4, 5, 6, 7, 8, 10, 12, 14, 16, 20, 24, 28,
)
E2M3_VALUES = (
    0, 0.125, 0.25, 0.375, 0.5, 0.625, 0.75, 0.875, 1, 1.125, 1.25, 1.375, 1.5, 1.625, 1.75, 1.875,
    2, 2.25, 2.5, 2.75, 3, 3.25, 3.5, 3.75, 4, 4.5, 5, 5.5, 6, 6.5, 7, 7.5,
)
FP8_E4M3_MAX = 448.0

# (num_bits as ModelOpt writes it) -> (name, element max)
MX_ELEMENT_FORMATS: dict[Any, tuple[str, float]] = {
    (2, 1): ("E2M1", 6.0),
    (3, 2): ("E3M2", 28.0),
    (2, 3): ("E2M3", 7.5),
    (4, 3): ("E4M3", 448.0),
    8: ("INT8", 127.0),
}


def _round_table(a: torch.Tensor, values: tuple[float, ...]) -> torch.Tensor:
    """Round non-negative `a` to the nearest table value; ties go to the even index (even mantissa LSB);
    values beyond the table saturate (ModelOpt's `round_to_even` over midpoints)."""
    table = torch.tensor(values, dtype=torch.float32, device=a.device)
    bounds = (table[1:] + table[:-1]) / 2
    idx = torch.bucketize(a, bounds, right=False)  # first bound >= a: a == bound lands on the lower index
    at_tie = (idx < bounds.numel()) & (a == bounds[idx.clamp(max=bounds.numel() - 1)])
    idx = torch.where(at_tie & (idx % 2 == 1), idx + 1, idx)
    return table[idx]


def _to_e4m3(x: torch.Tensor) -> torch.Tensor:
    """Round float32 to FP8 E4M3 (nearest, ties to even), subnormals included, saturating at +-448 like CUDA's
    __NV_SATFINITE. Done arithmetically rather than with a `float8_e4m3fn` cast, whose CPU rounding of
    subnormals has differed between torch releases: scaling by a power of two is exact in float32, so
    `round(x / q) * q` with the quantum q of x's binade is exact rounding."""
    x = x.to(torch.float32).clamp(-FP8_E4M3_MAX, FP8_E4M3_MAX)
    _, exp = torch.frexp(x)  # x = m * 2^exp, 0.5 <= |m| < 1
    # quantum: 2^(exp-1-3) for normal values (3 mantissa bits); 2^-9 below the smallest normal 2^-6
    q_exp = torch.clamp(exp - 4, min=-9).to(torch.float32)
    quantum = torch.ldexp(torch.ones_like(x), q_exp)
    return torch.round(x / quantum) * quantum


def _blocks(x: torch.Tensor, block: int) -> tuple[torch.Tensor, int]:
    """[..., N] -> [M, N/block, block] float32 with zero padding at the end of each row."""
    flat = x.reshape(-1, x.shape[-1]).to(torch.float32)
    n = flat.shape[-1]
    pad = (-n) % block
    if pad:
        flat = F.pad(flat, (0, pad))
    return flat.view(flat.shape[0], -1, block), n


def _unblock(y: torch.Tensor, n: int, like: torch.Tensor) -> torch.Tensor:
    return y.reshape(y.shape[0], -1)[:, :n].reshape(like.shape).to(like.dtype)


def nvfp4_fake_quant(x: torch.Tensor, global_amax: torch.Tensor | float, block_size: int = 16) -> torch.Tensor:
    """NVFP4 fake quantization, bit-for-bit ModelOpt's Triton kernel arithmetic (see module docstring)."""
    blocks, n = _blocks(x, block_size)
    g = torch.as_tensor(global_amax, dtype=torch.float32, device=blocks.device).reshape(())
    global_scale = g / (6.0 * 448.0)
    global_scale = torch.where(global_scale > 0.0, global_scale, torch.tensor(1e-12, device=blocks.device))
    mag = blocks.abs()
    block_amax = mag.amax(dim=-1, keepdim=True)
    scale = torch.minimum(block_amax / (6.0 * global_scale), torch.tensor(FP8_E4M3_MAX, device=blocks.device))
    scale = _to_e4m3(scale) * global_scale
    scale = torch.where(scale >= 1e-5, scale, torch.ones_like(scale))
    q = _round_table(mag / scale, E2M1_VALUES) * scale
    y = torch.where(blocks >= 0, q, -q)
    return _unblock(y, n, x)


def _e8m0_unscale(block_amax: torch.Tensor, fmt_max: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(unscale, scale) = (2^e, 2^-e), e = ceil(log2(amax / fmt_max)) read off the bits of the float32 ratio
    exactly as ModelOpt's `compute_scale_e8m0_NV` does (including its round-to-nearest division)."""
    ratio = block_amax / fmt_max
    bits = ratio.contiguous().view(torch.int32)
    exp_field = (bits >> 23) & 0xFF
    mant = bits & 0x7FFFFF
    round_up = (mant > 0) & (exp_field != 0xFE) & ~((exp_field == 0) & (mant <= 0x400000))
    exponent = torch.where(round_up, exp_field - 126, exp_field - 127).to(torch.float32)
    one = torch.ones_like(ratio)
    return torch.ldexp(one, exponent), torch.ldexp(one, -exponent)


def mx_fake_quant(x: torch.Tensor, num_bits: Any, block_size: int = 32) -> torch.Tensor:
    """MX fake quantization (E8M0 block scales), bit-for-bit ModelOpt's CUDA extension arithmetic."""
    key = tuple(num_bits) if isinstance(num_bits, list | tuple) else num_bits
    if key not in MX_ELEMENT_FORMATS:
        raise NotImplementedError(f"MX element format {num_bits} is not supported by the torch backend")
    name, fmt_max = MX_ELEMENT_FORMATS[key]
    blocks, n = _blocks(x, block_size)
    mag = blocks.abs()
    block_amax = mag.amax(dim=-1, keepdim=True)
    unscale, scale = _e8m0_unscale(block_amax, fmt_max)
    special = (block_amax == 0) | ~torch.isfinite(block_amax)
    unscale = torch.where(special, torch.ones_like(unscale), unscale)
    scale = torch.where(special, torch.ones_like(scale), scale)
    a = mag * scale
    if name == "E2M1":
        q = _round_table(a, E2M1_VALUES)
    elif name == "E3M2":
        q = _round_table(a, E3M2_VALUES)
    elif name == "E2M3":
        q = _round_table(a, E2M3_VALUES)
    elif name == "E4M3":
        q = _to_e4m3(a)
    else:  # INT8
        q = torch.round(a).clamp(max=127.0)  # torch.round is round-half-to-even, like rint
    q = q * unscale
    y = torch.where(blocks < 0, -q, q)
    return _unblock(y, n, x)


class _StraightThrough(torch.autograd.Function):
    """Forward: the fake-quantized tensor; backward: the identity (ModelOpt's pass-through default)."""

    @staticmethod
    def forward(ctx, inputs: torch.Tensor, outputs: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        return outputs

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:  # type: ignore[override]
        return grad, None


def _is_nvfp4(block_sizes: dict[Any, Any]) -> bool:
    return tuple(block_sizes.get("scale_bits") or ()) == (4, 3)


def backend_entrypoint(inputs: torch.Tensor, quantizer: Any) -> torch.Tensor:
    """The function ModelOpt calls in place of its kernels for a quantizer with `backend: quantsweep_torch`."""
    block_sizes = quantizer.block_sizes or {}
    block = block_sizes.get(-1) or block_sizes.get(inputs.dim() - 1)
    if block is None:
        raise ValueError("the quantsweep torch backend handles block formats only (NVFP4, MX)")
    with torch.no_grad():
        if _is_nvfp4(block_sizes):
            amax = quantizer._get_amax(inputs)
            if amax is None:
                raise RuntimeError("NVFP4 needs a calibrated (global) amax")
            amax = amax.float()
            if amax.numel() != 1:
                amax = amax.amax()
            out = nvfp4_fake_quant(inputs, amax, int(block))
        else:
            out = mx_fake_quant(inputs, quantizer.num_bits, int(block))
    return _StraightThrough.apply(inputs, out)


def register() -> None:
    """Register the backend with ModelOpt (idempotent)."""
    from modelopt.torch.quantization.nn.modules.tensor_quantizer import (
        is_registered_quant_backend,
        register_quant_backend,
    )

    if not is_registered_quant_backend(BACKEND_NAME):
        register_quant_backend(BACKEND_NAME, backend_entrypoint)


def needs_torch_backend(attrs: dict[str, Any]) -> bool:
    """A dynamic block format with a fixed block size (NVFP4 / MX): what ModelOpt runs only on CUDA."""
    block = attrs.get("block_sizes") or {}
    sized = any(isinstance(k, int) and v is not None for k, v in block.items())
    return attrs.get("enable", True) is not False and sized and block.get("type") == "dynamic"


def with_torch_backend(config: dict[str, Any]) -> tuple[dict[str, Any], bool]:
    """A copy of `config` whose NVFP4/MX quantizers use this backend; and whether any did."""
    config = copy.deepcopy(config)
    used = False
    for entry in config.get("quant_cfg", []):
        cfg = entry.get("cfg")
        if cfg is None or entry.get("enable", True) is False:
            continue
        for attrs in cfg if isinstance(cfg, list) else [cfg]:
            if needs_torch_backend(attrs):
                attrs["backend"] = BACKEND_NAME
                used = True
    return config, used
