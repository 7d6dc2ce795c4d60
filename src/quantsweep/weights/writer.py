"""Writing the tables: CSV always, Parquet too when pyarrow is importable, and a short markdown summary.

pyarrow is not a quantsweep dependency. When it cannot be imported the Parquet copies are simply not written and
the manifest says so (``parquet: "skipped: pyarrow is not installed"``); CSV is never replaced by anything, so a
reader never has to guess the format. A Parquet write that fails with pyarrow present is a recorded warning.

CSV cells: empty for None, ``nan`` / ``inf`` / ``-inf`` for non-finite floats, floats written with `repr`
(round-trip exact), booleans as ``true`` / ``false``.
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..store.atomic import atomic_write_text


@dataclass
class Table:
    name: str  # file stem
    columns: Sequence[str]
    rows: list[dict[str, Any]]


def _cell(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float):
        if math.isnan(v):
            return "nan"
        if math.isinf(v):
            return "inf" if v > 0 else "-inf"
        return repr(v)
    return str(v)


def csv_text(columns: Sequence[str], rows: Sequence[dict[str, Any]]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(columns)
    for r in rows:
        w.writerow([_cell(r.get(c)) for c in columns])
    return buf.getvalue()


def write_csv(path: Path, columns: Sequence[str], rows: Sequence[dict[str, Any]]) -> Path:
    atomic_write_text(path, csv_text(columns, rows))
    return path


def import_pyarrow() -> tuple[Any, Any] | None:
    """(pyarrow, pyarrow.parquet), or None when pyarrow is not installed (tests monkeypatch this)."""
    try:
        import pyarrow
        import pyarrow.parquet
    except ImportError:
        return None
    return pyarrow, pyarrow.parquet


def write_parquet(path: Path, columns: Sequence[str], rows: Sequence[dict[str, Any]], pa: Any, pq: Any) -> Path:
    data = {}
    for c in columns:
        values = [r.get(c) for r in rows]
        if any(isinstance(v, float) for v in values):  # ints and floats mixed in one column -> float64
            values = [float(v) if isinstance(v, int | float) and not isinstance(v, bool) else v for v in values]
        data[c] = pa.array(values)
    tmp = path.with_name(f".{path.name}.tmp")
    pq.write_table(pa.table(data), tmp)
    tmp.replace(path)
    return path


def write_tables(out_dir: Path, tables: Sequence[Table]) -> tuple[dict[str, dict[str, str]], str, list[str]]:
    """Write every table; returns ({name: {csv, parquet?}}, parquet status, warnings)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    files: dict[str, dict[str, str]] = {}
    warnings: list[str] = []
    arrow = import_pyarrow()
    status = "written" if arrow is not None else "skipped: pyarrow is not installed"
    for t in tables:
        entry = {"csv": str(write_csv(out_dir / f"{t.name}.csv", t.columns, t.rows))}
        pq_path = out_dir / f"{t.name}.parquet"
        if arrow is not None:
            try:
                entry["parquet"] = str(write_parquet(pq_path, t.columns, t.rows, *arrow))
            except Exception as exc:  # noqa: BLE001 - a Parquet problem must not lose the CSV results
                warnings.append(f"parquet: {t.name} not written: {type(exc).__name__}: {exc}")
                status = "partial: see warnings"
        elif pq_path.exists():
            pq_path.unlink()  # a stale copy from an earlier run with pyarrow would disagree with the CSV
        files[t.name] = entry
    return files, status, warnings


# --- markdown -----------------------------------------------------------------------------------------------
def _num(v: Any, spec: str = ".4g") -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    if isinstance(v, float) and math.isinf(v):
        return "inf" if v > 0 else "-inf"
    return format(v, spec) if isinstance(v, int | float) else str(v)


def _md_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> list[str]:
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    for r in rows:
        lines.append("| " + " | ".join(str(c).replace("|", "\\|") for c in r) + " |")
    return lines


def render_markdown(doc: dict[str, Any]) -> str:
    """The short human summary (`summary.md`) from the command's result document."""
    src = doc["model"]
    counts = doc["rows"]
    lines = [
        f"# Weight statistics: {src['name']}",
        "",
        f"- source: `{src['spec']}` ({src['kind']}, {len(src['files'])} safetensors file(s)"
        + (f", model_type `{src['model_type']}`" if src.get("model_type") else "")
        + ")",
        f"- tensors: {counts['tensor_inventory']} ({doc['matrix_tensors']} holding weight matrices); "
        f"matrices: {counts['matrix_stats']} ({doc['linear_matrices']} linear); "
        f"unmatched tensors: {counts['unmatched_tensors']}",
        f"- formats: {', '.join(f['name'] for f in doc['formats']) or 'none'}; "
        f"quantization rows: {counts['quant_error']} ({doc['error_rows']} error rows)",
        f"- naming rules: {doc['rules']['source']}; strict split: {doc['strict']}; device: {doc['device']}",
        f"- Parquet: {doc['parquet']}",
        "",
    ]
    glob_w = [r for r in doc["_weight_summary"] if r["scope"] == "global"]
    if glob_w:
        lines += ["## Weights (linear matrices, medians over matrices)", ""]
        lines += _md_table(
            [
                "proj",
                "n",
                "std",
                "max/mean |w|",
                "p99/median |w|",
                "p99.9/median |w|",
                "g32 outlier p95",
                "g64 outlier p95",
            ],
            [
                [
                    r["proj"],
                    r["n"],
                    _num(r["std__median"]),
                    _num(r["outlier_max_over_mean__median"]),
                    _num(r["outlier_p99_over_median__median"]),
                    _num(r["outlier_p999_over_median__median"]),
                    _num(r["g32_outlier_p95__median"]),
                    _num(r["g64_outlier_p95__median"]),
                ]
                for r in glob_w
            ],
        )
        lines.append("")
    glob_q = [r for r in doc["_quant_summary"] if r["scope"] == "global" and r["proj"] == "*"]
    if glob_q:
        lines += ["## Simulated weight quantization error (all linear matrices)", ""]
        fmt_info = {f["name"]: f for f in doc["formats"]}
        lines += _md_table(
            ["format", "weight quantizer", "bits", "ok", "errors", "rel_fro median", "rel_fro p99", "rel_max median"],
            [
                [
                    r["format"],
                    fmt_info.get(r["format"], {}).get("weight_quantizer", ""),
                    _num(fmt_info.get(r["format"], {}).get("format_bits")),
                    r["n"],
                    r["n_errors"],
                    _num(r["rel_fro__median"]),
                    _num(r["rel_fro__p99"]),
                    _num(r["rel_max__median"]),
                ]
                for r in glob_q
            ],
        )
        lines.append("")
    glob_d = [r for r in doc["_delta_summary"] if r["scope"] == "global" and r["proj"] == "*"]
    if glob_d:
        lines += ["## Deltas (A - B, per matrix)", ""]
        lines += _md_table(
            ["delta", "n", "delta rel_fro median", "ratio rel_fro median", "delta rel_max median"],
            [
                [
                    r["delta"],
                    r["n"],
                    _num(r["delta_rel_fro__median"]),
                    _num(r["ratio_rel_fro__median"]),
                    _num(r["delta_rel_max__median"]),
                ]
                for r in glob_d
            ],
        )
        lines.append("")
    if doc["hostile_layers"]:
        fmts = [f["name"] for f in doc["formats"]]
        lines += [
            "## Most quantization-hostile layers",
            "",
            "hostility = mean over formats of (layer median rel_fro / model median rel_fro).",
            "",
        ]
        lines += _md_table(
            ["rank", "layer", "hostility", *[f"{f} rel_fro" for f in fmts], "worst proj"],
            [
                [
                    h["rank"],
                    h["layer"],
                    _num(h["hostility"], ".3f"),
                    *[_num(h["rel_fro_median"].get(f)) for f in fmts],
                    h["worst_proj"] or "-",
                ]
                for h in doc["hostile_layers"]
            ],
        )
        lines.append("")
    if doc["_unmatched"]:
        lines += ["## Unmatched tensors (no naming rule; not analysed)", ""]
        shown = doc["_unmatched"][:20]
        lines += [f"- `{u['tensor']}` {u['dtype']} {u['shape']}: {u['reason']}" for u in shown]
        if len(doc["_unmatched"]) > len(shown):
            lines.append(f"- … {len(doc['_unmatched']) - len(shown)} more in unmatched_tensors.csv")
        lines.append("")
    if doc["warnings"]:
        lines += ["## Warnings", ""]
        lines += [f"- {w}" for w in doc["warnings"][:50]]
        if len(doc["warnings"]) > 50:
            lines.append(f"- … {len(doc['warnings']) - 50} more in warnings.csv")
        lines.append("")
    lines += ["Tables: " + ", ".join(f"`{n}.csv`" for n in doc["files"]) + " (columns: docs/weights.md).", ""]
    return "\n".join(lines)
