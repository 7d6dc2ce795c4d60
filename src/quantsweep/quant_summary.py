"""Human- and machine-readable summaries of a ModelOpt quantization config, without importing ModelOpt.

`format_bits` reproduces ModelOpt 0.47's `estimate_quant_compression` rule (the minimum over every enabled
quantizer entry of `effective_bits`, else the integer bit width, else E+M+1), because AutoQuantize refuses a
budget below it and counts costs with it; a test checks it against ModelOpt itself.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from .catalogue import INPUT_KEY, WEIGHT_KEY

_FP_NAMES = {(2, 1): "fp4-e2m1", (4, 3): "fp8-e4m3", (5, 2): "fp8-e5m2", (3, 2): "fp6-e3m2", (2, 3): "fp6-e2m3"}


def _bits_of(attrs: Mapping[str, Any]) -> float | None:
    if attrs.get("enable", True) is False:
        return None
    if attrs.get("effective_bits") is not None:
        return float(attrs["effective_bits"])
    nb = attrs.get("num_bits")
    if isinstance(nb, list | tuple):
        return float(sum(nb) + 1)
    if isinstance(nb, int):
        return float(nb)
    return None


def format_bits(config: Mapping[str, Any]) -> float:
    """Effective bits per weight element as AutoQuantize counts them for this format (16.0 when nothing is on)."""
    if config.get("effective_bits") is not None:
        return float(config["effective_bits"])
    values: list[float] = []
    for entry in config.get("quant_cfg", []):
        if entry.get("enable", True) is False or entry.get("cfg") is None:
            continue
        cfg = entry["cfg"]
        for attrs in cfg if isinstance(cfg, list) else [cfg]:
            b = _bits_of(attrs)
            if b is not None:
                values.append(b)
    return min(values) if values else 16.0


def _dtype_name(num_bits: Any) -> str:
    if isinstance(num_bits, list | tuple):
        return _FP_NAMES.get(tuple(num_bits), f"fp-e{num_bits[0]}m{num_bits[1]}")
    return f"int{num_bits}"


def describe_attributes(attrs: Mapping[str, Any]) -> str:
    """One short phrase, e.g. ``int4 group128 static`` or ``fp8-e4m3 per-token dynamic``."""
    if attrs.get("enable", True) is False:
        return "disabled"
    dtype = _dtype_name(attrs.get("num_bits", 8))
    block = attrs.get("block_sizes")
    dynamic = attrs.get("type") == "dynamic"
    if block:
        axes = {k: v for k, v in block.items() if isinstance(k, int)}
        btype = block.get("type", "dynamic" if dynamic else "static")
        if axes and all(v is None for v in axes.values()):
            gran = "per-token"
            btype = "dynamic" if dynamic or btype == "dynamic" else btype
        else:
            parts = [f"{v}" for _, v in sorted(axes.items())]
            gran = "block" + "x".join(parts) if len(parts) > 1 else f"group{parts[0]}" if parts else "block"
        text = f"{dtype} {gran} {btype}"
        if block.get("scale_bits") is not None:
            text += f" scale={_dtype_name(block['scale_bits'])}"
        return text
    axis = attrs.get("axis")
    if axis is None:
        gran = "per-tensor"
    elif axis == 0:
        gran = "per-out-channel"
    elif axis in (1, -1):
        gran = "per-in-channel"
    else:
        gran = f"axis={axis}"
    return f"{dtype} {gran} {'dynamic' if dynamic else 'static'}"


def _quantizer_state(config: Mapping[str, Any], key: str) -> Any:
    """The attributes that govern quantizers matched by `key` (last matching entry wins, as in ModelOpt)."""
    state: Any = None  # None = only the leading "*" disable applies
    for entry in config.get("quant_cfg", []):
        name = entry.get("quantizer_name")
        if "parent_class" in entry or name not in ("*", key):
            continue
        if entry.get("enable", True) is False or entry.get("cfg") is None:
            state = {"enable": False}
        else:
            state = entry["cfg"]
    return state if state is not None else {"enable": False}


def describe_quantizer(config: Mapping[str, Any], key: str) -> str:
    state = _quantizer_state(config, key)
    if isinstance(state, list):
        return " -> ".join(describe_attributes(a) for a in state)
    return describe_attributes(state)


def quantizer_summary(config: Mapping[str, Any]) -> dict[str, Any]:
    """The effective weight/input quantizer attributes (as in the seed manifests) plus a one-line description."""
    out: dict[str, Any] = {}
    for key in (WEIGHT_KEY, INPUT_KEY):
        state = _quantizer_state(config, key)
        items = state if isinstance(state, list) else [state]
        out[key] = {
            "enabled": any(a.get("enable", True) is not False for a in items),
            "description": describe_quantizer(config, key),
            "attributes": [
                {k: a[k] for k in ("num_bits", "axis", "block_sizes", "type", "effective_bits") if k in a} for a in items
            ]
            if any(a.get("enable", True) is not False for a in items)
            else [],
        }
    out["algorithm"] = config.get("algorithm")
    out["format_bits"] = format_bits(config)
    return out


def calibration_method(config: Mapping[str, Any]) -> str | None:
    algo = config.get("algorithm")
    if isinstance(algo, Mapping):
        return algo.get("method")
    return algo


_FP_FORMATS = {(4, 3), (5, 2), (2, 1), (1, 2), (0, 3), (3, 0), (3, 2), (2, 3)}


def modelopt_violations(config: Mapping[str, Any]) -> list[str]:
    """Quantizer attributes ModelOpt 0.47 refuses (`QuantizerAttributeConfig.validate_num_bits`), found without
    importing it, so `dry-run` can flag a pair x granularity combination before a run turns it into an error row."""
    problems: list[str] = []
    for entry in config.get("quant_cfg", []):
        cfg = entry.get("cfg")
        if cfg is None or entry.get("enable", True) is False:
            continue
        for attrs in cfg if isinstance(cfg, list) else [cfg]:
            nb = attrs.get("num_bits")
            if not isinstance(nb, list | tuple):
                continue
            nb = tuple(nb)
            block = attrs.get("block_sizes") or {}
            if nb not in _FP_FORMATS:
                problems.append(f"{entry['quantizer_name']}: FP format {nb} is not one ModelOpt supports")
            elif nb not in {(4, 3), (2, 1)} and block.get("type") != "dynamic":
                problems.append(
                    f"{entry['quantizer_name']}: {_dtype_name(nb)} needs dynamic block quantization in ModelOpt "
                    "(this overlay removes the blocks)"
                )
    return problems


# --- storage bits: what a checkpoint really stores per weight ------------------------------------------------
SCALE_BITS_DEFAULT = 16  # a block / channel scale kept in the model's 16-bit dtype unless the format names its type
TENSOR_SCALE_BITS = 32  # one FP32 scale per tensor (FP8 per-tensor, NVFP4's second-level scale)


def _element_bits(attrs: Mapping[str, Any]) -> float:
    nb = attrs.get("num_bits", 8)
    return float(sum(nb) + 1) if isinstance(nb, list | tuple) else float(nb)


def _scale_overhead(attrs: Mapping[str, Any], shape: tuple[int, ...] | None) -> float:
    """Scale bits per weight element for one quantizer stage on a [out, in] weight (zero points: none, every
    ModelOpt weight format is symmetric)."""
    numel = math.prod(shape) if shape else None
    per_tensor = TENSOR_SCALE_BITS / numel if numel else 0.0
    block = attrs.get("block_sizes")
    if block:
        sizes = [v for k, v in block.items() if isinstance(k, int) and v]
        if sizes:
            sb = block.get("scale_bits")
            # a named scale type: E4M3 is 8 bits with its sign; E8M0 (MX) is 8 bits without one
            unsigned = sb is not None and tuple(sb) == (8, 0)
            if sb is None:
                scale_bits = float(SCALE_BITS_DEFAULT)
            else:
                scale_bits = 8.0 if unsigned else _element_bits({"num_bits": sb})
            two_level = sb is not None and tuple(sb) == (4, 3)  # NVFP4: E4M3 block scales under an FP32 tensor scale
            second_level = per_tensor if two_level else 0.0
            if shape and len(sizes) == 1:  # a block longer than the row holds the whole row: one scale per row
                sizes = [min(sizes[0], shape[-1])]
            return scale_bits / math.prod(sizes) + second_level
    axis = attrs.get("axis")
    if axis is None:
        return per_tensor
    if shape and len(shape) == 2:
        per_row = shape[1] if axis == 0 else shape[0]  # axis 0: one scale per output channel, over its inputs
        return SCALE_BITS_DEFAULT / per_row
    return 0.0


def storage_bits(config: Mapping[str, Any], shape: tuple[int, ...] | None = None) -> float:
    """Bits per weight element a deployed checkpoint stores in this format for a weight of `shape` ([out, in]):
    the element bits plus the scales (block scales at their named type, else 16 bits; per-channel scales over
    the channel's inputs; one FP32 scale per tensor). 16.0 when the weight is not quantized. Without a shape,
    per-channel and per-tensor scales (which depend on it) count as zero."""
    state = _quantizer_state(config, WEIGHT_KEY)
    stages = [s for s in (state if isinstance(state, list) else [state]) if isinstance(s, Mapping)]
    if not stages or stages[0].get("enable", True) is False:
        return 16.0
    return _element_bits(stages[0]) + sum(_scale_overhead(s, shape) for s in stages)


def recipe_storage_bits(
    config: Mapping[str, Any], layers: list[tuple[list[list[int]], bool]]
) -> tuple[float | None, float | None]:
    """(bits per weight of the chosen recipe, of the format on every layer it could quantize) counting scales:
    `layers` = per decision group, (its modules' weight shapes, whether the recipe quantizes it). Unquantized
    weights count 16 bits. None when the shapes are unknown (rows written before they were recorded)."""
    total = chosen = everywhere = 0.0
    for shapes, quantized in layers:
        for shape in shapes:
            n = math.prod(shape)
            bits = storage_bits(config, tuple(shape))
            total += n
            chosen += n * (bits if quantized else 16.0)
            everywhere += n * bits
    if total == 0:
        return None, None
    return chosen / total, everywhere / total
