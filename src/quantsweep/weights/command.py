"""`quantsweep weights`: plan every tensor from the safetensors headers, then read and analyse one at a time.

1. Plan (headers only, no tensor data): inventory every tensor, match the naming rules, compute splits. Under
   `strict` every fused tensor whose split does not add up is collected and reported together as one input error
   (exit 2) before any tensor is read; non-strict records a warning and analyses the tensor unsplit.
2. Compute: one safetensors file open at a time, one tensor at a time (an expert bank one expert at a time), as
   float32: statistics for every matrix, simulated error for every linear matrix x format (a failing format gives
   an error row), Rich progress over tensors.
3. Tables, summaries, deltas, hostile layers; write CSV (+ Parquet), summary.md, weights.json.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from ..errors import InputError
from .naming import BLOCK_LAYERS, NamingRules, Part, Rule, SplitError, load_rules, plan_split
from .sources import ModelSource, open_source
from .stats import STAT_COLUMNS
from .tables import DELTA_COLUMNS, DELTA_METRICS, QUANT_METRICS, WEIGHT_METRICS, summary_columns
from .writer import Table

FLOAT_DTYPES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "F8_E4M3": 1, "F8_E5M2": 1}
DTYPE_BYTES = {**FLOAT_DTYPES, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1, "U16": 2, "U32": 4, "U64": 8, "BOOL": 1}

INVENTORY_COLUMNS = ("file", "tensor", "dtype", "shape", "ndim", "numel", "bytes", "status", "rule", "matrices", "note")
UNMATCHED_COLUMNS = ("file", "tensor", "dtype", "shape", "ndim", "reason")
MATRIX_IDENTITY = (
    "file",
    "tensor",
    "matrix",
    "rule",
    "role",
    "proj",
    "layer",
    "block4",
    "expert",
    "expert_kind",
    "split",
    "rows",
    "cols",
    "dtype",
)
STATS_COLUMNS = (*MATRIX_IDENTITY, *STAT_COLUMNS, "note")
QUANT_COLUMNS = (
    "file",
    "tensor",
    "matrix",
    "role",
    "proj",
    "layer",
    "block4",
    "expert",
    "expert_kind",
    "rows",
    "cols",
    "format",
    "pair",
    "granularity",
    "weight_quantizer",
    "format_bits",
    "fake_quant_backend",
    "rel_fro",
    "rel_max",
    "max_abs_err",
    "sqnr_db",
    "error",
)


@dataclass
class WeightsOptions:
    model: str = "embedded"
    formats: list[str] | None = None  # None: the defaults; ["none"]: statistics only
    deltas: list[str] | None = None  # "A:B"; None: every same-pair, different-granularity pair of formats
    out: Path | None = None
    strict: bool = True
    rules: Path | None = None
    top: int = 10
    device: str = "cpu"
    threads: int | None = None
    fake_quant_backend: str = "auto"  # auto | modelopt | torch (NVFP4/MX), as autoquant.fake_quant_backend


@dataclass
class MatrixRef:
    matrix: str
    proj: str
    expert: int | None
    expert_kind: str
    bank_index: int | None  # index along dim 0 of an expert bank
    part: Part | None
    rows: int
    cols: int
    split: str


@dataclass
class TensorPlan:
    file: Path
    file_rel: str
    tensor: str
    dtype: str
    shape: tuple[int, ...]
    rule: Rule
    layer: int | None
    matrices: list[MatrixRef]
    note: str = ""

    @property
    def bank(self) -> bool:
        return len(self.shape) == 3

    @property
    def transpose(self) -> bool:
        return self.rule.layout == "in_out"


@dataclass
class Plan:
    inventory: list[dict[str, Any]]
    unmatched: list[dict[str, Any]]
    tensors: list[TensorPlan]
    warnings: list[str]


@dataclass
class WeightsOutcome:
    out_dir: Path
    doc: dict[str, Any]  # the JSON document (`--json`)
    hostile: list[dict[str, Any]]
    formats: list[str]
    warnings: list[str] = field(default_factory=list)


class Progress:
    """Hooks for the CLI's progress bar; the default does nothing."""

    def message(self, text: str) -> None: ...

    def start(self, total: int) -> None: ...

    def advance(self, label: str) -> None: ...

    def stop(self) -> None: ...


# --- options ------------------------------------------------------------------------------------------------
def resolve_formats_and_deltas(
    formats: list[str] | None, deltas: list[str] | None
) -> tuple[list[Any], list[tuple[str, str]], list[str]]:
    """(WeightFormats, deltas as (A, B), notes); formats named only in --delta are appended to the list."""
    from .quant_error import DEFAULT_FORMATS, resolve_format, split_format_list
    from .tables import default_deltas

    names = split_format_list(formats) if formats is not None else list(DEFAULT_FORMATS)
    if names == ["none/default"]:
        names = []
    elif "none/default" in names:
        raise InputError("--formats: 'none' (statistics only) cannot be combined with other formats")
    notes: list[str] = []
    pairs: list[tuple[str, str]] = []
    for d in split_format_list_plain(deltas):
        if d.count(":") != 1:
            raise InputError(f"--delta: {d!r} is not A:B (two PAIR/GRANULARITY formats)")
        a, b = (x if "/" in x else f"{x}/default" for x in d.split(":"))
        if a == b:
            raise InputError(f"--delta: {d!r} compares a format with itself")
        for x in (a, b):
            if x not in names:
                names.append(x)
                notes.append(f"format {x} added because --delta {d} names it")
        if (a, b) not in pairs:
            pairs.append((a, b))
    resolved = [resolve_format(n) for n in names]
    if deltas is None:
        pairs = default_deltas(names)
    return resolved, pairs, notes


def split_format_list_plain(values: list[str] | None) -> list[str]:
    out: list[str] = []
    for v in values or []:
        out += [t for t in v.replace(",", " ").split() if t]
    return out


# --- planning -----------------------------------------------------------------------------------------------
def _shape_text(shape: tuple[int, ...]) -> str:
    return "x".join(str(s) for s in shape) if shape else "scalar"


def _plan_tensor(
    src: ModelSource,
    rules: NamingRules,
    f: Path,
    name: str,
    dtype: str,
    shape: tuple[int, ...],
    rule: Rule,
    strict: bool,
    failures: list[str],
    warnings: list[str],
) -> TensorPlan:
    bank = len(shape) == 3
    r0, c0 = shape[-2], shape[-1]
    rows, cols = (c0, r0) if rule.layout == "in_out" else (r0, c0)
    layer = rules.layer_of(name)
    parts: list[Part] | None = None
    split_note = ""
    if rule.split is not None:
        try:
            parts = plan_split(rule.split, rows, cols, src.config)
        except SplitError as exc:
            how = f"split {rule.split.axis} into {list(rule.split.parts)}"
            msg = f"{name} (shape {list(shape)}, rule {rule.name}, {how}): {exc}"
            if strict:
                failures.append(msg)
            else:
                warnings.append(f"split failed, analysed unsplit as {rule.proj}: {msg}")
            split_note = "unsplit (split failed)"
    if bank:
        kind = "shared" if rules.is_shared(name) else "routed"
        experts: list[tuple[int | None, int | None]] = [(e, e) for e in range(shape[0])]
    else:
        expert, kind = rules.expert_of(name)
        experts = [(expert, None)]
    matrices: list[MatrixRef] = []
    for expert, bank_index in experts:
        base = f"{name}[{bank_index}]" if bank_index is not None else name
        if parts:
            for p in parts:
                prow, pcol = (p.length, cols) if p.axis == 0 else (rows, p.length)
                matrices.append(
                    MatrixRef(f"{base}::{p.proj}", p.proj, expert, kind, bank_index, p, prow, pcol, p.describe())
                )
        else:
            matrices.append(MatrixRef(base, rule.proj, expert, kind, bank_index, None, rows, cols, split_note))
    note = "transposed on reading (stored in x out)" if rule.layout == "in_out" else ""
    return TensorPlan(f, src.relative(f), name, dtype, shape, rule, layer, matrices, note)


def plan(src: ModelSource, rules: NamingRules, strict: bool) -> Plan:
    from safetensors import safe_open

    inventory: list[dict[str, Any]] = []
    unmatched: list[dict[str, Any]] = []
    tensors: list[TensorPlan] = []
    warnings: list[str] = []
    failures: list[str] = []
    not_float_2d: list[str] = []
    seen: dict[str, str] = {}
    for f in src.files:
        try:
            handle = safe_open(str(f), framework="pt")
        except Exception as exc:  # noqa: BLE001 - safetensors raises its own error types
            raise InputError(f"--model: cannot read {f} as safetensors: {exc}") from exc
        with handle as st:
            for name in st.keys():
                sl = st.get_slice(name)
                dtype, shape = sl.get_dtype(), tuple(int(s) for s in sl.get_shape())
                numel = math.prod(shape)
                row: dict[str, Any] = {
                    "file": src.relative(f),
                    "tensor": name,
                    "dtype": dtype,
                    "shape": _shape_text(shape),
                    "ndim": len(shape),
                    "numel": numel,
                    "bytes": numel * DTYPE_BYTES.get(dtype, 0) or None,
                    "status": "",
                    "rule": None,
                    "matrices": 0,
                    "note": "",
                }
                if name in seen:
                    warnings.append(f"tensor {name} appears in {seen[name]} and {src.relative(f)}; both analysed")
                seen.setdefault(name, src.relative(f))
                inventory.append(row)
                if dtype not in FLOAT_DTYPES:
                    row["status"] = "not_float"
                    if len(shape) >= 2:
                        not_float_2d.append(name)
                    continue
                if len(shape) < 2:
                    row["status"] = "not_matrix"
                    continue
                ignored = rules.ignored(name)
                if ignored:
                    row["status"], row["note"] = "ignored", f"ignore pattern {ignored}"
                    continue
                rule = rules.match(name, src.model_type)
                reason = None
                if rule is None:
                    reason = "no naming rule matches the name"
                elif len(shape) > 3:
                    reason = (
                        f"rule {rule.name} matches, but ndim {len(shape)} is neither a matrix (2) "
                        "nor an expert bank (3)"
                    )
                if reason:
                    row["status"], row["note"] = "unmatched", reason
                    row["rule"] = rule.name if rule else None
                    unmatched.append(
                        {k: row[k] for k in ("file", "tensor", "dtype", "shape", "ndim")} | {"reason": reason}
                    )
                    continue
                assert rule is not None
                tp = _plan_tensor(src, rules, f, name, dtype, shape, rule, strict, failures, warnings)
                if dtype.startswith("F8"):
                    tp.note = "; ".join(
                        x for x in (tp.note, "float8 storage: statistics of the stored values, no scale applied") if x
                    )
                    warnings.append(
                        f"{name}: stored as {dtype}; statistics describe the stored values (scales not applied)"
                    )
                row.update(status="matrix", rule=rule.name, matrices=len(tp.matrices), note=tp.note)
                tensors.append(tp)
    if failures:
        raise InputError(
            "strict split failure (fix the rule with --rules FILE, or pass --no-strict to analyse these tensors "
            "unsplit):\n  " + "\n  ".join(failures)
        )
    if not_float_2d:
        warnings.append(
            f"{len(not_float_2d)} integer/packed tensor(s) with 2+ dimensions are not analysed (a pre-quantized "
            f"checkpoint?), e.g. {not_float_2d[0]}"
        )
    if unmatched:
        warnings.append(
            f"{len(unmatched)} float tensor(s) with 2+ dimensions match no naming rule (unmatched_tensors.csv)"
        )
    return Plan(inventory, unmatched, tensors, warnings)


# --- compute ------------------------------------------------------------------------------------------------
def _identity(tp: TensorPlan, m: MatrixRef) -> dict[str, Any]:
    return {
        "file": tp.file_rel,
        "tensor": tp.tensor,
        "matrix": m.matrix,
        "rule": tp.rule.name,
        "role": tp.rule.role,
        "proj": m.proj,
        "layer": tp.layer,
        "block4": tp.layer // BLOCK_LAYERS if tp.layer is not None else None,
        "expert": m.expert,
        "expert_kind": m.expert_kind,
        "split": m.split,
        "rows": m.rows,
        "cols": m.cols,
        "dtype": tp.dtype,
    }


def _slice(t: Any, p: Part | None) -> Any:
    if p is None:
        return t
    if p.axis == 0:
        return t[p.start : p.stop : p.step]
    return t[:, p.start : p.stop : p.step]


def compute(
    pl: Plan, formats: list[Any], device: str, progress: Progress, tied_note: str = "", backend: str = "auto"
) -> tuple[list[dict[str, Any]], list[dict[str, Any]], dict[str, float]]:
    import torch
    from safetensors import safe_open

    from .quant_error import backend_name, error_text, reference, simulate
    from .stats import weight_stats

    stats_rows: list[dict[str, Any]] = []
    quant_rows: list[dict[str, Any]] = []
    seconds = {"stats": 0.0, **{f.name: 0.0 for f in formats}}
    backends = {f.name: backend_name(f, backend, device) for f in formats}
    if formats:  # import ModelOpt up front (tens of seconds without a bytecode cache), not inside a format's time
        t0 = time.perf_counter()
        import modelopt.torch.quantization.nn  # noqa: F401

        seconds["modelopt_import"] = time.perf_counter() - t0
    progress.start(len(pl.tensors))
    by_file: dict[Path, list[TensorPlan]] = {}
    for tp in pl.tensors:
        by_file.setdefault(tp.file, []).append(tp)
    for f, plans in by_file.items():
        with safe_open(str(f), framework="pt") as st:
            for tp in plans:
                indices = sorted({m.bank_index for m in tp.matrices}, key=lambda i: -1 if i is None else i)
                sl = st.get_slice(tp.tensor) if tp.bank else None
                for idx in indices:
                    t = sl[idx] if sl is not None else st.get_tensor(tp.tensor)
                    if t.dim() == 3:  # some safetensors versions keep the sliced dim
                        t = t[0]
                    t = t.to(torch.float32)
                    if tp.transpose:
                        t = t.t()
                    for m in (m for m in tp.matrices if m.bank_index == idx):
                        w = _slice(t, m.part).contiguous()
                        ident = _identity(tp, m)
                        t0 = time.perf_counter()
                        row = {**ident, **weight_stats(w.numpy()), "note": tp.note}
                        if tp.rule.role == "embedding" and tied_note:
                            row["note"] = "; ".join(x for x in (row["note"], tied_note) if x)
                        seconds["stats"] += time.perf_counter() - t0
                        stats_rows.append(row)
                        if tp.rule.role != "linear" or not formats:
                            continue
                        ref = reference(w)
                        for fmt in formats:
                            q = {k: ident[k] for k in QUANT_COLUMNS if k in ident}
                            q.update(
                                format=fmt.name,
                                pair=fmt.pair,
                                granularity=fmt.granularity,
                                weight_quantizer=fmt.description,
                                format_bits=fmt.format_bits,
                                fake_quant_backend=backends[fmt.name],
                                error=None,
                            )
                            t0 = time.perf_counter()
                            try:
                                q.update(simulate(w, fmt, device, ref, backend))
                            except Exception as exc:  # noqa: BLE001 - any ModelOpt failure becomes an error row
                                q.update({c: None for c in ("rel_fro", "rel_max", "max_abs_err", "sqnr_db")})
                                q["error"] = error_text(exc, fmt, device, backend)
                            seconds[fmt.name] += time.perf_counter() - t0
                            quant_rows.append(q)
                    del t
                progress.advance(tp.tensor)
    progress.stop()
    return stats_rows, quant_rows, {k: round(v, 3) for k, v in seconds.items()}


def _tied_note(src: ModelSource, pl: Plan) -> str:
    cfg = src.config or {}
    tied = cfg.get("tie_word_embeddings")
    if tied is None and isinstance(cfg.get("text_config"), dict):
        tied = cfg["text_config"].get("tie_word_embeddings")
    has_head = any(tp.rule.role == "lm_head" for tp in pl.tensors)
    if tied and not has_head:
        return "tied: this matrix is also the lm_head (no separate lm_head tensor)"
    return ""


def _dedupe(items: list[str]) -> list[str]:
    return list(dict.fromkeys(items))


def _versions() -> dict[str, str | None]:
    from importlib.metadata import PackageNotFoundError, version

    out: dict[str, str | None] = {}
    for pkg in ("quantsweep", "torch", "nvidia-modelopt", "safetensors", "numpy"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = None
    return out


def run_weights(opts: WeightsOptions, progress: Progress | None = None) -> WeightsOutcome:
    """Everything `quantsweep weights` does; raises InputError (exit 2) on invalid input before any output."""
    progress = progress or Progress()
    t_start = time.perf_counter()
    if opts.device not in ("cpu", "cuda", "auto"):
        raise InputError("--device must be cpu, cuda or auto")
    if opts.fake_quant_backend not in ("auto", "modelopt", "torch"):
        raise InputError("--fake-quant-backend must be auto, modelopt or torch")
    if opts.top < 0:
        raise InputError("--top must be >= 0")
    rules = load_rules(opts.rules)
    formats, deltas, notes = resolve_formats_and_deltas(opts.formats, opts.deltas)
    import torch

    device = opts.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    elif device == "cuda" and not torch.cuda.is_available():
        raise InputError("--device cuda: no CUDA device is available")
    threads_before = torch.get_num_threads()
    if opts.threads:
        torch.set_num_threads(opts.threads)
    try:
        return _run(opts, progress, rules, formats, deltas, notes, device, t_start)
    finally:
        torch.set_num_threads(threads_before)


def _run(
    opts: WeightsOptions,
    progress: Progress,
    rules: NamingRules,
    formats: list[Any],
    deltas: list[tuple[str, str]],
    notes: list[str],
    device: str,
    t_start: float,
) -> WeightsOutcome:
    from ..store.atomic import atomic_write_json, atomic_write_text, check_output_dir
    from .tables import delta_rows, delta_summary, hostile_layers, quant_summary, weight_summary
    from .writer import render_markdown, write_tables

    warnings: list[str] = [w for f in formats for w in f.warnings] + notes

    with open_source(opts.model, progress.message) as src:
        out_dir = Path(opts.out) if opts.out is not None else Path("runs") / "weights" / src.name
        check_output_dir(out_dir, "--out")
        t0 = time.perf_counter()
        pl = plan(src, rules, opts.strict)
        t_plan = time.perf_counter() - t0
        warnings += pl.warnings
        tied = _tied_note(src, pl)
        t0 = time.perf_counter()
        stats_rows, quant_rows, seconds = compute(pl, formats, device, progress, tied, opts.fake_quant_backend)
        t_compute = time.perf_counter() - t0
        source_doc = src.to_dict()

    fmt_names = [f.name for f in formats]
    error_rows = [r for r in quant_rows if r.get("error")]
    for f in formats:
        n_err = sum(1 for r in error_rows if r["format"] == f.name)
        if n_err:
            first = next(r["error"] for r in error_rows if r["format"] == f.name)
            warnings.append(
                f"{f.name}: {n_err} of {sum(1 for r in quant_rows if r['format'] == f.name)} matrices failed: {first}"
            )
    d_rows = delta_rows(quant_rows, deltas)
    w_sum = weight_summary(stats_rows)
    q_sum = quant_summary(quant_rows)
    d_sum = delta_summary(d_rows)
    hostile = hostile_layers(q_sum, fmt_names, opts.top)
    warnings = _dedupe(warnings)

    tables = [
        Table("tensor_inventory", INVENTORY_COLUMNS, pl.inventory),
        Table("matrix_stats", STATS_COLUMNS, stats_rows),
        Table("quant_error", QUANT_COLUMNS, quant_rows),
        Table("quant_deltas", DELTA_COLUMNS, d_rows),
        Table("weight_summary", summary_columns(WEIGHT_METRICS), w_sum),
        Table("quant_summary", summary_columns(QUANT_METRICS, ("format",), ("n_errors",)), q_sum),
        Table("delta_summary", summary_columns(DELTA_METRICS, ("delta",)), d_sum),
        Table("unmatched_tensors", UNMATCHED_COLUMNS, pl.unmatched),
    ]
    files, parquet_status, parquet_warnings = write_tables(out_dir, tables)
    warnings = _dedupe(warnings + parquet_warnings)
    files.update(write_tables(out_dir, [Table("warnings", ("warning",), [{"warning": w} for w in warnings])])[0])
    rows = {t.name: len(t.rows) for t in tables}
    rows["warnings"] = len(warnings)
    doc: dict[str, Any] = {
        "command": "weights",
        "created_at": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "out_dir": str(out_dir),
        "model": source_doc,
        "formats": [f.to_dict() for f in formats],
        "deltas": [{"name": f"{a} - {b}", "a": a, "b": b} for a, b in deltas],
        "strict": opts.strict,
        "device": device,
        "fake_quant_backend": opts.fake_quant_backend,
        "rules": rules.to_dict(),
        "rows": rows,
        "matrix_tensors": len(pl.tensors),
        "linear_matrices": sum(1 for r in stats_rows if r["role"] == "linear"),
        "error_rows": len(error_rows),
        "parquet": parquet_status,
        "files": files,
        "hostile_layers": hostile,
        "warnings": warnings,
        "versions": _versions(),
    }
    md_doc = {
        **doc,
        "_weight_summary": w_sum,
        "_quant_summary": q_sum,
        "_delta_summary": d_sum,
        "_unmatched": pl.unmatched,
    }
    summary_md = out_dir / "summary.md"
    manifest = out_dir / "weights.json"
    doc["summary_md"] = str(summary_md)
    doc["manifest"] = str(manifest)
    doc["seconds"] = {
        "plan": round(t_plan, 3),
        "compute": round(t_compute, 3),
        "per_part": seconds,
        "total": round(time.perf_counter() - t_start, 3),
    }
    atomic_write_text(summary_md, render_markdown(md_doc))
    atomic_write_json(manifest, doc)
    return WeightsOutcome(out_dir=out_dir, doc=doc, hostile=hostile, formats=fmt_names, warnings=warnings)


# --- presentation -------------------------------------------------------------------------------------------
def hostile_table(outcome: WeightsOutcome) -> Any:
    """The Rich table of the most quantization-hostile layers."""
    from rich.table import Table as RichTable

    def num(v: Any) -> str:
        return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.4g}"

    t = RichTable(title="Most quantization-hostile layers (layer median rel_fro / model median, mean over formats)")
    t.add_column("rank", justify="right")
    t.add_column("layer", justify="right")
    t.add_column("hostility", justify="right")
    for f in outcome.formats:
        t.add_column(f"{f}\nrel_fro", justify="right")
    t.add_column("worst proj")
    for h in outcome.hostile:
        t.add_row(
            str(h["rank"]),
            str(h["layer"]),
            f"{h['hostility']:.3f}",
            *[num(h["rel_fro_median"].get(f)) for f in outcome.formats],
            h["worst_proj"] or "-",
        )
    return t


class RichProgress(Progress):
    """A Rich bar over tensors on stderr; plain lines when stderr is not a terminal; nothing when quiet."""

    def __init__(self, console: Any, quiet: bool = False):
        self.console = console
        self.quiet = quiet
        self.live = console.is_terminal and not quiet
        self._progress: Any = None
        self._task: Any = None
        self._total = 0
        self._done = 0

    def message(self, text: str) -> None:
        if not self.quiet:
            self.console.print(f"[dim]·[/] {text}", highlight=False)

    def start(self, total: int) -> None:
        self._total = total
        if self.live:
            from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn
            from rich.progress import Progress as RP

            self._progress = RP(
                TextColumn("[bold]tensors"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                TextColumn("{task.description}"),
                console=self.console,
                transient=False,
            )
            self._progress.start()
            self._task = self._progress.add_task("", total=total)
        elif not self.quiet:
            self.console.print(f"analysing {total} tensors", highlight=False)

    def advance(self, label: str) -> None:
        self._done += 1
        if self._progress is not None:
            self._progress.update(self._task, advance=1, description=label)

    def stop(self) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None
        elif not self.quiet and self._total:
            self.console.print(f"analysed {self._done}/{self._total} tensors", highlight=False)
