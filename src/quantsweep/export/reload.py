"""The exported checkpoint run as a model, without ModelOpt: what an inference engine would compute from the files.

The architecture comes from the exported `config.json` (its `quantization_config` set aside), every stored tensor
is loaded, quantized weights dequantized (`export/unpack.py`), and each quantized linear's input is quantized
the way the checkpoint says a serving engine will: with the stored `pre_quant_scale` and `input_scale`, at the
format's activation precision (INT8 and FP8 per tensor, NVFP4 in dynamic blocks of the layer's `group_size`
under the stored global scale). Its logits on a few held-out samples are then compared with those of the
evaluated fake-quantized model: a checkpoint that a correct engine would run differently from the model that
was measured is an error, whatever went wrong in between (packing, scales, labels, fused pre-quant scales).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .unpack import E2M1, LayerFormat, dequantize

_SCALE_SUFFIXES = (".weight_scale", ".weight_scale_2", ".input_scale", ".pre_quant_scale", ".output_scale",
                   ".k_scale", ".v_scale")
EMULATED_ACTIVATIONS = ("none", "int8", "fp8", "fp4")


def _fake_int8(x: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    return torch.clamp(torch.round(x / s), -128, 127) * s


def _fake_fp8(x: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    return (x / s).clamp(-448, 448).to(torch.float8_e4m3fn).to(x.dtype) * s


def _round_e2m1(x: torch.Tensor) -> torch.Tensor:
    values = E2M1[:8].to(x.device, x.dtype)
    idx = (x.abs().unsqueeze(-1) - values).abs().argmin(-1)
    return torch.sign(x) * values[idx]


def _fake_nvfp4(x: torch.Tensor, global_scale: torch.Tensor, block: int) -> torch.Tensor:
    """NVFP4 activations: per block of `block` inputs a scale amax/6, itself stored in FP8 under `global_scale`."""
    shape = x.shape
    xb = x.float().reshape(-1, block)
    gs = global_scale.float()
    bs = (xb.abs().amax(-1, keepdim=True) / 6.0 / gs).clamp(max=448).to(torch.float8_e4m3fn).float() * gs
    q = _round_e2m1(xb / torch.where(bs > 0, bs, torch.ones_like(bs))) * bs
    return q.reshape(shape).to(x.dtype)


class _InputQuantizer:
    """A forward pre-hook applying the stored pre-quant scale and the activation quantization of one linear."""

    def __init__(self, family: str, input_scale: torch.Tensor | None, pre_quant_scale: torch.Tensor | None,
                 block: int):
        self.family, self.input_scale, self.pre_quant_scale, self.block = family, input_scale, pre_quant_scale, block

    def __call__(self, _module: nn.Module, args: tuple) -> tuple:
        x = args[0]
        if self.pre_quant_scale is not None:
            x = x * self.pre_quant_scale.to(x.device, x.dtype)
        s = None if self.input_scale is None else self.input_scale.to(x.device, torch.float32)
        if self.family == "int8":
            x = _fake_int8(x.float(), s).to(x.dtype)
        elif self.family == "fp8":
            x = _fake_fp8(x.float(), s).to(x.dtype)
        elif self.family == "fp4":
            x = _fake_nvfp4(x, s, self.block)
        return (x, *args[1:])


def _config(folder: Path, tensors: dict[str, torch.Tensor]) -> Any:
    from transformers import AutoConfig

    raw = json.loads((folder / "config.json").read_text())
    raw.pop("quantization_config", None)
    if "lm_head.weight" in tensors:
        raw["tie_word_embeddings"] = False  # the checkpoint stores its own (possibly quantized) lm_head
    plain = folder / ".config-for-reload"
    plain.mkdir(exist_ok=True)
    (plain / "config.json").write_text(json.dumps(raw))
    try:
        return AutoConfig.from_pretrained(str(plain))
    finally:
        (plain / "config.json").unlink()
        plain.rmdir()


def reload_dequantized(folder: Path, tensors: dict[str, torch.Tensor], formats: dict[str, LayerFormat],
                       dtype: torch.dtype, device: torch.device) -> tuple[nn.Module, list[str]]:
    """The checkpoint in `folder` (its tensors already read) as a plain transformers model that quantizes the
    inputs of its quantized linears as the checkpoint says. Returns the model and the modules whose activation
    format is not emulated here (their inputs stay unquantized; the caller reports them)."""
    from transformers import AutoModelForCausalLM

    config = _config(folder, tensors)
    with torch.device(device):  # on the device: a meta build would leave computed buffers (rotary) unset
        model = AutoModelForCausalLM.from_config(config, torch_dtype=dtype)
    state: dict[str, torch.Tensor] = {}
    for key, t in tensors.items():
        if key.endswith(_SCALE_SUFFIXES):
            continue
        name = key.removesuffix(".weight")
        if key.endswith(".weight") and name in formats:
            fam = formats[name].families
            state[key] = dequantize(fam[0], tensors, name).weight.to(dtype)
        else:
            state[key] = t.to(dtype) if t.is_floating_point() else t
    expected = set(model.state_dict())
    out_emb, in_emb = model.get_output_embeddings(), model.get_input_embeddings()
    if out_emb is not None and in_emb is not None and out_emb.weight is in_emb.weight:
        # tied: the exporter stores the shared tensor once, under either name
        names = {n for n, p in model.named_parameters(remove_duplicate=False) if p is in_emb.weight}
        present = [n for n in names if n in state]
        if present:
            state.update({n: state[present[0]] for n in names})
    missing, unexpected = sorted(expected - set(state)), sorted(set(state) - expected)
    if missing or unexpected:
        raise ValueError(f"the checkpoint's tensors do not fit its config.json: missing {missing[:3]}, "
                         f"unexpected {unexpected[:3]}")
    model.load_state_dict(state, strict=True)
    del state
    not_emulated = []
    modules = dict(model.named_modules())
    for name, fmt in formats.items():
        act = fmt.families[1]
        pqs = tensors.get(f"{name}.pre_quant_scale")
        if act not in EMULATED_ACTIVATIONS:
            not_emulated.append(f"{name} ({fmt.algo})")
            continue
        scale = tensors.get(f"{name}.input_scale")
        if act != "none" and scale is None:
            raise ValueError(f"{name}: {fmt.algo} quantizes its inputs but no input_scale is stored")
        if act == "none" and pqs is None:
            continue
        modules[name].register_forward_pre_hook(_InputQuantizer(act, scale, pqs, fmt.group_size or 16))
    model.eval()
    return model, not_emulated

