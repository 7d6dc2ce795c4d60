"""Naming rules: which tensors are weight matrices, and their layer, expert and projection.

A rule set has three identification patterns (layer index, routed-expert index, shared expert), a list of
`ignore` patterns (tensors that are listed in the inventory but are not weight matrices: biases, quantization
scales) and an ordered list of matrix rules. For each float tensor with at least two dimensions the first rule
whose `pattern` is found in the name (`re.search`) and whose `model_types` (if any) contains the model's
`config.json` `model_type` decides:

- `proj`: the canonical projection name (for a split rule: the name used when the split falls back);
- `role`: ``linear`` (simulated with every format), ``embedding``, ``lm_head`` or ``router`` (statistics only:
  ModelOpt's configs leave them unquantized);
- `layout`: ``out_in`` (as `nn.Linear` stores it) or ``in_out`` (transposed on reading, so every matrix is
  analysed as out x in and groups run along the input dimension);
- `split`: a fused tensor cut into parts along ``rows`` or ``cols`` of the (out, in) matrix, with `sizes` as
  integers, as products of `config.json` keys (``"num_key_value_heads*head_dim"``) or omitted for equal parts,
  contiguous or `interleaved` (part i = every n-th row starting at i).

A 2-D tensor is one matrix; a 3-D tensor is an expert bank (experts along dim 0). Rules come from
`default_rules()` or from a YAML/JSON file (`load_rules`), whose rules are tried before the defaults unless the
file says ``extends: none``. A split that does not add up raises `SplitError`; the caller decides (strict: an
input error; non-strict: a warning and the unsplit matrix under the rule's `proj`).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from ..errors import InputError

ROLES = ("linear", "embedding", "lm_head", "router")
BLOCK_LAYERS = 4  # "block of 4 layers" in the summaries


class SplitError(ValueError):
    """A fused tensor whose split does not add up; the message says why."""


# --- the rule file schema (pydantic, unknown keys rejected) ------------------------------------------------
class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


def _backtracks(pattern: str) -> bool:
    """Whether a repetition contains another repetition or an alternation — `(a+)+`, `((a+))+`, `(a|aa)+`,
    `(.*a){12}`: the shapes that make Python's backtracking matcher (which has no timeout) take exponential time on
    a near-miss tensor name. Read from the parsed pattern, so groups and nesting cannot hide them."""
    from re import _constants as c  # type: ignore[attr-defined]
    from re import _parser  # type: ignore[attr-defined]

    repeats = (c.MAX_REPEAT, c.MIN_REPEAT, getattr(c, "POSSESSIVE_REPEAT", None))

    def walk(items: Any, inside_repeat: bool) -> bool:
        for op, av in items:
            if op in repeats:
                _lo, hi, sub = av
                if hi != 1 and (inside_repeat or walk(sub, True)):
                    return True
            elif op is c.BRANCH:
                if inside_repeat or any(walk(b, inside_repeat) for b in av[1]):
                    return True
            elif op is c.SUBPATTERN:
                if walk(av[-1], inside_repeat):
                    return True
            elif op in (c.ASSERT, c.ASSERT_NOT):
                if walk(av[1], inside_repeat):
                    return True
        return False

    return walk(_parser.parse(pattern), False)


def _check_regex(v: str | None) -> str | None:
    if v is None:
        return v
    try:
        re.compile(v)
    except re.error as exc:
        raise ValueError(f"invalid regular expression {v!r}: {exc}") from exc
    if _backtracks(v):
        raise ValueError(f"regular expression {v!r} repeats a repeated group (like `(a+)+`), which can take "
                         "exponential time to match; rewrite it without the nested repetition")
    return v


class SplitModel(_Strict):
    axis: Literal["rows", "cols"] = "rows"
    parts: list[str] = Field(min_length=2)
    sizes: list[int | str] | None = Field(default=None, description="null = equal parts")
    interleaved: bool = False

    @field_validator("sizes")
    @classmethod
    def _sizes(cls, v: list[int | str] | None) -> list[int | str] | None:
        if v is None:
            return v
        for s in v:
            if isinstance(s, bool) or (isinstance(s, int) and s <= 0):
                raise ValueError(f"sizes must be positive integers or config expressions, got {s!r}")
            if isinstance(s, str) and not re.fullmatch(r"\s*[A-Za-z0-9_]+(\s*\*\s*[A-Za-z0-9_]+)*\s*", s):
                raise ValueError(f"size expression {s!r} must be a product of integers and config keys (a*b)")
        return v


class RuleModel(_Strict):
    name: str = Field(min_length=1)
    pattern: str
    proj: str = Field(min_length=1)
    role: Literal["linear", "embedding", "lm_head", "router"] = "linear"
    layout: Literal["out_in", "in_out"] = "out_in"
    model_types: list[str] | None = None
    split: SplitModel | None = None

    @field_validator("pattern")
    @classmethod
    def _pattern(cls, v: str) -> str:
        return _check_regex(v) or v


class RulesFileModel(_Strict):
    version: Literal[1] = 1
    extends: Literal["default", "none"] = "default"
    layer_pattern: str | None = None
    expert_pattern: str | None = None
    shared_expert_pattern: str | None = None
    ignore: list[str] = Field(default_factory=list)
    rules: list[RuleModel] = Field(default_factory=list)

    @field_validator("layer_pattern", "expert_pattern", "shared_expert_pattern")
    @classmethod
    def _patterns(cls, v: str | None) -> str | None:
        return _check_regex(v)

    @field_validator("ignore")
    @classmethod
    def _ignores(cls, v: list[str]) -> list[str]:
        for p in v:
            _check_regex(p)
        return v


# --- compiled rules -----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Split:
    axis: str  # rows | cols
    parts: tuple[str, ...]
    sizes: tuple[int | str, ...] | None
    interleaved: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {
            "axis": self.axis,
            "parts": list(self.parts),
            "sizes": list(self.sizes) if self.sizes is not None else None,
            "interleaved": self.interleaved,
        }


@dataclass(frozen=True)
class Rule:
    name: str
    pattern: str
    proj: str
    role: str = "linear"
    layout: str = "out_in"
    model_types: tuple[str, ...] | None = None
    split: Split | None = None
    _compiled: re.Pattern[str] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_compiled", re.compile(self.pattern))

    def matches(self, name: str, model_type: str | None) -> bool:
        if self.model_types is not None and model_type not in self.model_types:
            return False
        return self._compiled.search(name) is not None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name, "pattern": self.pattern, "proj": self.proj, "role": self.role}
        if self.layout != "out_in":
            out["layout"] = self.layout
        if self.model_types is not None:
            out["model_types"] = list(self.model_types)
        if self.split is not None:
            out["split"] = self.split.to_dict()
        return out


@dataclass(frozen=True)
class NamingRules:
    layer_pattern: str
    expert_pattern: str
    shared_expert_pattern: str
    ignore: tuple[str, ...]
    rules: tuple[Rule, ...]
    source: str = "default"

    def __post_init__(self) -> None:
        object.__setattr__(self, "_layer", re.compile(self.layer_pattern))
        object.__setattr__(self, "_expert", re.compile(self.expert_pattern))
        object.__setattr__(self, "_shared", re.compile(self.shared_expert_pattern))
        object.__setattr__(self, "_ignore", tuple(re.compile(p) for p in self.ignore))

    def match(self, name: str, model_type: str | None = None) -> Rule | None:
        for rule in self.rules:
            if rule.matches(name, model_type):
                return rule
        return None

    def ignored(self, name: str) -> str | None:
        for pat in self._ignore:  # type: ignore[attr-defined]
            if pat.search(name):
                return pat.pattern
        return None

    def layer_of(self, name: str) -> int | None:
        m = self._layer.search(name)  # type: ignore[attr-defined]
        return int(m.group(1)) if m else None

    def expert_of(self, name: str) -> tuple[int | None, str]:
        """(expert index, kind) of a 2-D tensor: kind is dense, routed or shared."""
        if self._shared.search(name):  # type: ignore[attr-defined]
            m = self._expert.search(name)  # type: ignore[attr-defined]
            return (int(m.group(1)) if m else None), "shared"
        m = self._expert.search(name)  # type: ignore[attr-defined]
        if m:
            return int(m.group(1)), "routed"
        return None, "dense"

    def is_shared(self, name: str) -> bool:
        return self._shared.search(name) is not None  # type: ignore[attr-defined]

    def to_dict(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "layer_pattern": self.layer_pattern,
            "expert_pattern": self.expert_pattern,
            "shared_expert_pattern": self.shared_expert_pattern,
            "ignore": list(self.ignore),
            "rules": [r.to_dict() for r in self.rules],
        }


# --- defaults: Llama / Qwen / Mixtral / Qwen-MoE / DeepSeek (+ GPT-OSS, Llama 4 stacked experts) -----------
def _tail(alts: str) -> str:
    """A pattern for a last-but-`.weight` name component: ``(?:^|\\.)(?:alts)(?:\\.weight)?$``."""
    return rf"(?:^|\.)(?:{alts})(?:\.weight)?$"


DEFAULT_LAYER_PATTERN = r"(?:^|\.)(?:layers|layer|h|blocks|block)\.(\d+)(?:\.|$)"
DEFAULT_EXPERT_PATTERN = r"(?:^|\.)experts\.(\d+)(?:\.|$)"
DEFAULT_SHARED_EXPERT_PATTERN = r"(?:^|\.)shared_experts?(?:\.|$)"
DEFAULT_IGNORE = (
    r"(?:^|[._])bias$",  # biases (also GPT-OSS gate_up_proj_bias, 2-D)
    r"(?:_scale_inv|_scales?|_zeros?|_zero_point|_amax)$",  # quantization scales of pre-quantized checkpoints
    r"(?:^|\.)(?:weight|input)_(?:scale|global_scale)$",
    r"(?:^|\.)rotary_emb\.inv_freq$",
)


def _default_rule_list() -> list[Rule]:
    gate_up = Split("rows", ("gate_proj", "up_proj"), None)
    return [
        # transformers >= 5 stacked expert banks that are stored in x out (bmm / x @ W): transposed on reading.
        Rule(
            "gpt_oss_gate_up",
            r"(?:^|\.)experts\.gate_up_proj$",
            "gate_up_proj",
            layout="in_out",
            model_types=("gpt_oss",),
            split=Split("rows", ("gate_proj", "up_proj"), None, interleaved=True),
        ),
        Rule("gpt_oss_down", r"(?:^|\.)experts\.down_proj$", "down_proj", layout="in_out", model_types=("gpt_oss",)),
        Rule(
            "llama4_gate_up",
            r"(?:^|\.)experts\.gate_up_proj$",
            "gate_up_proj",
            layout="in_out",
            model_types=("llama4", "llama4_text"),
            split=gate_up,
        ),
        Rule(
            "llama4_down",
            r"(?:^|\.)experts\.down_proj$",
            "down_proj",
            layout="in_out",
            model_types=("llama4", "llama4_text"),
        ),
        # fused tensors: gate|up (transformers-5 MoE banks E x 2I x H, Phi-3 MLP) and q|k|v (Phi-3)
        Rule("fused_gate_up", _tail("gate_up_proj|w13"), "gate_up_proj", split=gate_up),
        Rule(
            "fused_qkv",
            _tail("qkv_proj"),
            "qkv_proj",
            split=Split(
                "rows",
                ("q_proj", "k_proj", "v_proj"),
                ("num_attention_heads*head_dim", "num_key_value_heads*head_dim", "num_key_value_heads*head_dim"),
            ),
        ),
        # attention (Llama/Qwen; DeepSeek MLA low-rank projections)
        Rule("q_proj", _tail("q_proj|wq"), "q_proj"),
        Rule("k_proj", _tail("k_proj|wk"), "k_proj"),
        Rule("v_proj", _tail("v_proj|wv"), "v_proj"),
        Rule("o_proj", _tail("o_proj|wo|out_proj"), "o_proj"),
        Rule("q_a_proj", _tail("q_a_proj"), "q_a_proj"),
        Rule("q_b_proj", _tail("q_b_proj"), "q_b_proj"),
        Rule("kv_a_proj", _tail("kv_a_proj_with_mqa|kv_a_proj"), "kv_a_proj_with_mqa"),
        Rule("kv_b_proj", _tail("kv_b_proj"), "kv_b_proj"),
        # MLP and experts (Mixtral's w1/w2/w3 = gate/down/up)
        Rule("gate_proj", _tail("gate_proj|w1"), "gate_proj"),
        Rule("up_proj", _tail("up_proj|w3"), "up_proj"),
        Rule("down_proj", _tail("down_proj|w2"), "down_proj"),
        # statistics only
        Rule(
            "router",
            r"(?:^|\.)(?:mlp|block_sparse_moe|moe)\.gate(?:\.weight)?$|(?:^|\.)router(?:\.weight)?$",
            "router",
            role="router",
        ),
        Rule("shared_expert_gate", _tail("shared_expert_gate"), "shared_expert_gate", role="router"),
        Rule(
            "embedding",
            _tail("embed_tokens|wte|tok_embeddings|word_embeddings|embed_in"),
            "embed_tokens",
            role="embedding",
        ),
        Rule("lm_head", _tail("lm_head|embed_out") + r"|^output\.weight$", "lm_head", role="lm_head"),
    ]


def default_rules() -> NamingRules:
    return NamingRules(
        layer_pattern=DEFAULT_LAYER_PATTERN,
        expert_pattern=DEFAULT_EXPERT_PATTERN,
        shared_expert_pattern=DEFAULT_SHARED_EXPERT_PATTERN,
        ignore=DEFAULT_IGNORE,
        rules=tuple(_default_rule_list()),
    )


def _loc(loc: Sequence[Any]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def rules_from_mapping(data: Mapping[str, Any], source: str = "<rules>") -> NamingRules:
    """Validate a rules document; errors become one InputError with a `source: field: message` line each."""
    if not isinstance(data, Mapping):
        raise InputError(f"{source}: a rules file must be a mapping (see docs/weights.md)")
    try:
        model = RulesFileModel.model_validate(dict(data))
    except ValidationError as exc:
        lines = [f"{source}: {_loc(e['loc']) or '(top level)'}: {e['msg']}" for e in exc.errors()]
        raise InputError("\n".join(lines)) from None
    base = default_rules()
    own = tuple(
        Rule(
            name=r.name,
            pattern=r.pattern,
            proj=r.proj,
            role=r.role,
            layout=r.layout,
            model_types=tuple(r.model_types) if r.model_types is not None else None,
            split=Split(
                r.split.axis, tuple(r.split.parts), tuple(r.split.sizes) if r.split.sizes else None, r.split.interleaved
            )
            if r.split is not None
            else None,
        )
        for r in model.rules
    )
    for i, r in enumerate(model.rules):
        if r.split is not None and r.split.sizes is not None and len(r.split.sizes) != len(r.split.parts):
            raise InputError(f"{source}: rules[{i}].split: {len(r.split.parts)} parts but {len(r.split.sizes)} sizes")
        if r.split is not None and r.split.interleaved and r.split.sizes is not None and len(set(r.split.sizes)) > 1:
            raise InputError(f"{source}: rules[{i}].split: an interleaved split needs equal sizes")
    extends = model.extends == "default"
    return NamingRules(
        layer_pattern=model.layer_pattern or base.layer_pattern,
        expert_pattern=model.expert_pattern or base.expert_pattern,
        shared_expert_pattern=model.shared_expert_pattern or base.shared_expert_pattern,
        ignore=tuple(model.ignore) + (base.ignore if extends else ()),
        rules=own + (base.rules if extends else ()),
        source=source,
    )


def load_rules(path: str | Path | None) -> NamingRules:
    """The default rules, or those of a YAML/JSON file (`--rules FILE`)."""
    if path is None:
        return default_rules()
    from ..inputs.documents import SMALL, DocumentError, read_structured

    p = Path(path)
    try:
        data = read_structured(p, SMALL, "naming rules file")
    except DocumentError as exc:
        raise InputError(f"--rules: {exc}") from None
    return rules_from_mapping(data or {}, str(p))


# --- split arithmetic ---------------------------------------------------------------------------------------
def _config_value(key: str, config: Mapping[str, Any] | None) -> int:
    if key.isdigit():
        return int(key)
    scopes = [config or {}]
    if isinstance((config or {}).get("text_config"), Mapping):
        scopes.append(config["text_config"])  # type: ignore[index]
    for scope in reversed(scopes):  # a text_config (multimodal) wins over the top level
        value = scope.get(key)
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    if key == "head_dim":  # absent from older configs: hidden_size / num_attention_heads
        hidden, heads = _config_value("hidden_size", config), _config_value("num_attention_heads", config)
        if heads and hidden % heads == 0:
            return hidden // heads
    if config is None:
        raise SplitError(f"size {key!r} needs config.json, which this model source does not have")
    raise SplitError(f"size {key!r}: config.json has no integer {key!r}")


def resolve_size(size: int | str, config: Mapping[str, Any] | None) -> int:
    if isinstance(size, int):
        return size
    value = 1
    for token in size.split("*"):
        value *= _config_value(token.strip(), config)
    return value


@dataclass(frozen=True)
class Part:
    """One part of a split: rows/cols `start:stop:step` of the (out, in) matrix."""

    proj: str
    axis: int  # 0 = rows, 1 = cols
    start: int
    stop: int
    step: int = 1

    @property
    def length(self) -> int:
        return len(range(self.start, self.stop, self.step))

    def describe(self) -> str:
        axis = "rows" if self.axis == 0 else "cols"
        return f"{axis}[{self.start}:{self.stop}{':' + str(self.step) if self.step != 1 else ''}]"


def plan_split(split: Split, rows: int, cols: int, config: Mapping[str, Any] | None = None) -> list[Part]:
    """The parts of a fused (rows x cols) matrix; raises SplitError when they do not add up."""
    axis = 0 if split.axis == "rows" else 1
    length = rows if axis == 0 else cols
    n = len(split.parts)
    if split.sizes is None:
        if length % n:
            raise SplitError(f"{split.axis} has length {length}, not divisible into {n} equal parts")
        sizes = [length // n] * n
    else:
        if len(split.sizes) != n:
            raise SplitError(f"{n} parts but {len(split.sizes)} sizes")
        sizes = [resolve_size(s, config) for s in split.sizes]
        if any(s <= 0 for s in sizes):
            raise SplitError(f"sizes {sizes} must be positive")
        if sum(sizes) != length:
            raise SplitError(f"sizes {sizes} sum to {sum(sizes)} but {split.axis} has length {length}")
    if split.interleaved:
        if len(set(sizes)) > 1:
            raise SplitError(f"an interleaved split needs equal sizes, got {sizes}")
        return [Part(p, axis, i, length, n) for i, p in enumerate(split.parts)]
    parts, start = [], 0
    for p, s in zip(split.parts, sizes, strict=True):
        parts.append(Part(p, axis, start, start + s))
        start += s
    return parts
