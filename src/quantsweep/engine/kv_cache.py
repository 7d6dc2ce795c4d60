"""KV-cache quantization (`axes.kv_cache`), applied on top of a cell's chosen recipe for its evaluation.

Why: at long context the KV cache, not the weights, decides the memory, and quantizing it (FP8, NVFP4) costs
quality of its own, which grows with the length. So a KV-cache setting is an axis: the same search (the cell's
recipe does not depend on it), evaluated with the cache's keys and values fake-quantized as ModelOpt's KV-cache
configs say (`modelopt.torch.quantization.config.FP8_KV_CFG` ...: the `*[kv]_bmm_quantizer` of every attention
module ModelOpt converted). The flow is ModelOpt's own for AutoQuantize + KV cache (its `hf_ptq` example): set
the KV quantizers, calibrate them alone (max), keep the recipe's quantizers as they are.

Scoped: the KV quantizers are switched on for the cell's evaluation only (`kv_cache_applied`), so with the shared
engine the next cell of the same union call sees the model as AutoQuantize left it.

NVFP4 KV caches on a CPU go through quantsweep's pure-PyTorch backend (engine/torch_formats.py), as NVFP4 weights
do; FP8 runs on ModelOpt's own fake quantization on both.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch

from .autoquant import CellError

# axes.kv_cache name -> ModelOpt config (schema.KvCacheName lists the same names)
KV_CONFIGS = {
    "fp8": "FP8_KV_CFG",
    "fp8_affine": "FP8_AFFINE_KV_CFG",
    "nvfp4": "NVFP4_KV_CFG",
    "nvfp4_affine": "NVFP4_AFFINE_KV_CFG",
}
KV_QUANTIZERS = "*[kv]_bmm_quantizer"


def kv_quant_cfg(name: str, device_type: str, fake_quant_backend: str = "auto") -> tuple[list[dict[str, Any]], str]:
    """The `quant_cfg` entries of KV-cache setting `name` and the fake-quant backend they use."""
    from modelopt.torch.quantization import config as mtq_config

    entries = copy.deepcopy(getattr(mtq_config, KV_CONFIGS[name])["quant_cfg"])
    if fake_quant_backend == "torch" or (fake_quant_backend == "auto" and device_type != "cuda"):
        from . import torch_formats

        converted, used = torch_formats.with_torch_backend({"quant_cfg": entries})
        if used:
            torch_formats.register()
            return converted["quant_cfg"], torch_formats.BACKEND_NAME
    return entries, "modelopt"


@contextmanager
def kv_cache_applied(model: torch.nn.Module, name: str, batches: list[dict[str, torch.Tensor]], device_type: str,
                     fake_quant_backend: str = "auto") -> Iterator[dict[str, Any] | None]:
    """Inside: `model` with its KV cache quantized as `name` says, calibrated on `batches` (its recipe's
    quantizers untouched); on exit the KV quantizers are as they were. Yields what the manifest records."""
    if name == "none":
        yield None
        return
    import modelopt.torch.quantization as mtq

    entries, backend = kv_quant_cfg(name, device_type, fake_quant_backend)
    found = [n for n, _ in model.named_modules() if n.endswith(("k_bmm_quantizer", "v_bmm_quantizer"))]
    if not found:
        raise CellError(f"kv_cache {name}: the model has no KV-cache quantizers ({KV_QUANTIZERS}); ModelOpt did not "
                        "convert its attention modules")
    with mtq.set_quantizer_by_cfg_context(model, entries):
        with mtq.set_quantizer_by_cfg_context(model, [{"quantizer_name": "*", "enable": False}, *entries]):

            def loop(m: torch.nn.Module) -> None:
                for b in batches:
                    m(input_ids=b["input_ids"])

            with torch.no_grad():
                mtq.calibrate(model, algorithm="max", forward_loop=loop)
        yield {"kv_cache": name, "modelopt_config": KV_CONFIGS[name], "quantizers": len(found),
               "fake_quant_backend": backend, "quant_cfg": entries}
