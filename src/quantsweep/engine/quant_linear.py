"""What a plain ModelOpt quantized linear computes, called directly: out_q(F.linear(in_q(X), w_q(W), b)).

ModelOpt's `QuantLinear.forward` reaches that expression through its dynamic-module machinery: a context manager
that sets `_enable_weight_quantization` (two dynamic-module attribute writes), the input quantizer's call, a
`_forward_pre_dm` probe, `nn.Linear.forward`, whose `self.weight` goes through the dynamic-attribute callback that
calls the weight quantizer, and the output quantizer's call. Each quantizer call runs `TensorQuantizer.forward`'s
checks even when the quantizer is disabled, which the output quantizer always is in AutoQuantize (and the input
quantizer of every weight-only format). On a 197-linear Qwen3 shape that is most of a quantized forward's host
time. Three users:

  * engine/captured_scores.py replays every candidate format of a scored linear from its captured input;
  * `lean_linear_forwards` runs the shared engine's per-cell evaluation forwards (the cell's recipe switched in)
    through the same expression,
  * and its plain-max calibration forwards (engine/autoquant.py), where the quantizers collect instead of
    quantizing: the same calls, so the same statistics.

Only modules whose forward is exactly that expression qualify (`plain_quantized_linear`): a class with a forward of
its own anywhere in its MRO (Falcon's x @ W.T + b, real-quant GEMMs, LoRA), a `_forward_pre_dm` patch, an
instance-level forward other than the class's own, or children other than the three quantizers keep ModelOpt's forward.
tests/test_shared_engine.py checks both uses against the naive engine (ModelOpt's own forwards), bit for bit on
the CPU.
"""

from __future__ import annotations

import contextlib
import functools
import types
from collections.abc import Iterator
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.modules import module as _torch_module

QUANTIZERS = frozenset({"input_quantizer", "weight_quantizer", "output_quantizer"})


def plain_quantized_linear(module: nn.Module) -> bool:
    """A ModelOpt quantized `nn.Linear` whose forward is QuantLinearConvBase's over nn.Linear's, nothing else."""
    from modelopt.torch.quantization.nn.modules.quant_module import QuantInputBase, QuantLinearConvBase

    if not isinstance(module, QuantLinearConvBase) or not isinstance(module, nn.Linear):
        return False
    allowed = (QuantLinearConvBase.forward, QuantInputBase.forward, nn.Linear.forward, nn.Module.forward)
    if any(c.__dict__["forward"] not in allowed for c in type(module).__mro__ if "forward" in c.__dict__):
        return False
    return not hasattr(module, "_forward_pre_dm")


def quantize(quantizer: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """`quantizer(x)`, without the call when TensorQuantizer's forward would return `x` untouched (disabled, no
    pre-quant scale, no rotation): each call costs tens of microseconds of Python; and FP8 fake quantization on
    a GPU handed to ModelOpt's kernel directly (`fp8_kernel_amax`)."""
    if (
        getattr(quantizer, "_disabled", False)
        and type(quantizer).__name__ == "TensorQuantizer"
        and getattr(quantizer, "pre_quant_scale", None) is None
        and not getattr(quantizer, "rotate_is_enabled", True)
        and not getattr(quantizer, "rotate_back_is_enabled", True)
        and not isinstance(x, _wrapped_types())
    ):
        return x
    if x.is_cuda and fp8_path_known():
        amax = fp8_kernel_amax(quantizer, x)
        if amax is not None:
            ext = _fp8_extension()
            if ext is not None:
                return _fp8_kernel(ext, x, amax)
    return quantizer(x)


def fp8_kernel_amax(quantizer: nn.Module, x: torch.Tensor) -> torch.Tensor | None:
    """The amax with which TensorQuantizer's forward would fake-quantize `x` to FP8 E4M3 through ModelOpt's CUDA
    kernel (`tensor_quant.scaled_e4m3_impl`: `fake_e4m3fy`, or `fake_e4m3fy_with_axis` for a per-channel amax), or
    None when its forward would do anything else or anything more.

    Why: that forward reaches the kernel through the quantizer's checks, `ScaledE4M3Function.apply`, the
    `tensorrt::quantize_op` custom-op dispatch and `_quantize_impl`: ~2/3 of an FP8 cell's quantizer time on an
    H200 host, around a kernel call that is the same whoever makes it. Taken only where every branch of
    `TensorQuantizer.forward` and `_fake_quantize` that could change the result or add a side effect is off: a
    plain TensorQuantizer (no subclass) with no hooks, enabled, quantizing (not calibrating), fake quant, E4M3,
    no block sizes, no backend, no constant amax, no bias, no pre-quant scale, no rotation, a static amax on `x`'s
    device; `x` a plain tensor (no DTensor, no quantized-tensor wrapper), not empty, on the current device; no
    autograd (ModelOpt's Function records a straight-through backward), no ONNX export, no compilation.
    tests/test_quant_linear.py checks the test; tests/test_gpu_cuda.py the outputs, bit for bit, on a GPU."""
    if type(quantizer) is not _tensor_quantizer() or type(x) not in _PLAIN_TENSORS:
        return None
    d = quantizer.__dict__
    if (
        "forward" in d  # an instance-level forward (a hook library's wrapper): the call is theirs
        or d.get("_disabled", True)
        or not d.get("_if_quant", False)
        or d.get("_if_calib", True)
        or not d.get("_fake_quant", False)
        or d.get("_num_bits") != (4, 3)
        or d.get("_block_sizes") is not None
        or d.get("backend") is not None
        or d.get("_use_constant_amax", True)
        or d.get("_constant_amax") is not None
        or d.get("_bias") is not None
        or d.get("_bias_calibrator") is not None
        or d.get("_rotate", True) is not False
        or quantizer.pre_quant_scale is not None
        or quantizer._forward_hooks
        or quantizer._forward_pre_hooks
        or _global_module_hooks()
        or torch.is_grad_enabled()
        or x.numel() == 0
        or _onnx_export_or_compiling()
    ):
        return None
    amax = quantizer._buffers.get("_amax")
    if amax is None or amax.device != x.device or amax.squeeze().ndim > 1:
        return None
    if x.is_cuda and x.device.index != torch.cuda.current_device():
        return None  # ModelOpt would switch devices around the call (same_device_as)
    return amax


# sha256 of the sources (nvidia-modelopt 0.47.0) of the path `fp8_kernel_amax` was written against: the
# quantizer's forward, _fake_quantize and _get_amax, ScaledE4M3Function.forward, _quantize_impl, scaled_e4m3_impl
KNOWN_FP8_PATH = "1640e05b88389f669752a1ca5d4aedbdeb9ce16998211d721c1fd500066108de"


@functools.cache
def fp8_path_known() -> bool:
    """Whether ModelOpt's FP8 path is the one whose branches `fp8_kernel_amax` mirrors (another version: its own)."""
    from modelopt.torch.quantization import tensor_quant

    from .calibrator_syncs import source_hash

    q = _tensor_quantizer()
    return source_hash(q.forward, q._fake_quantize, q._get_amax, tensor_quant.ScaledE4M3Function.forward,
                       tensor_quant._quantize_impl, tensor_quant.scaled_e4m3_impl) == KNOWN_FP8_PATH


def _fp8_kernel(ext: Any, x: torch.Tensor, amax: torch.Tensor) -> torch.Tensor:
    """`scaled_e4m3_impl(x, amax)`'s CUDA branch."""
    if amax.numel() == 1:
        return ext.fake_e4m3fy(x, amax)
    return ext.fake_e4m3fy_with_axis(x, amax.squeeze(), amax.shape.index(amax.numel()))


_PLAIN_TENSORS = (torch.Tensor, nn.Parameter)


@functools.cache
def _fp8_extension() -> Any:
    """ModelOpt's FP8 extension, or None where it could not be built (looked up once)."""
    from modelopt.torch.quantization import tensor_quant

    return tensor_quant.get_cuda_ext_fp8(raise_if_failed=False)


@functools.cache
def _tensor_quantizer() -> type:
    from modelopt.torch.quantization.nn import TensorQuantizer

    return TensorQuantizer


def _global_module_hooks() -> bool:
    return bool(
        _torch_module._global_forward_hooks
        or _torch_module._global_forward_pre_hooks
        or _torch_module._global_forward_hooks_always_called
    )


def _onnx_export_or_compiling() -> bool:
    return bool(_onnx_globals().in_onnx_export) or torch.compiler.is_compiling()


@functools.cache
def _onnx_globals() -> Any:
    from modelopt.torch.quantization.nn.modules.tensor_quantizer import GLOBALS

    return GLOBALS


@functools.cache
def _wrapped_types() -> tuple[type, ...]:
    from modelopt.torch.quantization.qtensor import BaseQuantizedTensor, QTensorWrapper

    return (BaseQuantizedTensor, QTensorWrapper)


@contextlib.contextmanager
def lean_linear_forwards(model: nn.Module) -> Iterator[int]:
    """Inside, every plain quantized linear of `model` runs `_lean_forward` with whatever quantizers are switched
    in (a recipe change inside is seen at the next call). Yields how many linears were switched."""
    switched: list[tuple[nn.Module, Any]] = []
    for module in model.modules():
        if not plain_quantized_linear(module) or set(module._modules) != QUANTIZERS:
            continue
        own = module.__dict__.get("forward")  # AutoQuantize leaves the class's forward bound on the instance
        if own is not None and (getattr(own, "__func__", None) is not type(module).forward or own.__self__ is not module):
            continue  # somebody else's patch: theirs to keep
        module.forward = types.MethodType(_lean_forward, module)
        switched.append((module, own))
    try:
        yield len(switched)
    finally:
        for module, own in switched:
            if own is None:
                module.__dict__.pop("forward", None)
            else:
                module.forward = own


def _lean_forward(module: nn.Module, input: Any, *args: Any, **kwargs: Any) -> Any:
    if args or kwargs or not isinstance(input, torch.Tensor) or module._enable_weight_quantization:
        # ModelOpt's own forward: unusual arguments, or an outer quantize_weight() (module.weight already quantized)
        return type(module).forward(module, input, *args, **kwargs)
    q = module._modules
    weight = quantize(q["weight_quantizer"], module.weight)  # the raw weight: weight quantization is off here
    return quantize(q["output_quantizer"], F.linear(quantize(q["input_quantizer"], input), weight, module.bias))
