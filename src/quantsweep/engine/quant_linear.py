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
    pre-quant scale, no rotation): each call costs tens of microseconds of Python."""
    if (
        getattr(quantizer, "_disabled", False)
        and type(quantizer).__name__ == "TensorQuantizer"
        and getattr(quantizer, "pre_quant_scale", None) is None
        and not getattr(quantizer, "rotate_is_enabled", True)
        and not getattr(quantizer, "rotate_back_is_enabled", True)
        and not isinstance(x, _wrapped_types())
    ):
        return x
    return quantizer(x)


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
