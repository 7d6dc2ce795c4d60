"""Paying ModelOpt's first-use costs before the first cell, so that they are timed apart from the cells.

The first fake-quant call of a process, for each kind of quantizer, builds or loads ModelOpt's CUDA extensions and
compiles kernels (seconds to a minute on a fresh GPU machine). Left alone, that lands in the first cell's (or the
first union call's) timings, and with the Ray executor in every worker's first unit. Quantizing a 256 x 256 layer
once per format of the sweep, on the model's device and dtype, pays it up front, with the compilation of the
shared engine's fused score kernel (engine/score_kernel.py) and, where a format is INT, its per-axis fake
quantization kernel (engine/axis_fake_quant.py); `setup.warm_up_s` reports it.
"""

from __future__ import annotations

import contextlib
import copy
import io
from typing import Any

import torch
from torch import nn

from ..overlay import canonical_json


def warm_up_formats(configs: list[dict[str, Any]], device: torch.device, dtype: torch.dtype) -> int:
    """Quantize, run and backpropagate through a tiny layer once per distinct config; returns how many ran.

    A format that fails here is skipped: its cell will fail with the real error, on the real model."""
    import modelopt.torch.quantization as mtq

    seen: set[str] = set()
    done = 0
    for cfg in configs:
        key = canonical_json(cfg)
        if key in seen:
            continue
        seen.add(key)
        layer = nn.Sequential(nn.Linear(256, 256)).to(device=device, dtype=dtype)
        x = torch.randn(2, 16, 256, device=device, dtype=dtype)
        try:
            with contextlib.redirect_stdout(io.StringIO()):
                mtq.quantize(layer, copy.deepcopy(cfg), lambda m, x=x: m(x))
            layer(x).float().square().mean().backward()
            done += 1
        except Exception:  # noqa: BLE001 - a warm-up never decides a cell's fate
            continue
    if device.type == "cuda":
        from . import axis_fake_quant, score_kernel

        score_kernel.warm(device, dtype)  # the shared engine's fused score kernel (compiled once per process)
        if any(_has_int_quantizer(cfg) for cfg in configs):
            axis_fake_quant.warm(device, dtype)  # and its per-axis fake quantization kernel, where INT formats are
        torch.cuda.synchronize(device)
    return done


def _has_int_quantizer(config: Any) -> bool:
    """Whether a ModelOpt config anywhere sets an integer `num_bits` (FP8 and FP4 formats give tuples)."""
    if isinstance(config, dict):
        bits = config.get("num_bits")
        if isinstance(bits, int) and not isinstance(bits, bool):
            return True
        return any(_has_int_quantizer(v) for v in config.values())
    if isinstance(config, (list, tuple)):
        return any(_has_int_quantizer(v) for v in config)
    return False
