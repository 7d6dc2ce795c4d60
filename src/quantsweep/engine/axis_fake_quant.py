"""ModelOpt's per-channel / per-block integer fake quantization, the same bits from a faster kernel (Triton).

Every INT weight format with more than one amax (INT8 per channel, INT4 in blocks of 128 or 64) reaches ModelOpt
0.47's CUDA kernel `fake_tensor_quant_with_axis_cuda_kernel` (`tensor_quant.fake_quant_impl`). Each thread of that
kernel handles four consecutive elements one after another (a strided access pattern), and each element does a
32-bit integer division and modulo to find its amax. On an H200 it moves ~0.8 TB/s of the ~4.8 TB/s the memory
can: the weight quantization of one format over a Llama-3-8B shape takes ~37 ms. The shared engine quantizes every
weight once per (format, score batch) in its score replays and once per evaluation batch, so on the 8B matrix that
kernel was ~0.6 s of a 2.1 s GPU-bound score phase and a third of the evaluations' GPU time (benchmarks/diag/
gpu_busy.py; `axis-kernel` in benchmarks/results/speed-h200.json).

`fake_quant_axis` computes, per element, exactly what that kernel computes, in the same float32 operations in the
same order:

    amax = float(amax[(i / outer_size) % axis_size])
    out  = 0                                   if amax < 2**-24 (the kernel's EPSILON)
    out  = T(rint(x * s) clamped to [min_bound, max_bound] / s)   with s = max_bound / amax

with IEEE round-to-nearest division, `rint` (round half to even), and the conversion to the tensor's dtype rounding
to nearest even, as `c10::BFloat16(float)` and `__float2half` do: compiled for sm_90 the kernel's float operations
are `mul.rn.f32`, `cvt.rni.f32.f32`, `div.rn.f32` and `cvt.rn.{bf16x2,f16x2}.f32`, with no flush-to-zero, no fused
multiply-add (launched with `enable_fp_fusion=False`) and no approximate division, the instructions nvcc emits for
ModelOpt's kernel, which is built without fast math (tests/test_axis_fake_quant.py compiles it on the CPU and reads
the PTX). What differs is the work around the arithmetic: a program takes a tile of rows that share one amax, so
no element divides its index and the scale is divided per row (and thread) rather than per element; rows whose
length is a multiple of 16 load and store as vectors; and for 4-bit formats, where many weights round to zero, a
zero is not divided where the scale is positive and finite (`+-0 / s` is `+-0` there; a zero dividend takes the
division's slow path; an infinite amax gives ModelOpt's 0 / 0 = NaN either way). On an H200
(benchmarks/diag/axis_kernel.py): 1.7-1.9x faster on a Llama-3-8B MLP weight, 2.3-2.7x on its lm_head, equal on a
4096 x 4096 weight. tests/test_gpu_cuda.py compares the two kernels bit for bit on a GPU (rows, blocks, a middle
axis, ties, NaN and inf inputs, zero, tiny and infinite amax, clamping, bf16/fp16/fp32, inside a CUDA graph);
tests/test_axis_fake_quant.py checks the arithmetic in Triton's interpreter too. A NaN or negative amax, on which
ModelOpt's kernel stops with a device-side assertion, gives NaN or zeros here (the calibrator never stores one).

It replaces ModelOpt's kernel only where it was written for that kernel's inputs and is compiled: a contiguous CUDA
input of a float dtype with fewer than 2**31 elements (the kernel's indices are 32-bit ints), on the current device,
16-byte aligned, a signed format (the unsigned kernel asserts on negative inputs), an amax with one entry per
index of the axis; at least MIN_ELEMENTS elements (a Triton launch costs more host time than the extension's);
ModelOpt's INT extension loaded (without it ModelOpt falls back to `_tensor_quant`, whose edge cases differ); and
only for the ModelOpt source it was written against (`KNOWN_SOURCES`: the Python wrapper, the extension's build
function, the C++ wrapper and the .cu file). Anything else, every CPU tensor and a launch that fails go to
ModelOpt. Inside a CUDA graph capture only a variant compiled before is launched (the variant key covers what
Triton specializes on: tile width, the row length's divisibility by 16 or its being 1, the shortcut; all pointers
16-byte aligned); otherwise ModelOpt's kernel runs there. The sweep's set-up compiles the usual variants
(engine/warm_up.py). `fast_axis_fake_quant()` installs it for the shared engine's own ModelOpt work
(engine/modelopt_bookkeeping.py); the naive engine keeps ModelOpt's kernel.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import itertools
import os
from pathlib import Path
from typing import Any

import torch

from .reentrant_patches import ReentrantPatches

TILE = 4096  # elements per program
NUM_WARPS = 8
# Below this many elements ModelOpt's kernel stays: its C++ launch costs less host time than Triton's, which
# matters on small, host-bound models (a Qwen3-0.6B shape's linears are 1-3 M elements: only its lm_head comes here)
MIN_ELEMENTS = 1 << 22
_DTYPES = (torch.bfloat16, torch.float16, torch.float32)
_WARMED: set[tuple[Any, ...]] = set()  # (device index, dtype, *_variant) compiled and run
_FAILED: dict[tuple[Any, ...], str] = {}
calls = 0  # fake quantizations this module computed (the tests read it)

# sha256 of nvidia-modelopt 0.47.0's `tensor_quant.fake_quant_impl` and `extensions.get_cuda_ext` sources + the text
# of tensor_quant_gpu.cu and tensor_quant.cpp
KNOWN_SOURCES = "08ae17323c88cd5fb973e280fe0ad4a6e6871cd0de407fecc8c660a3b98c79ec"


@functools.cache
def _kernel() -> Any:
    """The Triton kernel, or None where Triton cannot be imported.

    The input is viewed as (P, R, C): R the quantized axis (one amax per index), C the elements after it (its
    stride), P the elements before it (1 when the axis is the outermost, as for every weight). A program takes a
    tile of BR rows x BC columns of one P slice: each row's scale is computed once, and no element divides its
    index by anything (the CUDA kernel does `(i / outer_size) % axis_size` per element)."""
    try:
        import triton
        import triton.language as tl
    except Exception:  # noqa: BLE001 - no Triton: ModelOpt's kernel
        return None

    # C is specialized (its divisibility by 16): rows that start 16-byte aligned load and store as vectors
    @triton.jit(do_not_specialize=["R", "col_tiles"])
    def fake_quant_rows(x_ptr, amax_ptr, out_ptr, R, C, col_tiles, max_bound, min_bound,  # noqa: N803
                        BR: tl.constexpr, BC: tl.constexpr, ZERO_SHORTCUT: tl.constexpr,  # noqa: N803
                        INTERPRETED: tl.constexpr):  # noqa: N803
        rows = tl.program_id(0) * BR + tl.arange(0, BR)
        p = tl.program_id(1) // col_tiles
        cols = (tl.program_id(1) % col_tiles) * BC + tl.arange(0, BC)
        row_ok = rows < R
        amax = tl.load(amax_ptr + rows, mask=row_ok, other=1.0)
        scale = tl.math.div_rn(tl.zeros([BR], tl.float32) + max_bound, amax)  # IEEE division, once per row
        offs = p * R * C + rows[:, None] * C + cols[None, :]  # int32, as the CUDA kernel's `int idx` (n < 2**31)
        mask = row_ok[:, None] & (cols[None, :] < C)
        x = tl.load(x_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        v = x * scale[:, None]
        if INTERPRETED:  # Triton's CPU interpreter (the tests) has no libdevice: rint from exact operations
            t = tl.math.floor(v)
            d = v - t
            odd = (t - 2.0 * tl.math.floor(t * 0.5)) != 0.0
            q = tl.where((d > 0.5) | ((d == 0.5) & odd), t + 1.0, t)
            q = tl.where(q == 0.0, v * 0.0, q)  # rint keeps the sign of a value that rounds to zero
        else:
            q = tl.extra.cuda.libdevice.rint(v)  # cvt.rni.f32.f32, what CUDA's rint compiles to
        q = tl.where(q > max_bound, max_bound, q)
        q = tl.where(q < min_bound, min_bound, q)
        if ZERO_SHORTCUT:  # +-0 / scale is +-0 for a positive finite scale: no division of a zero there
            finite_positive = (scale > 0.0) & (scale * 0.0 == 0.0)  # an inf amax makes ModelOpt divide 0 by 0
            skip = (q == 0.0) & finite_positive[:, None]
            out = tl.where(skip, q, tl.math.div_rn(tl.where(skip, 1.0, q), scale[:, None]))
        else:
            out = tl.math.div_rn(q, scale[:, None])
        out = tl.where(amax[:, None] < 5.960464477539063e-08, 0.0, out)  # the CUDA kernel's EPSILON, 2**-24
        tl.store(out_ptr + offs, out.to(out_ptr.dtype.element_ty, fp_downcast_rounding="rtne"), mask=mask)

    return fake_quant_rows


def tile(columns: int) -> tuple[int, int]:
    """(BR, BC): BC the power of two >= the columns (16 to 1024), BR rows to make a tile of TILE elements."""
    bc = min(1024, max(16, 1 << max(0, columns - 1).bit_length()))
    return max(1, TILE // bc), bc


def bounds(num_bits: int, narrow_range: bool) -> tuple[float, float]:
    """The CUDA kernel's (max_bound, min_bound) for a signed format."""
    bound = float((1 << (num_bits - 1)) - 1)
    return bound, -(bound + (0.0 if narrow_range else 1.0))


def takes_zero_shortcut(num_bits: int) -> bool:
    """Whether the kernel leaves zeros out of its division: faster for 4-bit formats, where many weights round to
    zero (a zero dividend takes the division's slow path), slower for 8-bit ones (benchmarks/diag/axis_kernel.py)."""
    return num_bits <= 4


def fake_quant_axis(inputs: torch.Tensor, amax: torch.Tensor, axis: int, num_bits: int, narrow_range: bool,
                    zero_shortcut: bool | None = None, num_warps: int = NUM_WARPS) -> torch.Tensor:
    """`cuda_ext.fake_tensor_quant_with_axis(inputs, amax, axis, num_bits, False, narrow_range)`'s result. The
    caller checks `eligible` first. Works on CPU tensors too under TRITON_INTERPRET=1 (the tests). The last two
    arguments are for benchmarks/diag/axis_kernel.py (other variants of the same arithmetic)."""
    global calls
    n = inputs.numel()
    out = torch.empty_like(inputs)
    if n == 0:
        return out
    r, c = inputs.size(axis), inputs.stride(axis)
    br, bc = tile(c)
    col_tiles = -(-c // bc)
    max_bound, min_bound = bounds(num_bits, narrow_range)
    amax32 = amax.to(torch.float32).contiguous()  # as the extension's `amax.contiguous()` and `.to(Float)`
    if amax32.data_ptr() % 16:
        amax32 = amax32.clone()  # an aligned copy: one compiled variant for every amax
    with torch.cuda.device(inputs.device) if inputs.is_cuda else contextlib.nullcontext():
        _kernel()[(-(-r // br), n // (r * c) * col_tiles)](
            inputs, amax32, out, r, c, col_tiles, max_bound, min_bound, BR=br, BC=bc,
            ZERO_SHORTCUT=takes_zero_shortcut(num_bits) if zero_shortcut is None else zero_shortcut,
            INTERPRETED=os.environ.get("TRITON_INTERPRET") == "1", num_warps=num_warps,
            enable_fp_fusion=False,  # no multiply-add contraction, whatever Triton's default
        )
    calls += 1
    return out


def eligible(inputs: torch.Tensor, amax: torch.Tensor, num_bits: Any, unsigned: bool) -> int | None:
    """The axis `fake_quant_impl` would pass to ModelOpt's per-axis kernel, when this module computes that call
    (see the module doc); None: ModelOpt's kernel."""
    if (
        type(inputs) not in (torch.Tensor, torch.nn.Parameter)
        or not inputs.is_cuda
        or inputs.dtype not in _DTYPES
        or unsigned
        or type(num_bits) is not int
        or not 2 <= num_bits <= 24
        or amax.numel() <= 1
        or amax.device != inputs.device
        or not inputs.is_contiguous()
        or inputs.numel() < MIN_ELEMENTS
        or inputs.numel() > 2**31 - 2 * TILE  # int32 indices, in both kernels (with the last tile's overshoot)
        or inputs.data_ptr() % 16
        or inputs.device.index != torch.cuda.current_device()
    ):
        return None
    axis = amax.shape.index(amax.numel())
    if inputs.dim() <= axis or inputs.size(axis) != amax.numel():
        return None
    columns = inputs.stride(axis)
    if inputs.numel() // (amax.numel() * columns) * -(-columns // tile(columns)[1]) > 65535:
        return None  # more (P slice x column tile) programs than a grid's second dimension takes
    if not warm(inputs.device, inputs.dtype, columns, takes_zero_shortcut(num_bits)):
        return None
    return axis


WARM_COLUMNS = (64, 128, 1024)  # INT4 blocks of 64 and 128, rows of 1024 and more: compiled in the set-up


def _variant(columns: int, shortcut: bool) -> tuple[int, bool, bool, bool]:
    """What Triton compiles a variant of the kernel for: the tile width, C's divisibility by 16, the shortcut, and
    C == 1 (Triton makes an integer argument equal to 1 a constant). The pointers are 16-byte aligned always
    (`eligible` for the input, `fake_quant_axis` for the amax, the caching allocator for the output)."""
    return tile(columns)[1], columns % 16 == 0, shortcut, columns == 1


def warm(device: torch.device, dtype: torch.dtype, columns: int | None = None, shortcut: bool | None = None) -> bool:
    """Compile, load and run the kernel's variant for rows of `columns` elements (None: every WARM_COLUMNS), with
    or without the zero shortcut (None: both) and `dtype` on `device`, once per process; False where that failed,
    or where it is not compiled yet and the current stream is capturing a CUDA graph (nothing is compiled inside a
    capture)."""
    global calls
    if _kernel() is None:
        return False
    index = device.index if device.index is not None else torch.cuda.current_device()
    ok = True
    widths = WARM_COLUMNS if columns is None else (columns,)
    for c, z in itertools.product(widths, (True, False) if shortcut is None else (shortcut,)):
        key = (index, dtype, *_variant(c, z))
        if key in _WARMED:
            continue
        if key in _FAILED or torch.cuda.is_current_stream_capturing():
            ok = False
            continue
        try:
            counted = calls
            x = torch.zeros(4, c, dtype=dtype, device=device)
            fake_quant_axis(x, torch.ones(4, device=device), 0, 8, True, zero_shortcut=z)
            calls = counted  # a warm-up is not a fake quantization of the sweep's
            _WARMED.add(key)
        except Exception as exc:  # noqa: BLE001 - ModelOpt's kernel is always there
            _FAILED[key] = f"{type(exc).__name__}: {exc}".splitlines()[0][:300]
            ok = False
    return ok


def _fake_quant_impl(inputs: torch.Tensor, amax: torch.Tensor, num_bits: Any = 8, unsigned: bool = False,
                     narrow_range: bool = True) -> torch.Tensor:
    """ModelOpt's `fake_quant_impl`, its per-axis kernel replaced where `eligible` and where ModelOpt's own CUDA
    extension is there (without it ModelOpt falls back to `_tensor_quant`, whose edge cases differ: that stays)."""
    if amax.numel() > 1 and _modelopt_extension_loaded():
        axis = eligible(inputs, amax, num_bits, unsigned)
        if axis is not None:
            try:
                return fake_quant_axis(inputs, amax.squeeze(), axis, num_bits, narrow_range)
            except Exception:  # noqa: BLE001 - a launch that failed (a compiler error): ModelOpt's kernel
                pass
    from modelopt.torch.quantization import tensor_quant

    return _PATCHES.original(tensor_quant, "fake_quant_impl")(inputs, amax, num_bits, unsigned, narrow_range)


@functools.cache
def _modelopt_extension_loaded() -> bool:
    """Whether ModelOpt's INT CUDA extension loads (asked at the first per-axis call, where ModelOpt's own path
    would load it: a sweep without INT formats never builds it)."""
    from modelopt.torch.quantization.extensions import get_cuda_ext

    return get_cuda_ext() is not None


def sources_hash() -> str | None:
    """The hash `KNOWN_SOURCES` is compared with (None where a source cannot be read)."""
    from modelopt.torch.quantization import extensions, tensor_quant

    from .calibrator_syncs import source_hash

    python = source_hash(tensor_quant.fake_quant_impl, extensions.get_cuda_ext)  # the wrapper; the build flags
    gemm = Path(tensor_quant.__file__).parent.parent / "kernels" / "quantization" / "gemm"
    try:  # the kernel, and the C++ wrapper that makes its inputs contiguous
        text = (gemm / "tensor_quant_gpu.cu").read_bytes() + (gemm / "tensor_quant.cpp").read_bytes()
    except OSError:
        return None
    return None if python is None else hashlib.sha256(python.encode() + text).hexdigest()


@functools.cache
def _known() -> bool:
    return sources_hash() == KNOWN_SOURCES and _kernel() is not None


def _decide() -> tuple[bool, list[Any]]:
    from modelopt.torch.quantization import tensor_quant

    on = _known() and torch.cuda.is_available()
    return on, [(tensor_quant, "fake_quant_impl", _fake_quant_impl)] if on else []


_PATCHES = ReentrantPatches(_decide)


def fast_axis_fake_quant() -> contextlib.AbstractContextManager[bool]:
    """Install the replacement (re-entrant; module-level, so every thread sees it while installed); yields whether
    it is installed (False: another ModelOpt, or no Triton, or no GPU)."""
    return _PATCHES.active()
