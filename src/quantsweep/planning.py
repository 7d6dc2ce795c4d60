"""Planning: expand a validated matrix into cells with stable ids, collision-free paths and effective configs.

Pure (no torch, no file writes). The cell id hashes the axis names together with the fully resolved
configuration (effective ModelOpt config, budget, model, data and AutoQuantize settings), so it is stable
across runs and changes whenever anything that could change the result changes; `run` uses it to resume.
`config_hash` hashes the configuration alone: two cells with equal `config_hash` compute the same thing under
different names, which the plan reports up front.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, field
from pathlib import PurePosixPath
from typing import Any

from .catalogue import GRANULARITIES, QUANT_PAIRS, compose_config
from .errors import MatrixError
from .overlay import apply_overlay, canonical_json, to_jsonable
from .quant_summary import (
    calibration_method,
    describe_quantizer,
    format_bits,
    modelopt_violations,
)
from .planning_feasibility import infeasible, minimum_effective_bits
from .export_support import Exportability, combined, config_exportability
from .menus import calibration_methods, describe_formats, menu_config
from .schema import MENU_JOIN, InlineGranularity, InlinePair, InlineSize, Matrix, MenuEntry, PairEntry

# A sweep larger than this is almost always a typo (a 31 KB matrix can name 270,000 cells); --max-cells overrides.
DEFAULT_MAX_CELLS = 10_000
PREFIX_CALIBRATION_METHODS = frozenset({"max", None})


@dataclass(frozen=True)
class ResolvedPair:
    name: str
    weight: str
    activation: str
    config: dict[str, Any]
    base_builtin: str | None
    experimental: bool
    needs_gpu: bool
    inline: bool
    description: str = ""
    members: tuple[ResolvedPair, ...] = ()  # a format menu's pairs (menus.py); () for a single pair

    @property
    def is_menu(self) -> bool:
        return bool(self.members)

    def to_dict(self) -> dict[str, Any]:
        return {
            **({"menu": [p.to_dict() for p in self.members]} if self.members else {}),
            "name": self.name,
            "weight": self.weight,
            "activation": self.activation,
            "base_builtin": self.base_builtin,
            "experimental": self.experimental,
            "needs_gpu": self.needs_gpu,
            "inline": self.inline,
            "description": self.description,
        }


@dataclass(frozen=True)
class ResolvedGranularity:
    name: str
    overrides: dict[str, Any]
    inline: bool
    description: str = ""


@dataclass(frozen=True)
class Cell:
    """One AutoQuantize run: a pair x granularity x dataset size (x budget)."""

    id: str
    config_hash: str
    search_hash: str
    pair: ResolvedPair
    granularity: ResolvedGranularity
    size_name: str
    samples: int
    budget: float
    path: PurePosixPath
    config: dict[str, Any]  # effective ModelOpt config (pair (+) overlay)
    format_bits: float
    calib_samples: int
    score_samples: int
    batch_size: int
    warnings: tuple[str, ...] = ()
    # the least effective bits any recipe of this cell reaches (planning_feasibility.py); None: shapes unknown
    min_effective_bits: float | None = None
    kv_cache: str = "none"  # axes.kv_cache: the KV-cache quantization evaluated with the recipe
    kv_in_path: bool = False  # the matrix names a KV-cache axis other than [none]: ids, paths and keys carry it
    # can `quantsweep export` write this format for this model (export_support.py); None: not computed
    export: Exportability | None = None
    # (label, effective config) of each format the search chooses among (besides 16 bits): one for a single pair,
    # the members for a menu (whose `config` is then the menu document of menus.py, never handed to ModelOpt)
    formats: tuple[tuple[str, dict[str, Any]], ...] = ()

    @property
    def is_menu(self) -> bool:
        return len(self.formats) > 1

    @property
    def format_configs(self) -> list[dict[str, Any]]:
        return [cfg for _, cfg in self.formats] or [self.config]

    @property
    def exportable(self) -> bool | None:
        return None if self.export is None else self.export.exportable

    @property
    def key(self) -> str:
        """Human-readable address used by `canary.cell` and in messages."""
        return f"{self.pair.name}/{self.granularity.name}/{self.size_name}" + (
            f"/kv-{self.kv_cache}" if self.kv_in_path else ""
        ) + (f"@{self.budget:.10g}" if self.path.name.startswith("bits-") else "")

    @property
    def calib_steps(self) -> int:
        return math.ceil(self.calib_samples / self.batch_size)

    @property
    def score_steps(self) -> int:
        return math.ceil(self.score_samples / self.batch_size)

    @property
    def calibration_method(self) -> str | None:
        return calibration_methods(self.format_configs) if self.is_menu else calibration_method(self.config)

    @property
    def flags(self) -> list[str]:
        out = []
        if self.pair.experimental:
            out.append("experimental")
        if self.pair.needs_gpu:
            out.append("needs_gpu")
        if self.budget < self.format_bits:
            out.append("budget_below_format_bits")
        elif self.min_effective_bits is not None and infeasible(self.budget, self.min_effective_bits):
            out.append("budget_infeasible")
        if any("rejected by ModelOpt" in w for w in self.warnings):
            out.append("invalid_for_modelopt")
        if any("does nothing" in w for w in self.warnings):
            out.append("overlay_noop")
        return out

    def summary(self) -> dict[str, Any]:
        weight_q, input_q = describe_cell_quantizers(self)
        return {
            "id": self.id,
            "config_hash": self.config_hash,
            "search_hash": self.search_hash,
            "key": self.key,
            "pair": self.pair.name,
            "weight": self.pair.weight,
            "activation": self.pair.activation,
            "granularity": self.granularity.name,
            "dataset_size": self.size_name,
            "samples": self.samples,
            "calib_samples": self.calib_samples,
            "score_samples": self.score_samples,
            "effective_bits_target": self.budget,
            "format_bits": self.format_bits,
            "min_effective_bits": None if self.min_effective_bits is None else round(self.min_effective_bits, 4),
            "weight_quantizer": weight_q,
            "input_quantizer": input_q,
            **({"menu": [label for label, _ in self.formats]} if self.is_menu else {}),
            "calibration": self.calibration_method,
            "path": str(self.path),
            "flags": self.flags,
            "warnings": list(self.warnings),
            **({"kv_cache": self.kv_cache} if self.kv_in_path else {}),
            **export_fields(self.export),
        }


def export_fields(export: Exportability | None) -> dict[str, Any]:
    """The plan's exportability as a row and dry-run carry it: `exportable` (true / false / null) and its reason."""
    if export is None:
        return {"exportable": None, "export_reason": "not computed", "export_format": None}
    return {"exportable": export.exportable, "export_reason": export.reason, "export_format": export.quant_algo}


@dataclass
class Plan:
    matrix: Matrix
    cells: list[Cell]
    warnings: list[str] = field(default_factory=list)
    canary_cell: Cell | None = None

    @property
    def sweep_dir(self) -> PurePosixPath:
        return PurePosixPath(self.matrix.output_root) / self.matrix.name

    def estimate(self) -> dict[str, Any]:
        """Work counts for the naive per-cell path and for a shared one (see issue on shared scoring)."""
        unique_formats = {canonical_json(cfg) for c in self.cells for cfg in c.format_configs}
        unique_calibrations: set[tuple[str, int]] = set()
        for c in self.cells:
            for cfg in c.format_configs:
                unique_calibrations.add((canonical_json(cfg), c.calib_steps))
        max_score_steps = max((c.score_steps for c in self.cells), default=0)
        return {
            "cells": len(self.cells),
            "unique_formats": len(unique_formats),
            "calibration_batches_per_cell_sum": sum(c.calib_steps for c in self.cells),
            "scoring_batches_per_cell_sum": sum(c.score_steps for c in self.cells),
            "unique_calibrations": len(unique_calibrations),
            "shared_forward_backward_batches": max_score_steps,
            "canary_runs": self.matrix.canary.repeats if self.matrix.canary.enabled else 0,
            "eval_samples": self.matrix.dataset.eval_samples,
            "seq_len": self.matrix.dataset.seq_len,
            **({"long_context_seq_lens": list(self.matrix.evaluation.seq_lens),
                "long_context_samples_per_length": self.matrix.evaluation.samples_per_length}
               if self.matrix.evaluation.seq_lens else {}),
        }


def _detect_needs_gpu(config: dict[str, Any]) -> bool:
    """ModelOpt fake-quantizes dynamic block formats with a fixed block size (NVFP4, MX) only on CUDA."""
    for entry in config.get("quant_cfg", []):
        if entry.get("enable", True) is False or entry.get("cfg") is None:
            continue
        cfg = entry["cfg"]
        for attrs in cfg if isinstance(cfg, list) else [cfg]:
            block = attrs.get("block_sizes") or {}
            sized = any(isinstance(k, int) and v is not None for k, v in block.items())
            if sized and block.get("type") == "dynamic":
                return True
    return False


def resolve_entry(entry: Any) -> ResolvedPair:
    """An `axes.quant_pairs` entry as a resolved pair: a pair (bare or `{pair: ...}`), or a menu of pairs."""
    if isinstance(entry, PairEntry):
        return resolve_pair(entry.pair)
    if isinstance(entry, MenuEntry):
        members = tuple(resolve_pair(r) for r in entry.menu)

        def joined(values: list[str]) -> str:
            return MENU_JOIN.join(dict.fromkeys(values))

        return ResolvedPair(
            name=entry.label,
            weight=joined([p.weight for p in members]),
            activation=joined([p.activation for p in members]),
            config={},  # per member: `members`
            base_builtin=None,
            experimental=any(p.experimental for p in members),
            needs_gpu=any(p.needs_gpu for p in members),
            inline=any(p.inline for p in members),
            description=f"format menu: {', '.join(p.name for p in members)} (and 16 bits), chosen per layer",
            members=members,
        )
    return resolve_pair(entry)


def resolve_pair(ref: str | InlinePair) -> ResolvedPair:
    if isinstance(ref, str):
        p = QUANT_PAIRS[ref]
        return ResolvedPair(
            name=p.name,
            weight=p.weight,
            activation=p.activation,
            config=p.config(),
            base_builtin=p.base_builtin,
            experimental=p.experimental,
            needs_gpu=p.needs_gpu,
            inline=False,
            description=p.description,
        )
    if ref.base is not None:
        base = QUANT_PAIRS[ref.base]
        config = base.config()
        for entry in config["quant_cfg"]:
            if entry.get("quantizer_name") == "*weight_quantizer" and ref.weight_quantizer is not None:
                entry.pop("enable", None)
                entry["cfg"] = dict(ref.weight_quantizer)
            if entry.get("quantizer_name") == "*input_quantizer" and ref.input_quantizer is not None:
                entry.pop("enable", None)
                entry["cfg"] = dict(ref.input_quantizer)
        if ref.input_quantizer is not None and not any(
            e.get("quantizer_name") == "*input_quantizer" for e in config["quant_cfg"]
        ):
            config["quant_cfg"].insert(2, {"quantizer_name": "*input_quantizer", "cfg": dict(ref.input_quantizer)})
        if ref.algorithm is not None:
            config["algorithm"] = ref.algorithm
        builtin = None
    else:
        config = compose_config(ref.weight_quantizer, ref.input_quantizer, ref.algorithm or "max")
        builtin = None
    needs_gpu = ref.needs_gpu if ref.needs_gpu is not None else _detect_needs_gpu(config)
    return ResolvedPair(
        name=ref.name,
        weight=ref.weight,
        activation=ref.activation,
        config=config,
        base_builtin=builtin,
        experimental=ref.experimental,
        needs_gpu=needs_gpu,
        inline=True,
        description=f"inline pair{' based on ' + ref.base if ref.base else ''}",
    )


def resolve_granularity(ref: str | InlineGranularity) -> ResolvedGranularity:
    if isinstance(ref, str):
        g = GRANULARITIES[ref]
        return ResolvedGranularity(g.name, g.overrides(), inline=False, description=g.description)
    return ResolvedGranularity(ref.name, dict(ref.overrides), inline=True, description=ref.description)


def _sha(payload: Any) -> str:
    return hashlib.sha256(json.dumps(payload, sort_keys=True, separators=(",", ":")).encode()).hexdigest()[:12]


def _shared_context(m: Matrix) -> dict[str, Any]:
    """Everything outside the axes that can change a cell's result."""
    d = m.dataset
    extra: dict[str, Any] = {}
    if m.evaluation.seq_lens:  # only when asked for: matrices without it keep their ids
        extra["evaluation"] = m.evaluation.model_dump(mode="json")
    return {
        **extra,
        "model": m.model.model_dump(mode="json", exclude={"name", "device_map", "max_memory"}),  # placement only
        "dataset": {
            "source": d.source,
            "path": d.path,
            "field": d.field,
            "hf_name": d.hf_name,
            "hf_config": d.hf_config,
            "hf_split": d.hf_split,
            "seq_len": d.seq_len,
            "eval_samples": d.eval_samples,
            "seed": d.seed,
        },
        "autoquant": m.autoquant.model_dump(mode="json", exclude={"effective_bits"}),
    }


def _entry_budgets(entry: Any, m: Matrix) -> list[float]:
    """An entry's own `budgets` when it has them, else the matrix's `autoquant.effective_bits`."""
    own = getattr(entry, "budgets", None) if isinstance(entry, PairEntry | MenuEntry) else None
    return list(own) if own is not None else list(m.autoquant.effective_bits)


def _cell_formats(pair: ResolvedPair, gran: ResolvedGranularity, source: str, where: str
                  ) -> tuple[dict[str, Any], list[tuple[str, dict[str, Any]]], list[str]]:
    """(the cell's config, its (label, effective config) formats, overlay warnings) for a pair or a menu under a
    granularity. A menu's config is its menu document (menus.py); two members that the granularity makes the same
    format are refused (ModelOpt would silently merge them into one candidate)."""
    members = pair.members or (pair,)
    formats: list[tuple[str, dict[str, Any]]] = []
    warnings: list[str] = []
    seen: dict[str, str] = {}
    for member in members:
        config, overlay_warnings = apply_overlay(member.config, gran.overrides)
        invalid = modelopt_violations(config)
        prefix = f"{member.name}: " if pair.members else ""
        warnings += [prefix + w for w in overlay_warnings] + [f"{prefix}rejected by ModelOpt: {v}" for v in invalid]
        canon = canonical_json(config)
        if canon in seen:
            raise MatrixError(source, [(where, f"menu {pair.name!r}: {member.name} and {seen[canon]} are the same "
                                               f"format under granularity {gran.name!r}; a menu needs distinct formats")])
        seen[canon] = member.name
        formats.append((f"{member.name}/{gran.name}", config))
    config = menu_config(formats) if pair.members else formats[0][1]
    return config, formats, warnings


def expand(m: Matrix, source: str = "<matrix>", max_cells: int = DEFAULT_MAX_CELLS) -> Plan:
    """The cartesian product of the axes (x budgets) as cells; raises MatrixError on path collisions, and before
    expanding anything when the product exceeds `max_cells` (a short matrix can name hundreds of thousands).

    An entry with its own `budgets` multiplies its cells by those instead of `autoquant.effective_bits`; a menu
    entry gives one cell per (granularity x size x budget) whose search chooses among all its formats."""
    entry_budgets = [_entry_budgets(e, m) for e in m.axes.quant_pairs]
    per_entry = len(m.axes.granularities) * len(m.axes.dataset_sizes) * len(m.axes.kv_cache)
    n_cells = sum(len(b) for b in entry_budgets) * per_entry
    if n_cells > max_cells:
        n_budgets = ("budgets per entry" if any(len(b) != len(m.autoquant.effective_bits) for b in entry_budgets)
                     else f"{len(m.autoquant.effective_bits)} budgets")
        raise MatrixError(source, [("axes", (
            f"expands to {n_cells:,} cells ({len(m.axes.quant_pairs)} pairs x {len(m.axes.granularities)} "
            f"granularities x {len(m.axes.dataset_sizes)} sizes x {n_budgets}"
            + (f" x {len(m.axes.kv_cache)} KV-cache settings" if len(m.axes.kv_cache) > 1 else "") + "), more "
            f"than the {max_cells:,} allowed; split the matrix, or pass --max-cells {n_cells} if you mean it"))])
    pairs = [resolve_entry(p) for p in m.axes.quant_pairs]
    grans = [resolve_granularity(g) for g in m.axes.granularities]
    sizes: list[tuple[str, int]] = []
    for s in m.axes.dataset_sizes:
        if isinstance(s, InlineSize):
            sizes.append((s.name, s.samples))
        else:
            sizes.append((s, m.dataset.sizes[s]))
    context = _shared_context(m)
    root = PurePosixPath(m.output_root) / m.name
    aq = m.autoquant
    from .model_shapes import plan_shapes

    shapes = plan_shapes(m.model)  # layer shapes from config / GGUF header (no weights); None when unknown
    kv_in_path = list(m.axes.kv_cache) != ["none"]

    cells: list[Cell] = []
    warnings: list[str] = []
    seen_paths: dict[str, str] = {}
    for index, (pair, budgets) in enumerate(zip(pairs, entry_budgets, strict=True)):
        for gran in grans:
            config, formats, overlay_warnings = _cell_formats(pair, gran, source, f"axes.quant_pairs[{index}]")
            # the least bits a search reaches: its lowest format everywhere (AutoQuantize's own check)
            fbits = min(format_bits(cfg) for _, cfg in formats)
            min_bits = None if shapes is None else minimum_effective_bits(shapes, fbits, aq.disabled_layers)
            export = _exportability(formats, shapes, aq.disabled_layers)
            for size_name, samples in sizes:
                calib = samples if aq.calib_size == "dataset_size" else int(aq.calib_size)
                score = min(samples, aq.score_size) if aq.score_size else samples
                for budget, kv in ((b, k) for b in budgets for k in m.axes.kv_cache):
                    path = root / pair.name / gran.name / size_name
                    if kv_in_path:
                        path = path / f"kv-{kv}"
                    if len(budgets) > 1:
                        path = path / f"bits-{budget:.10g}"
                    resolved = {
                        "config": to_jsonable(config),
                        "budget": budget,
                        "samples": samples,
                        "calib_samples": calib,
                        "score_samples": score,
                        **context,
                    }
                    # what the scores depend on: everything but the budget (which only changes the solve) and the
                    # KV cache (applied after the search, for the evaluation)
                    search_hash = _sha({k: v for k, v in resolved.items() if k != "budget"})
                    axes_names = [pair.name, gran.name, size_name]
                    if kv_in_path:
                        resolved["kv_cache"] = kv
                        axes_names.append(f"kv-{kv}")
                    config_hash = _sha(resolved)
                    cell_id = _sha({"axes": axes_names, "layout": str(path.relative_to(root)), **resolved})
                    cell = Cell(
                        id=cell_id,
                        config_hash=config_hash,
                        search_hash=search_hash,
                        pair=pair,
                        granularity=gran,
                        size_name=size_name,
                        samples=samples,
                        budget=budget,
                        path=path,
                        config=config,
                        format_bits=fbits,
                        calib_samples=calib,
                        score_samples=score,
                        batch_size=aq.batch_size,
                        warnings=tuple(f"{pair.name}/{gran.name}: {w}" for w in overlay_warnings),
                        min_effective_bits=min_bits,
                        kv_cache=kv,
                        kv_in_path=kv_in_path,
                        export=export,
                        formats=tuple(formats),
                    )
                    low = str(path).lower()
                    if low in seen_paths:
                        raise MatrixError(source, [("axes", f"cells {seen_paths[low]} and {cell.key} share path {path}")])
                    seen_paths[low] = cell.key
                    cells.append(cell)

    flagged_experimental: set[str] = set()
    for c in cells:
        for w in c.warnings:
            if w not in warnings:
                warnings.append(w)
        if c.pair.experimental and c.pair.name not in flagged_experimental:
            flagged_experimental.add(c.pair.name)
            warnings.append(f"{c.pair.name}: experimental pair (no mainstream deployment kernel)")
        if c.budget < c.format_bits:
            warnings.append(
                f"{c.key}: budget {c.budget:g} bits is below the format's {c.format_bits:g} bits; "
                "this cell will be an error row"
            )
        elif "budget_infeasible" in c.flags:
            warnings.append(
                f"{c.key}: budget {c.budget:g} bits is infeasible: with autoquant.disabled_layers kept at 16 bits the "
                f"minimum achievable is {c.min_effective_bits:.4f} bits; this cell will be an error row"
            )
    by_hash: dict[str, list[str]] = {}
    for c in cells:
        by_hash.setdefault(c.config_hash, []).append(c.key)
    for keys in by_hash.values():
        if len(keys) > 1:
            warnings.append(f"cells {', '.join(keys)} resolve to the same configuration: they compute the same thing twice")
    if aq.score_size and aq.score_size > max(s for _, s in sizes):
        warnings.append(f"autoquant.score_size {aq.score_size} exceeds every dataset size; scoring uses all samples")

    plan = Plan(matrix=m, cells=cells, warnings=warnings)
    plan.canary_cell = _canary_cell(m, cells, source)
    return plan


def _exportability(formats: list[tuple[str, dict[str, Any]]], shapes: Any, disabled: list[str]) -> Exportability:
    """A single format's exportability; a menu's: exportable iff every member is (any of them may be chosen for
    any layer), and only when the members share one calibration algorithm (a checkpoint is rebuilt with one
    `mtq.quantize` call, which has one algorithm)."""
    verdicts = [config_exportability(cfg, shapes, disabled) for _, cfg in formats]
    if len(formats) == 1:
        return verdicts[0]
    from .menus import common_algorithm

    if common_algorithm([cfg for _, cfg in formats]) is None:
        return Exportability(False, "the menu's formats calibrate with different algorithms; one checkpoint is "
                                    "rebuilt with one calibration algorithm")
    return combined(verdicts)


def _canary_cell(m: Matrix, cells: list[Cell], source: str) -> Cell | None:
    if not m.canary.enabled or not cells:
        return None
    if m.canary.cell is not None:
        for c in cells:
            if c.key == m.canary.cell or c.id == m.canary.cell:
                return c
        raise MatrixError(
            source, [("canary.cell", f"no cell {m.canary.cell!r}; cells are addressed as pair/granularity/size")]
        )
    # Cheapest = fewest samples, a prefix-friendly (max) calibration, runnable budget, CPU-capable first.
    runnable = [c for c in cells if c.budget >= c.format_bits and "budget_infeasible" not in c.flags] or cells
    return min(
        runnable,
        key=lambda c: (
            c.pair.needs_gpu,
            c.pair.experimental,
            c.calibration_method not in PREFIX_CALIBRATION_METHODS,
            max(c.calib_samples, c.score_samples),
            c.format_bits,
        ),
    )


def describe_cell_quantizers(cell: Cell) -> tuple[str, str]:
    if cell.is_menu:
        configs = cell.format_configs
        return describe_formats(configs, "*weight_quantizer"), describe_formats(configs, "*input_quantizer")
    return describe_quantizer(cell.config, "*weight_quantizer"), describe_quantizer(cell.config, "*input_quantizer")
