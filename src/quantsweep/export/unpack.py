"""Reading ModelOpt's unified checkpoint back: per-layer formats and dequantized weights, written independently of
ModelOpt's exporter so that a packing mistake (its or ours) shows up as a mismatch instead of cancelling out.

What the exporter stores per quantized linear (`modelopt/torch/export/quant_utils.py::to_quantized_weight`):

| family | `weight` | scales |
|---|---|---|
| INT8 (W8A16, W8A8 SmoothQuant) | int8 `[out, in]` | `weight_scale` `[out]` (or `[out, 1]`): w = q · s |
| FP8 | float8_e4m3fn `[out, in]` | `weight_scale` scalar or `[out]`: w = q · s |
| INT4 (W4A16_AWQ, W4A8_AWQ) | uint8 `[out/2, in]`: rows 2j and 2j+1 in the low and high nibble | `weight_scale` `[out, in/block]` |
| FP4 (NVFP4, W4A16_NVFP4, W4A8_NVFP4_FP8) | uint8 `[out, in/2]`: columns 2i and 2i+1 in the low and high nibble, E2M1 codes | `weight_scale` FP8 `[out, in/block]`, `weight_scale_2` scalar: w = e2m1 · s · s2 |

Each dequantized weight comes with its *levels*: the position of each value on the format's grid (an integer for
INT, the signed E4M3 / E2M1 code magnitude for FP8 / FP4), so that the stored weights can be compared with the
evaluated model's fake-quantized ones in levels, whatever the scale.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass
from typing import Any

import torch

# E2M1 values of codes 0..15 (bit 3 is the sign), as ModelOpt's NVFP4QTensor and the OCP MX spec define them
E2M1 = torch.tensor([0, 0.5, 1, 1.5, 2, 3, 4, 6, -0.0, -0.5, -1, -1.5, -2, -3, -4, -6])
_E2M1_POSITIVE = E2M1[:8]

# quant_algo labels of the unified checkpoint → (weight family, activation family)
ALGOS: dict[str, tuple[str, str]] = {
    "W8A16": ("int8", "none"),
    "W8A8_SQ_PER_CHANNEL": ("int8", "int8"),
    "FP8": ("fp8", "fp8"),
    "FP8_PER_CHANNEL_PER_TOKEN": ("fp8", "fp8_dynamic"),
    "W4A16_AWQ": ("int4", "none"),
    "W4A8_AWQ": ("int4", "fp8"),
    "NVFP4": ("fp4", "fp4"),
    "NVFP4_AWQ": ("fp4", "fp4"),
    "W4A16_NVFP4": ("fp4", "none"),
    "W4A8_NVFP4_FP8": ("fp4", "fp8"),
}


@dataclass
class LayerFormat:
    """What the checkpoint says one linear is: its quant_algo label and block size (None: per channel/tensor)."""

    algo: str
    group_size: int | None

    @property
    def families(self) -> tuple[str, str] | None:
        return ALGOS.get(self.algo)


def layer_formats(hf_quant_config: dict[str, Any], quantized: set[str]) -> dict[str, LayerFormat]:
    """Per quantized module (those stored with a `weight_scale`): its format, from `hf_quant_config.json`.

    A single-format checkpoint names one `quant_algo` for everything outside `exclude_modules`; a mixed one
    (`MIXED_PRECISION`) lists each layer under `quantized_layers`."""
    q = hf_quant_config.get("quantization") or {}
    algo = q.get("quant_algo")
    per_layer = q.get("quantized_layers") or {}
    excluded = q.get("exclude_modules") or []
    out = {}
    for name in quantized:
        if algo == "MIXED_PRECISION":
            cfg = per_layer.get(name)
            if cfg is None:
                continue
            out[name] = LayerFormat(str(cfg.get("quant_algo")), cfg.get("group_size") or None)
        elif algo is not None and not any(fnmatch.fnmatch(name, p) for p in excluded):
            out[name] = LayerFormat(str(algo), q.get("group_size") or None)
    return out


def _per_row(scale: torch.Tensor, rows: int) -> torch.Tensor:
    s = scale.float()
    if s.numel() == 1:
        return s.reshape(1, 1)
    if s.numel() == rows:
        return s.reshape(rows, 1)
    raise ValueError(f"a scale of shape {tuple(scale.shape)} for {rows} output channels")


def _blocks(scale: torch.Tensor, shape: tuple[int, int]) -> tuple[torch.Tensor, int]:
    """Block scales `[out, in/block]` expanded to `[out, in]`, and the block size they imply."""
    out_dim, in_dim = shape
    s = scale.float().reshape(out_dim, -1)
    if in_dim % s.shape[1]:
        raise ValueError(f"{s.shape[1]} scale blocks do not divide {in_dim} inputs")
    block = in_dim // s.shape[1]
    return s.repeat_interleave(block, dim=1), block


def _unpack_int4(packed: torch.Tensor) -> torch.Tensor:
    """uint8 `[out/2, in]` → int `[out, in]`: output rows 2j (low nibble) and 2j+1 (high nibble), two's complement."""
    b = packed.to(torch.int16)
    low, high = b & 0xF, (b >> 4) & 0xF
    low, high = torch.where(low > 7, low - 16, low), torch.where(high > 7, high - 16, high)
    return torch.stack([low, high], dim=1).reshape(2 * packed.shape[0], packed.shape[1])


def _unpack_fp4(packed: torch.Tensor) -> torch.Tensor:
    """uint8 `[out, in/2]` → E2M1 codes `[out, in]`: input columns 2i (low nibble) and 2i+1 (high nibble)."""
    b = packed.to(torch.int16)
    return torch.stack([b & 0xF, (b >> 4) & 0xF], dim=-1).reshape(packed.shape[0], 2 * packed.shape[1])


def _fp8_levels(q: torch.Tensor) -> torch.Tensor:
    """Signed position of E4M3 values on their grid: the bit pattern's magnitude, negated for negative values."""
    bits = q.view(torch.uint8).to(torch.int16)
    mag = bits & 0x7F
    return torch.where(bits & 0x80 > 0, -mag, mag)


def _fp4_levels(codes: torch.Tensor) -> torch.Tensor:
    mag = codes & 0x7
    return torch.where(codes & 0x8 > 0, -mag, mag)


@dataclass
class Dequantized:
    weight: torch.Tensor  # float32 [out, in]
    levels: torch.Tensor  # int16 [out, in]: position on the format's grid
    scale: torch.Tensor  # float32, broadcastable to weight: the value of one level (FP: of the unit E4M3/E2M1 value)
    family: str
    block: int | None


def dequantize(family: str, tensors: dict[str, torch.Tensor], name: str) -> Dequantized:
    """The stored weight of module `name` dequantized (float32, on the CPU), with its levels. ValueError for a
    layout that does not fit the family."""
    w = tensors[f"{name}.weight"].cpu()
    scale = tensors[f"{name}.weight_scale"].cpu()
    if family == "int8":
        if w.dtype != torch.int8:
            raise ValueError(f"INT8 weights stored as {w.dtype}")
        s = _per_row(scale, w.shape[0])
        return Dequantized(w.float() * s, w.to(torch.int16), s, family, None)
    if family == "fp8":
        if w.dtype != torch.float8_e4m3fn:
            raise ValueError(f"FP8 weights stored as {w.dtype}")
        s = _per_row(scale, w.shape[0])
        return Dequantized(w.float() * s, _fp8_levels(w), s, family, None)
    if family == "int4":
        if w.dtype != torch.uint8:
            raise ValueError(f"packed INT4 weights stored as {w.dtype}")
        q = _unpack_int4(w)
        s, block = _blocks(scale, tuple(q.shape))
        return Dequantized(q.float() * s, q, s, family, block)
    if family == "fp4":
        if w.dtype != torch.uint8:
            raise ValueError(f"packed FP4 weights stored as {w.dtype}")
        codes = _unpack_fp4(w)
        s, block = _blocks(scale, tuple(codes.shape))
        s2 = tensors.get(f"{name}.weight_scale_2")
        if s2 is None:
            raise ValueError("FP4 weights stored without weight_scale_2")
        s = s * s2.float().cpu().reshape(-1)[0] if s2.numel() == 1 else s * s2.float().cpu().reshape(-1, 1)
        return Dequantized(E2M1[codes.long()] * s, _fp4_levels(codes), s, family, block)
    raise ValueError(f"no reader for the {family} family")


def levels_of(family: str, values: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """Position of already-quantized `values` (the evaluated model's fake-quantized weight) on the grid of a
    stored weight with `scale`: what the stored levels must equal."""
    x = values.float() / scale.clamp_min(torch.finfo(torch.float32).tiny)
    if family in ("int8", "int4"):
        return torch.round(x).to(torch.int16)
    if family == "fp8":
        return _fp8_levels(x.clamp(-448, 448).to(torch.float8_e4m3fn))
    if family == "fp4":
        mag = (x.abs().unsqueeze(-1) - _E2M1_POSITIVE).abs().argmin(-1).to(torch.int16)
        return torch.where(x < 0, -mag, mag)
    raise ValueError(f"no grid for the {family} family")


def weight_family(quantizer: Any) -> str | None:
    """The family of an enabled ModelOpt weight quantizer (`num_bits` and block scale bits), None otherwise."""
    if quantizer is None or not getattr(quantizer, "is_enabled", False):
        return None
    bits = getattr(quantizer, "num_bits", None)
    block = getattr(quantizer, "block_sizes", None) or {}
    if block.get("scale_bits") == (8, 0):
        return "mx"
    return {8: "int8", 4: "int4", (4, 3): "fp8", (2, 1): "fp4"}.get(bits if isinstance(bits, int) else tuple(bits))


def activation_family(quantizer: Any) -> str:
    """The family of a ModelOpt input quantizer: `none` when disabled, `fp8_dynamic` for per-token FP8."""
    fam = weight_family(quantizer)
    if fam is None:
        return "none"
    block = getattr(quantizer, "block_sizes", None) or {}
    if fam == "fp8" and (block.get("type") == "dynamic" or getattr(quantizer, "axis", None) is not None):
        return "fp8_dynamic"
    return fam
