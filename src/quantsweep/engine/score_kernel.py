"""AutoQuantize's score of one replayed format in one pass over the output, on a GPU (a Triton kernel).

ModelOpt's score of a format at a module is `(G.float() * D.float()).clamp(-1e10, 1e10).square().sum()` with
`D = Q_f(Y) - Y` computed in the model's dtype (`_get_auto_quantize_score`; engine/captured_scores.py `_score`).
Eagerly that is six element-wise passes over the output per (module, format, batch): the subtraction in bf16, a
float32 copy of D, the multiply, the clamp, the square and the sum, ~52 bytes of memory traffic per output element.
On a Llama-3-8B shape the outputs of one batch are 88 M elements per decoder layer, replayed once per format and
batch: ~2.3 TB of traffic over the 8B matrix's score phase, most of what its GPU does there beyond the GEMMs.

`fused_score` reads Q_f(Y), Y and G once (8 bytes per element with a float32 G) and computes, per element, the same
operations in the same precision: the difference rounded to the model's dtype (what `D -= Y` stores), times G in
float32, clamped, squared. Each block of the output writes its partial sum, and `torch.sum` adds the partials in a
fixed order: deterministic (a CUDA graph's replay and the eager replay give the same bits), and equal to ModelOpt's
value but for the order of the float32 sum (a relative difference of order 1e-7; the engines are compared to 1e-3
on a GPU). NaN propagates as in `clamp`.

Used where Triton and CUDA are (never on a CPU: the CPU path stays ModelOpt's operations, bit for bit). The kernel
is compiled and run once per process, device and dtype (`warm`: in the sweep's set-up, when the score pass installs
its hooks, and before a CUDA graph capture), never inside a capture, which would load a module while the stream
records; `fusable` is false wherever that did not succeed (no C compiler for Triton's launcher, say), and the
eager score is used there. tests/test_score_kernel.py runs the kernel in Triton's CPU
interpreter against the eager score; tests/test_gpu_cuda.py compares it on the GPU.
"""

from __future__ import annotations

import contextlib
import functools
import os
from typing import Any

import torch

BLOCK = 4096  # output elements per program: one partial sum each
ENV_SWITCH = "QUANTSWEEP_FUSED_SCORE"  # "0": the eager six-pass score everywhere (a diagnostic switch)
_DTYPES = (torch.bfloat16, torch.float16, torch.float32)
_WARMED: set[tuple[int, torch.dtype]] = set()  # (CUDA device index, dtype) the kernel was compiled and run for
_FAILED: dict[tuple[int, torch.dtype], str] = {}  # ... and those where that failed (no compiler, an unknown GPU)
calls = 0  # fused scores computed (or recorded into a CUDA graph) in this process: the tests read it


def fused_enabled() -> bool:
    return os.environ.get(ENV_SWITCH, "1").strip() not in ("0", "false", "no", "off") and _kernel() is not None


@functools.cache
def _kernel() -> Any:
    """The Triton kernel, or None where Triton cannot be imported."""
    try:
        import triton
        import triton.language as tl
    except Exception:  # noqa: BLE001 - no Triton (or a broken one): the eager score
        return None

    @triton.jit(do_not_specialize=["n"])
    def score_partials(q_ptr, y_ptr, g_ptr, out_ptr, n, BLOCK: tl.constexpr, ROUND: tl.constexpr):  # noqa: N803
        pid = tl.program_id(0)
        offs = pid.to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
        mask = offs < n
        q = tl.load(q_ptr + offs, mask=mask, other=0.0)
        y = tl.load(y_ptr + offs, mask=mask, other=0.0)
        d = q.to(tl.float32) - y.to(tl.float32)  # in float32, then rounded to nearest even as torch's `D -= Y` does
        if ROUND:
            d = d.to(q_ptr.dtype.element_ty, fp_downcast_rounding="rtne").to(tl.float32)
        x = d * tl.load(g_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        x = tl.where(x != x, x, tl.minimum(tl.maximum(x, -1e10), 1e10))  # clamp, NaN kept
        tl.store(out_ptr + pid, tl.sum(x * x, axis=0))

    return score_partials


def _key(device: torch.device, dtype: torch.dtype) -> tuple[int, torch.dtype]:
    return (device.index if device.index is not None else torch.cuda.current_device(), dtype)


def fusable(q: torch.Tensor, y: torch.Tensor, grad: torch.Tensor) -> bool:
    """Dense CUDA tensors of one shape, Q and Y of one supported dtype, G float32 (what `_replay` hands over), all
    16-byte aligned (the alignment the kernel was compiled for: another would compile a variant), on a device
    where `warm` compiled and ran the kernel for that dtype: nothing is compiled later, inside a capture or not."""
    tensors = (q, y, grad)
    return (
        all(t.is_cuda and t.is_contiguous() and t.data_ptr() % 16 == 0 for t in tensors)
        and q.shape == y.shape == grad.shape
        and q.dtype == y.dtype
        and grad.dtype == torch.float32
        and q.device == y.device == grad.device
        and _key(q.device, q.dtype) in _WARMED
    )


def fused_score(q: torch.Tensor, y: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
    """sum(clamp((Q - Y) * G, -1e10, 1e10)^2) as a float32 scalar tensor on Q's device (see the module doc).
    The caller checks `fusable` first. Works on CPU tensors too under TRITON_INTERPRET=1 (the tests)."""
    global calls
    n = q.numel()
    blocks = max(1, -(-n // BLOCK))
    partials = torch.empty(blocks, dtype=torch.float32, device=q.device)
    # Triton launches on the current device, not on the tensors': make them the same (a model spread over GPUs)
    with torch.cuda.device(q.device) if q.is_cuda else contextlib.nullcontext():
        _kernel()[(blocks,)](q, y, grad, partials, n, BLOCK=BLOCK, ROUND=q.dtype != torch.float32)
    calls += 1
    return partials.sum()


def warm(device: torch.device, dtype: torch.dtype, stream: Any = None) -> None:
    """Compile, load and run the kernel for `dtype` on `device` outside any capture (once per process, device and
    dtype). A failure (no C compiler for Triton's launcher, a GPU it does not know) leaves the eager score there:
    a warm-up never decides a cell's fate."""
    if device.type != "cuda" or dtype not in _DTYPES or not fused_enabled():
        return
    key = _key(device, dtype)
    if key in _WARMED or key in _FAILED:
        return
    try:
        with torch.cuda.stream(stream) if stream is not None else contextlib.nullcontext():
            q = torch.zeros(BLOCK + 16, dtype=dtype, device=device)
            fused_score(q, q, torch.zeros(BLOCK + 16, dtype=torch.float32, device=device))
        _WARMED.add(key)
    except Exception as exc:  # noqa: BLE001 - the eager score is always there
        _FAILED[key] = f"{type(exc).__name__}: {exc}".splitlines()[0][:300]
