"""Synthetic (random-weight) models built without ever materialising them on one device.

The model is first built on the meta device (shapes only), placed with accelerate (engine/placement.py), then
every parameter is created on its own device and initialised there from a generator seeded by
(model.seed, parameter name). So:
  * a Llama-3-70B-shaped model (140 GB in bf16) is made on two H200s in seconds, with no host copy;
  * a parameter's values depend only on the seed, its name and the kind of device it is drawn on, not on how
    the layers are spread: the same model on one GPU or on two is the same model, and rebuilding it for the
    next AutoQuantize call gives it back bit for bit.
The initialisation follows transformers' `_init_weights` for these architectures: linear and embedding weights
normal(0, initializer_range), biases zero, normalisation weights one, the padding row of the embedding zero.
"""

from __future__ import annotations

import copy
import hashlib
from typing import Any

import torch
from torch import nn

from ..presets import SYNTHETIC_PRESETS
from ..schema import ModelSpec
from .placement import Placement, device_of, infer_device_map


def synthetic_config(spec: ModelSpec, tokenizer: Any) -> Any:
    from transformers import AutoConfig

    preset = dict(SYNTHETIC_PRESETS[spec.preset or ""])
    model_type = preset.pop("model_type")
    return AutoConfig.for_model(
        model_type,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        **preset,
    )


def parameter_seed(seed: int, name: str) -> int:
    digest = hashlib.sha256(f"{seed}:{name}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def build_synthetic(
    spec: ModelSpec, config: Any, dtype: torch.dtype, placement: Placement
) -> tuple[nn.Module, dict[str, str]]:
    """(the model on its devices, the device map used: {"": device} when not spread)."""
    from accelerate import init_empty_weights
    from transformers import AutoModelForCausalLM

    config = copy.deepcopy(config)  # the model owns its config (untying the lm_head later edits it)
    with init_empty_weights(include_buffers=False):  # parameters on meta; small buffers (rotary) built normally
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    _tie(model, config)  # before placing it: accelerate keeps tied weights together
    if placement.spread:
        device_map = infer_device_map(model, placement, dtype)
    else:
        device_map = {"": str(placement.device)}
    std = float(getattr(config, "initializer_range", 0.02))
    made: dict[int, nn.Parameter] = {}  # tied parameters (one meta tensor, two modules) stay one parameter
    for mod_name, module in model.named_modules():
        for p_name, param in list(module._parameters.items()):
            if param is None:
                continue
            full = f"{mod_name}.{p_name}" if mod_name else p_name
            if id(param) not in made:
                dev = torch.device(device_of(full, device_map))
                data = torch.empty(param.shape, dtype=dtype, device=dev)
                _init(module, p_name, data, std, parameter_seed(spec.seed, full))
                made[id(param)] = nn.Parameter(data, requires_grad=False)
            module._parameters[p_name] = made[id(param)]
        for b_name, buf in list(module._buffers.items()):
            if buf is not None:
                full = f"{mod_name}.{b_name}" if mod_name else b_name
                module._buffers[b_name] = buf.to(device_of(full, device_map))
    if placement.spread and len(set(device_map.values())) > 1:
        from accelerate import dispatch_model

        model = dispatch_model(model, device_map=device_map)  # hooks that move activations between devices
    return model, device_map


def _tie(model: nn.Module, config: Any) -> None:
    if not getattr(config, "tie_word_embeddings", False):
        return
    out, inp = model.get_output_embeddings(), model.get_input_embeddings()
    if out is not None and inp is not None:
        out.weight = inp.weight


@torch.no_grad()
def _init(module: nn.Module, p_name: str, data: torch.Tensor, std: float, seed: int) -> None:
    gen = torch.Generator(device=data.device).manual_seed(seed)
    if p_name == "bias":
        data.zero_()
    elif isinstance(module, nn.Linear | nn.Embedding) or data.dim() >= 2:
        data.normal_(0.0, std, generator=gen)
        pad = getattr(module, "padding_idx", None)
        if isinstance(module, nn.Embedding) and pad is not None:
            data[pad].zero_()
    else:
        data.fill_(1.0)  # RMSNorm / LayerNorm weights
