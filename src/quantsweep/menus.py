"""Format menus (pure: no torch): a cell whose AutoQuantize search chooses per layer among several formats.

A matrix entry `{menu: [nvfp4, fp8]}` makes cells whose candidate list is the menu's formats (each with the cell's
granularity applied) plus 16 bits: one `mtq.auto_quantize(quantization_formats=[...])` call (naive engine), or a
solve from the scores a union call already computed for every member (shared engine, docs/shared-engine.md).

Why a module of its own: everything downstream of planning (rows, manifests, recipes, storage bits, export) used to
read one effective config per cell. A menu cell has one per member; the cell's `config` is then the *menu
document* built here — `{"menu": [{"label", "config"}, ...], "algorithm": <shared algorithm or null>}` — which
names every member's effective config and is never handed to ModelOpt as such (the engines take `Cell.formats`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from .quant_summary import calibration_method, describe_quantizer

MENU_KEY = "menu"


def is_menu_config(config: Mapping[str, Any]) -> bool:
    return isinstance(config, Mapping) and MENU_KEY in config and "quant_cfg" not in config


def common_algorithm(configs: Sequence[Mapping[str, Any]]) -> Any:
    """The calibration algorithm every member uses, or None when they differ (then no single `mtq.quantize` call
    reproduces the recipe: each layer was calibrated with its own format's algorithm)."""
    algos = [c.get("algorithm", "max") for c in configs]
    algos = ["max" if a is None else a for a in algos]
    return algos[0] if all(a == algos[0] for a in algos) else None


def menu_config(formats: Sequence[tuple[str, Mapping[str, Any]]]) -> dict[str, Any]:
    """The menu document a menu cell carries as its `config` (hashed into its id, written to its manifest)."""
    return {
        MENU_KEY: [{"label": label, "config": dict(cfg)} for label, cfg in formats],
        "algorithm": common_algorithm([cfg for _, cfg in formats]),
    }


def menu_members(config: Mapping[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """(label, config) of each member of a menu document; a plain config is its own only member ("")."""
    if not is_menu_config(config):
        return [("", dict(config))]
    return [(str(m["label"]), dict(m["config"])) for m in config[MENU_KEY]]


def describe_formats(configs: Sequence[Mapping[str, Any]], key: str) -> str:
    """One quantizer's description over the members, ' | ' between members (as dry-run and rows show it)."""
    return " | ".join(describe_quantizer(c, key) for c in configs)


def calibration_methods(configs: Sequence[Mapping[str, Any]]) -> str | None:
    """The members' calibration methods, distinct ones joined by '+' (None when none names one)."""
    methods: list[str] = []
    for c in configs:
        m = calibration_method(c)
        if m is not None and str(m) not in methods:
            methods.append(str(m))
    return "+".join(methods) or None


def member_of_format(label: str) -> str:
    """The pair name of a format label `pair/granularity` (what the per-layer lists of a row name)."""
    return label.split("/", 1)[0]


def menu_quantizer_summary(formats: Sequence[tuple[str, Mapping[str, Any]]]) -> dict[str, Any]:
    """A manifest's `effective_quantizer_summary` for a menu: each quantizer's description over the members, and
    each member's own summary (as a single-format manifest has it) under `menu`."""
    from .quant_summary import format_bits, quantizer_summary

    configs = [cfg for _, cfg in formats]
    members = [{"label": label, **quantizer_summary(cfg)} for label, cfg in formats]
    out: dict[str, Any] = {}
    for key in ("*weight_quantizer", "*input_quantizer"):
        out[key] = {"enabled": any(m[key]["enabled"] for m in members), "description": describe_formats(configs, key)}
    out["algorithm"] = common_algorithm(configs)
    out["format_bits"] = min(format_bits(c) for c in configs)
    out["menu"] = members
    return out


def menu_storage_bits(formats: Sequence[tuple[str, Mapping[str, Any]]], groups: Sequence[Any]
                      ) -> tuple[float | None, float | None]:
    """(bits per weight of a menu cell's recipe, of its lowest-bits member on every layer) counting scales: each
    group in the format it chose (`chosen` is a member's label, or "none": 16 bits)."""
    import math

    from .quant_summary import format_bits, storage_bits

    by_label = {label: cfg for label, cfg in formats}
    cheapest = min(by_label.values(), key=format_bits)
    total = chosen = everywhere = 0.0
    for g in groups:
        cfg = by_label.get(g.chosen)
        for shape in g.weight_shapes:
            n = math.prod(shape)
            total += n
            chosen += n * (storage_bits(cfg, tuple(shape)) if cfg is not None else 16.0)
            everywhere += n * storage_bits(cheapest, tuple(shape))
    if total == 0:
        return None, None
    return chosen / total, everywhere / total
