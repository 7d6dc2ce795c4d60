"""The quantization catalogue: named weight x activation pairs and granularity overlays.

Everything here is plain data (no torch, no ModelOpt import) so that `quantsweep dry-run` can plan a sweep in
well under a second. The configs are written in ModelOpt 0.47's current form (an ordered ``quant_cfg`` list of
``{"quantizer_name", "cfg" | "enable", "parent_class"?}`` entries). Pairs that correspond to a ModelOpt built-in
(``base_builtin``) are byte-for-byte that built-in; ``tests/test_catalogue_modelopt.py`` imports ModelOpt and
checks it, so a ModelOpt upgrade that changes a preset fails loudly instead of drifting silently.

Every accessor returns a fresh deep copy: callers may mutate what they get without touching the catalogue
(a seed system handed out shared module-level dicts and paid for it).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

# --- quantizer attribute building blocks -------------------------------------------------------------------
# Weight formats
NVFP4 = {"num_bits": (2, 1), "effective_bits": 4.5, "block_sizes": {-1: 16, "type": "dynamic", "scale_bits": (4, 3)}}
NVFP4_B32 = {"num_bits": (2, 1), "block_sizes": {-1: 32, "type": "dynamic", "scale_bits": (4, 3)}}
FP8_PER_TENSOR = {"num_bits": (4, 3), "axis": None}
INT4_G128 = {"num_bits": 4, "block_sizes": {-1: 128, "type": "static"}}
INT8_PER_CHANNEL = {"num_bits": 8, "axis": 0}
# Activation formats (static per-tensor unless a granularity overlay says otherwise)
INT8_PER_TENSOR = {"num_bits": 8, "axis": None}
INT4_PER_TENSOR = {"num_bits": 4, "axis": None}

# The tail every ModelOpt 0.47 preset carries: quantizers that must stay off (routers, lm_head, vision towers,
# norms, embeddings). AutoQuantize applies formats per module and ignores the name-based entries, but plain
# `mtq.quantize` honours them, so the exported recipe keeps them.
_DEFAULT_DISABLED_NAMES = (
    "*block_sparse_moe.gate*", "*linear_attn.conv1d*", "*self_attention.conv1d*", "*linear_attn.in_proj_a*",
    "*linear_attn.in_proj_b*", "*lm_head*", "*mixer.conv1d*", "*mlp.gate.*", "*mlp.shared_expert_gate.*",
    "*output_layer*", "*proj_out.*", "*router*", "mtp.*", "output.*", "*embed_vision*", "*vision_tower*",
    "*visual*", "*vision_model*", "*multi_modal_projector*",
)
_DEFAULT_DISABLED_CLASSES = ("nn.BatchNorm1d", "nn.BatchNorm2d", "nn.BatchNorm3d", "nn.LeakyReLU", "nn.Embedding")

WEIGHT_KEY = "*weight_quantizer"
INPUT_KEY = "*input_quantizer"


def default_disabled_entries() -> list[dict[str, Any]]:
    """ModelOpt's `_default_disabled_quantizer_cfg`, as a fresh list."""
    entries: list[dict[str, Any]] = [{"quantizer_name": n, "enable": False} for n in _DEFAULT_DISABLED_NAMES]
    entries += [{"quantizer_name": "*", "parent_class": c, "enable": False} for c in _DEFAULT_DISABLED_CLASSES]
    return entries


def compose_config(
    weight: dict[str, Any] | list[dict[str, Any]] | None,
    activation: dict[str, Any] | None,
    algorithm: Any = "max",
    *,
    input_entry: bool = True,
) -> dict[str, Any]:
    """Build a ModelOpt quantization config from weight/input quantizer attributes.

    `activation=None` disables the input quantizer (weight-only). `input_entry=False` omits the input entry
    altogether, which is how `W4A16_NVFP4_CFG` is written (the leading ``"*": disabled`` entry covers it).
    """
    quant_cfg: list[dict[str, Any]] = [{"quantizer_name": "*", "enable": False}]
    if weight is not None:
        quant_cfg.append({"quantizer_name": WEIGHT_KEY, "cfg": copy.deepcopy(weight)})
    if activation is not None:
        quant_cfg.append({"quantizer_name": INPUT_KEY, "cfg": copy.deepcopy(activation)})
    elif input_entry:
        quant_cfg.append({"quantizer_name": INPUT_KEY, "enable": False})
    quant_cfg += default_disabled_entries()
    return {"quant_cfg": quant_cfg, "algorithm": copy.deepcopy(algorithm)}


# --- quant pairs ------------------------------------------------------------------------------------------
WEIGHT_DTYPES = ("fp4", "fp8", "int4", "int8")
ACT_DTYPES = ("fp16", "fp8", "int4", "int8")


@dataclass(frozen=True)
class QuantPair:
    """A weight x activation format and the ModelOpt config that realises it."""

    name: str
    weight: str
    activation: str
    description: str
    _config: dict[str, Any] = field(repr=False)
    base_builtin: str | None = None  # the ModelOpt preset this pair *is*, when one exists
    experimental: bool = False  # no mainstream deployment kernel; a research point, not a recipe
    needs_gpu: bool = False  # ModelOpt can only fake-quantize it on CUDA (NVFP4 / MX block formats)
    extra: bool = False  # outside the 16-pair core grid (calibration variants, NVFP4 W4A4, the MX formats)

    def config(self) -> dict[str, Any]:
        """A fresh deep copy of the ModelOpt quantization config."""
        return copy.deepcopy(self._config)

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "weight": self.weight,
            "activation": self.activation,
            "description": self.description,
            "base_builtin": self.base_builtin,
            "experimental": self.experimental,
            "needs_gpu": self.needs_gpu,
            "extra": self.extra,
        }


_WEIGHT_ATTRS: dict[str, dict[str, Any]] = {
    "fp4": NVFP4,
    "fp8": FP8_PER_TENSOR,
    "int4": INT4_G128,
    "int8": INT8_PER_CHANNEL,
}
_ACT_ATTRS: dict[str, dict[str, Any] | None] = {
    "fp16": None,
    "fp8": FP8_PER_TENSOR,
    "int4": INT4_PER_TENSOR,
    "int8": INT8_PER_TENSOR,
}
_WEIGHT_TEXT = {
    "fp4": "NVFP4 weights (E2M1, 16-element blocks, FP8 block scales)",
    "fp8": "FP8 E4M3 weights, per-tensor scale",
    "int4": "INT4 weights, groups of 128",
    "int8": "INT8 weights, per output channel",
}
_ACT_TEXT = {
    "fp16": "activations not quantized",
    "fp8": "FP8 E4M3 activations, static per-tensor",
    "int4": "INT4 activations, static per-tensor",
    "int8": "INT8 activations, static per-tensor",
}
# pair name -> (ModelOpt built-in it equals, experimental)
_PAIR_FACTS: dict[str, tuple[str | None, bool]] = {
    "wfp4_afp16": ("W4A16_NVFP4_CFG", False),
    "wfp4_afp8": ("W4A8_NVFP4_FP8_CFG", False),
    "wfp4_aint4": (None, True),
    "wfp4_aint8": (None, True),
    "wfp8_afp16": (None, False),
    "wfp8_afp8": ("FP8_DEFAULT_CFG", False),
    "wfp8_aint4": (None, True),
    "wfp8_aint8": (None, True),
    "wint4_afp16": ("INT4_BLOCKWISE_WEIGHT_ONLY_CFG", False),
    "wint4_afp8": (None, True),
    "wint4_aint4": (None, True),
    "wint4_aint8": (None, True),
    "wint8_afp16": ("INT8_WEIGHT_ONLY_CFG", False),
    "wint8_afp8": (None, True),
    "wint8_aint4": (None, True),
    "wint8_aint8": ("INT8_DEFAULT_CFG", False),
}


def _core_pair(w: str, a: str) -> QuantPair:
    name = f"w{w}_a{a}"
    builtin, experimental = _PAIR_FACTS[name]
    if name == "wfp4_afp16":  # W4A16_NVFP4_CFG has no input entry at all
        cfg = compose_config(NVFP4, None, input_entry=False)
    elif name == "wfp4_afp8":  # W4A8_NVFP4_FP8_CFG uses 32-element NVFP4 blocks
        cfg = compose_config(NVFP4_B32, FP8_PER_TENSOR)
    else:
        cfg = compose_config(_WEIGHT_ATTRS[w], _ACT_ATTRS[a])
    return QuantPair(
        name=name,
        weight=w,
        activation=a,
        description=f"{_WEIGHT_TEXT[w]}; {_ACT_TEXT[a]}",
        _config=cfg,
        base_builtin=builtin,
        experimental=experimental,
        needs_gpu=(w == "fp4"),
    )


def _extra_pairs() -> list[QuantPair]:
    return [
        QuantPair(
            name="wfp4_afp4",
            weight="fp4",
            activation="fp4",
            description="NVFP4 weights and activations (W4A4)",
            _config=compose_config(NVFP4, NVFP4),
            base_builtin="NVFP4_DEFAULT_CFG",
            needs_gpu=True,
            extra=True,
        ),
        QuantPair(
            name="wint4_afp16_awq",
            weight="int4",
            activation="fp16",
            description="INT4 weights, groups of 128, AWQ-lite calibration; activations not quantized",
            _config=compose_config(INT4_G128, None, {"method": "awq_lite", "alpha_step": 0.1}),
            base_builtin="INT4_AWQ_CFG",
            extra=True,
        ),
        QuantPair(
            name="wint8_aint8_sq",
            weight="int8",
            activation="int8",
            description="INT8 per-channel weights, INT8 per-tensor activations, SmoothQuant calibration",
            _config=compose_config(INT8_PER_CHANNEL, INT8_PER_TENSOR, "smoothquant"),
            base_builtin="INT8_SMOOTHQUANT_CFG",
            extra=True,
        ),
    ]


def _mx(num_bits: Any) -> dict[str, Any]:
    return {"num_bits": num_bits, "block_sizes": {-1: 32, "type": "dynamic", "scale_bits": (8, 0)}}


def _mx_pairs() -> list[QuantPair]:
    """OCP Microscaling formats: 32-element blocks with power-of-two (E8M0) scales, weights and activations."""
    specs = (
        ("wmxfp8_amxfp8", "mxfp8", (4, 3), "MXFP8_DEFAULT_CFG", "FP8 E4M3"),
        ("wmxfp6_amxfp6", "mxfp6", (3, 2), "MXFP6_DEFAULT_CFG", "FP6 E3M2"),
        ("wmxfp4_amxfp4", "mxfp4", (2, 1), "MXFP4_DEFAULT_CFG", "FP4 E2M1"),
        ("wmxint8_amxint8", "mxint8", 8, "MXINT8_DEFAULT_CFG", "INT8"),
    )
    return [
        QuantPair(
            name=name,
            weight=dtype,
            activation=dtype,
            description=f"MX {text} weights and activations, 32-element blocks, E8M0 scales",
            _config=compose_config(_mx(bits), _mx(bits), None),
            base_builtin=builtin,
            needs_gpu=True,
            extra=True,
        )
        for name, dtype, bits, builtin, text in specs
    ]


def _build_pairs() -> dict[str, QuantPair]:
    pairs = {p.name: p for p in (_core_pair(w, a) for w in WEIGHT_DTYPES for a in ACT_DTYPES)}
    pairs.update({p.name: p for p in _extra_pairs()})
    pairs.update({p.name: p for p in _mx_pairs()})
    return pairs


QUANT_PAIRS: dict[str, QuantPair] = _build_pairs()
CORE_PAIR_NAMES: tuple[str, ...] = tuple(f"w{w}_a{a}" for w in WEIGHT_DTYPES for a in ACT_DTYPES)


# --- granularity overlays ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class Granularity:
    """A named overlay onto a pair's weight/input quantizer attributes."""

    name: str
    description: str
    _overrides: dict[str, dict[str, Any]] = field(repr=False)

    def overrides(self) -> dict[str, dict[str, Any]]:
        return copy.deepcopy(self._overrides)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "description": self.description, "overrides": self.overrides()}


_PER_TOKEN_DYNAMIC = {"type": "dynamic", "block_sizes": {-1: None}}

GRANULARITIES: dict[str, Granularity] = {
    g.name: g
    for g in (
        Granularity("default", "the pair's own granularity (no overlay)", {}),
        Granularity("w_per_tensor", "one weight scale per tensor", {WEIGHT_KEY: {"axis": None}}),
        Granularity("w_per_out_channel", "one weight scale per output channel (rows)", {WEIGHT_KEY: {"axis": 0}}),
        Granularity("w_per_in_channel", "one weight scale per input channel (columns)", {WEIGHT_KEY: {"axis": 1}}),
        Granularity("w_group64", "weight scales per group of 64 along the input dim", {WEIGHT_KEY: {"block_sizes": {-1: 64}}}),
        Granularity(
            "w_group128", "weight scales per group of 128 along the input dim", {WEIGHT_KEY: {"block_sizes": {-1: 128}}}
        ),
        Granularity("a_per_token_dynamic", "activation scale per token, computed at run time", {INPUT_KEY: _PER_TOKEN_DYNAMIC}),
        Granularity(
            "a_per_tensor_static", "one calibrated activation scale per tensor", {INPUT_KEY: {"type": "static", "axis": None}}
        ),
        Granularity(
            "recipe_match_channel_token",
            "per-channel weights with per-token dynamic activations (llm-compressor's W8A8 recipe shape)",
            {WEIGHT_KEY: {"axis": 0}, INPUT_KEY: _PER_TOKEN_DYNAMIC},
        ),
    )
}


# --- pair name aliases ------------------------------------------------------------------------------------
# What people type for a format, from the tools they already know, mapped to the catalogue pair that realises it
# (docs/matrix-format.md has the table). Only spellings with one meaning in their own tool are aliases: `w4a8`
# (INT4 x FP8 in ModelOpt, INT4 x INT8 elsewhere) is not, and gets suggestions instead. Lookups ignore case and
# treat `-` as `_`. A ModelOpt built-in name (`INT4_AWQ_CFG`, with or without `_CFG`) is an alias of the pair
# that equals it byte for byte.
_PAIR_ALIASES_BY_SOURCE: dict[str, dict[str, str]] = {
    # `quant_algo` of ModelOpt's exported hf_quant_config.json, and hf_ptq.py's --qformat choices
    "ModelOpt export / hf_ptq --qformat": {
        "fp8": "wfp8_afp8",
        "int8": "wint8_aint8",
        "int8_sq": "wint8_aint8_sq",
        "int8_wo": "wint8_afp16",
        "int4_awq": "wint4_afp16_awq",
        "nvfp4": "wfp4_afp4",
        "w4a16_nvfp4": "wfp4_afp16",
        "w4a8_nvfp4_fp8": "wfp4_afp8",
        "mxfp8": "wmxfp8_amxfp8",
        "mxfp4": "wmxfp4_amxfp4",
    },
    # llm-compressor / compressed-tensors preset schemes (the scale granularity of those schemes is per-channel
    # weights with per-token dynamic activations: pair them with the `recipe_match_channel_token` overlay)
    "llm-compressor scheme": {
        "w8a16": "wint8_afp16",
        "w4a16": "wint4_afp16",
        "w8a8": "wint8_aint8",
        "fp8_dynamic": "wfp8_afp8",
        "nvfp4a16": "wfp4_afp16",
    },
    "common shorthand": {
        "int4": "wint4_afp16",
        "int4_wo": "wint4_afp16",
        "fp8_wo": "wfp8_afp16",
        "w8a8_fp8": "wfp8_afp8",
        "mxfp6": "wmxfp6_amxfp6",
        "mxint8": "wmxint8_amxint8",
    },
}


def _normalize_name(name: str) -> str:
    return name.strip().lower().replace("-", "_")


def _build_aliases() -> dict[str, tuple[str, str]]:
    """alias (normalized) -> (catalogue pair, where the spelling comes from)."""
    out: dict[str, tuple[str, str]] = {}
    for source, table in _PAIR_ALIASES_BY_SOURCE.items():
        for alias, pair in table.items():
            assert pair in QUANT_PAIRS, (alias, pair)
            out[_normalize_name(alias)] = (pair, source)
    for p in QUANT_PAIRS.values():
        if p.base_builtin:
            builtin = _normalize_name(p.base_builtin)
            out.setdefault(builtin, (p.name, "ModelOpt built-in config"))
            out.setdefault(builtin.removesuffix("_cfg"), (p.name, "ModelOpt built-in config"))
    return out


PAIR_ALIASES: dict[str, tuple[str, str]] = _build_aliases()


def resolve_pair_name(name: str) -> str | None:
    """The catalogue pair a name means (its own name in any case, or an alias), else None."""
    key = _normalize_name(name)
    if key in QUANT_PAIRS:
        return key
    hit = PAIR_ALIASES.get(key)
    return hit[0] if hit else None


def suggest_pair_names(name: str, n: int = 3) -> list[str]:
    """The nearest catalogue pairs to an unknown name (difflib over pair names and aliases), nearest first."""
    import difflib

    key = _normalize_name(name)
    spellings = {**{p: p for p in QUANT_PAIRS}, **{a: pair for a, (pair, _src) in PAIR_ALIASES.items()}}
    found: list[str] = []
    for match in difflib.get_close_matches(key, list(spellings), n=3 * n, cutoff=0.5):
        pair = spellings[match]
        if pair not in found:
            found.append(pair)
    return found[:n]


def unknown_pair_message(name: str) -> str:
    """'unknown quant pair 'x'; did you mean a, b? (...)': one line for validation errors."""
    near = suggest_pair_names(name)
    hint = f"; did you mean {', '.join(near)}?" if near else ""
    return f"unknown quant pair {name!r}{hint} (`quantsweep catalogue` lists pairs, docs/matrix-format.md their aliases)"
