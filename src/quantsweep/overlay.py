"""The granularity overlay engine: pair config (+) overlay -> effective ModelOpt config.

Rules (from the seed system's `apply_quant_cfg_overrides`, adapted to ModelOpt 0.47's list form):

1. The base is deep-copied and never mutated; an empty overlay returns an equal copy.
2. Overlay keys are limited to ``*weight_quantizer``, ``*input_quantizer`` and ``default`` (the ``"*"`` entry);
   each value must be a mapping of quantizer attributes.
3. ``axis`` and ``block_sizes`` are mutually exclusive (ModelOpt asserts it): an overlay setting both is an error;
   an overlay setting one removes the other from the base.
4. An overlay's ``block_sizes`` is *merged* into the base's, so the special keys ``type``, ``scale_bits``,
   ``scale_block_sizes`` (and ``four_over_six``) survive; other attributes are replaced key by key.
5. Block-size keys coming from YAML/JSON as strings (``"-1"``) become integers; lists that ModelOpt expects as
   tuples (``num_bits: [4, 3]``) become tuples.
6. A base entry whose ``cfg`` is a list (a SequentialQuantizer) gets the overlay on each element.
7. An overlay on a quantizer the pair disables does nothing in ModelOpt; it is reported as a warning.

The same inputs always serialise to byte-identical JSON (`canonical_json`).
"""

from __future__ import annotations

import copy
import json
from collections.abc import Mapping
from typing import Any

from .catalogue import INPUT_KEY, WEIGHT_KEY

ALLOWED_KEYS = (WEIGHT_KEY, INPUT_KEY, "default")
BLOCK_SPECIAL_KEYS = frozenset({"type", "scale_bits", "scale_block_sizes", "four_over_six"})
_TUPLE_ATTRS = ("num_bits", "scale_bits")


class OverlayError(ValueError):
    """An overlay that cannot be applied; the message names the offending key."""


def normalize_block_sizes(block_sizes: Any, where: str = "block_sizes") -> dict[Any, Any] | None:
    """Integer axis keys, special keys kept; `scale_block_sizes` normalised recursively."""
    if block_sizes is None:
        return None
    if not isinstance(block_sizes, Mapping):
        raise OverlayError(f"{where}: must be a mapping of axis -> block size, got {type(block_sizes).__name__}")
    out: dict[Any, Any] = {}
    for key, value in block_sizes.items():
        if isinstance(key, str) and key in BLOCK_SPECIAL_KEYS:
            norm_key: Any = key
        elif isinstance(key, bool):
            raise OverlayError(f"{where}: invalid block-size key {key!r}")
        elif isinstance(key, int):
            norm_key = key
        else:
            try:
                norm_key = int(str(key).strip())
            except ValueError as exc:
                raise OverlayError(
                    f"{where}: unknown block-size key {key!r} (expected an integer axis or one of "
                    f"{sorted(BLOCK_SPECIAL_KEYS)})"
                ) from exc
        _check_block_value(norm_key, value, where)
        if norm_key == "scale_block_sizes":
            if not isinstance(value, Mapping):
                raise OverlayError(f"{where}.scale_block_sizes: must be a mapping")
            value = normalize_block_sizes(value, f"{where}.scale_block_sizes")
        elif norm_key == "scale_bits" and isinstance(value, list):
            value = tuple(value)
        out[norm_key] = value
    return out


# The fields of ModelOpt 0.47's QuantizerAttributeConfig (tests/test_catalogue_modelopt.py keeps this in sync):
# an unknown name is a typo that ModelOpt would only reject at run time.
QUANTIZER_ATTRIBUTES = frozenset(
    {
        "axis", "backend", "backend_extra_args", "bias", "block_sizes", "calibrator", "constant_amax",
        "effective_bits", "enable", "fake_quant", "learn_amax", "narrow_range", "num_bits", "pass_through_bwd",
        "rotate", "trt_high_precision_dtype", "type", "unsigned", "use_constant_amax",
    }
)
QUANTIZER_TYPES = ("static", "dynamic")


def _check_block_value(key: Any, value: Any, where: str) -> None:
    if isinstance(key, int) and value is not None and (isinstance(value, bool) or not isinstance(value, int) or value <= 0):
        raise OverlayError(f"{where}: block size for axis {key} must be a positive integer or null, got {value!r}")
    if key == "type" and value not in QUANTIZER_TYPES:
        raise OverlayError(f"{where}.type: must be one of {QUANTIZER_TYPES}, got {value!r}")


def normalize_attributes(attrs: Mapping[str, Any], where: str = "") -> dict[str, Any]:
    """Normalise one quantizer attribute mapping (keys of block_sizes, tuple-valued bit widths)."""
    if not isinstance(attrs, Mapping):
        raise OverlayError(f"{where or 'overlay'}: quantizer attributes must be a mapping, got {type(attrs).__name__}")
    out: dict[str, Any] = {}
    for key, value in attrs.items():
        if not isinstance(key, str):
            raise OverlayError(f"{where}: attribute names must be strings, got {key!r}")
        if key not in QUANTIZER_ATTRIBUTES:
            raise OverlayError(
                f"{where + '.' if where else ''}{key}: unknown quantizer attribute (known: "
                f"{', '.join(sorted(QUANTIZER_ATTRIBUTES))})"
            )
        if key == "type" and value not in QUANTIZER_TYPES:
            raise OverlayError(f"{where + '.' if where else ''}type: must be one of {QUANTIZER_TYPES}, got {value!r}")
        if key == "axis" and value is not None and (isinstance(value, bool) or not isinstance(value, int)):
            raise OverlayError(f"{where + '.' if where else ''}axis: must be an integer or null, got {value!r}")
        if key == "block_sizes":
            value = normalize_block_sizes(value, f"{where}.block_sizes" if where else "block_sizes")
        elif key in _TUPLE_ATTRS and isinstance(value, list):
            value = tuple(value)
        else:
            value = copy.deepcopy(value)
        out[key] = value
    return out


def normalize_overlay(overlay: Mapping[str, Any] | None) -> dict[str, dict[str, Any]]:
    """Validate keys and normalise values of an overlay; raises OverlayError naming the bad key."""
    if not overlay:
        return {}
    if not isinstance(overlay, Mapping):
        raise OverlayError(f"overlay must be a mapping, got {type(overlay).__name__}")
    out: dict[str, dict[str, Any]] = {}
    for key, attrs in overlay.items():
        if key not in ALLOWED_KEYS:
            raise OverlayError(f"Unsupported quant_cfg override key {key!r}; allowed: {', '.join(ALLOWED_KEYS)}")
        if not isinstance(attrs, Mapping):
            raise OverlayError(f"{key}: override must be a mapping of quantizer attributes, got {type(attrs).__name__}")
        if "axis" in attrs and "block_sizes" in attrs:
            raise OverlayError(f"{key}: an override cannot set both `axis` and `block_sizes` (they are exclusive)")
        out[key] = normalize_attributes(attrs, key)
    return out


def _merge_attributes(base: Mapping[str, Any], override: Mapping[str, Any], where: str) -> dict[str, Any]:
    merged = normalize_attributes(base, where)
    if "axis" in override:
        merged.pop("block_sizes", None)
    if "block_sizes" in override:
        merged.pop("axis", None)
    for key, value in override.items():
        if key == "block_sizes" and isinstance(merged.get("block_sizes"), dict) and value is not None:
            merged["block_sizes"] = {**merged["block_sizes"], **copy.deepcopy(value)}
        else:
            merged[key] = copy.deepcopy(value)
    if merged.get("axis") is not None and merged.get("block_sizes") is not None:
        raise OverlayError(f"{where}: `axis` and `block_sizes` both set after the overlay")
    return merged


def _entry_key(entry: Mapping[str, Any]) -> str | None:
    name = entry.get("quantizer_name")
    if name in (WEIGHT_KEY, INPUT_KEY) and "parent_class" not in entry:
        return name
    if name == "*" and "parent_class" not in entry:
        return "default"
    return None


def _is_enabled(entry: Mapping[str, Any]) -> bool:
    return entry.get("enable", True) is not False and entry.get("cfg") is not None


def apply_overlay(base_config: Mapping[str, Any], overlay: Mapping[str, Any] | None) -> tuple[dict[str, Any], list[str]]:
    """Return (effective config, warnings). The base is never mutated."""
    if "quant_cfg" not in base_config or not isinstance(base_config["quant_cfg"], list):
        raise OverlayError("base config has no `quant_cfg` list (ModelOpt 0.47 form expected)")
    norm = normalize_overlay(overlay)
    config = copy.deepcopy(dict(base_config))
    warnings: list[str] = []
    for key, attrs in norm.items():
        entries = [e for e in config["quant_cfg"] if _entry_key(e) == key]
        last = entries[-1] if entries else None
        if last is None or not _is_enabled(last):
            warnings.append(
                f"overlay on {key} does nothing: the pair disables that quantizer "
                f"({', '.join(sorted(attrs)) or 'no attributes'} ignored)"
            )
            continue
        for entry in entries:
            if not _is_enabled(entry):
                continue
            cfg = entry["cfg"]
            if isinstance(cfg, list):
                if not cfg:
                    raise OverlayError(f"{key}: base cfg is an empty list")
                entry["cfg"] = [_merge_attributes(c, attrs, key) for c in cfg]
            else:
                entry["cfg"] = _merge_attributes(cfg, attrs, key)
    return config, warnings


def _jsonable(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    return value


def to_jsonable(config: Mapping[str, Any]) -> Any:
    """JSON-ready copy: tuples become lists, integer keys become strings (ModelOpt accepts both back)."""
    return _jsonable(config)


def canonical_json(config: Mapping[str, Any]) -> str:
    """Deterministic serialisation (sorted keys, no whitespace variance) used for ids and byte-identity tests."""
    return json.dumps(to_jsonable(config), sort_keys=True, separators=(",", ":"))


def from_jsonable(config: Mapping[str, Any]) -> dict[str, Any]:
    """Inverse of `to_jsonable` for a quantization config read back from disk."""
    out = copy.deepcopy(dict(config))
    for entry in out.get("quant_cfg", []):
        cfg = entry.get("cfg")
        if isinstance(cfg, list):
            entry["cfg"] = [normalize_attributes(c) for c in cfg]
        elif isinstance(cfg, Mapping):
            entry["cfg"] = normalize_attributes(cfg)
    return out
