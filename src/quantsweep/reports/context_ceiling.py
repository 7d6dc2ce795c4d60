"""`quantsweep context-ceiling`: the longest context each cell can serve, and the best cell per length (pure).

Why a module of its own: a recipe that is fine on 128-token windows may fall apart at 8k tokens (errors compound
along the sequence, and a quantized KV cache adds its own), and its memory grows with the length. With
`evaluation.seq_lens` every cell is measured at each length (`row.long_context.by_length`, see
engine/long_context.py); this report reads those measurements back and applies thresholds.

The rules, exactly (docs/hardware.md):
- a cell *meets* a length when every threshold given holds there: `kl_mean <= kl_max`, `ppl_ratio <=
  ppl_ratio_max`, peak device memory `<= memory_max_gb` (GB = 10^9 bytes; rows record MiB). A value that is
  missing or not finite fails its threshold (a CPU run has no device memory: it fails a memory threshold);
- the cell's *ceiling* is the longest length L such that it meets every measured length up to and including L
  (a failure at a shorter length caps it: a recipe that fails at 2k and passes at 8k is not safe at 8k);
  null when it fails the shortest;
- the *best cell per length* is, among the cells that meet that length, the lowest `kl_mean`, then the lowest
  `ppl_ratio`, then the lowest peak device memory, then the key;
- only valid rows take part (an invalid row, THERMAL included, is listed under `excluded` with its reasons).
Defaults: `kl_max` / `ppl_ratio_max` is the summary's `matrix.kpi.max_quality` for its `quality_metric`, the
other unset; no memory threshold.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from ..errors import InputError
from ..store.atomic import atomic_write_json, atomic_write_text, check_output_file
from .outputs import check_not_an_input, json_and_markdown
from .summary_io import load_summary

KIND = "quantsweep.context_ceiling"


def _num(x: Any) -> float | None:
    return float(x) if isinstance(x, int | float) and not isinstance(x, bool) and math.isfinite(x) else None


def _check_threshold(name: str, v: float | None) -> None:
    if v is not None and not (math.isfinite(v) and v > 0):
        raise InputError(f"{name}: expected a positive number, got {v}")


def judge_length(m: dict[str, Any], thresholds: dict[str, float | None]) -> list[str]:
    """Why a length's measurement fails the thresholds (empty when it meets them all)."""
    fails = []
    for metric, key in (("kl_mean", "kl_max"), ("ppl_ratio", "ppl_ratio_max")):
        limit = thresholds[key]
        if limit is None:
            continue
        v = _num(m.get(metric))
        if v is None:
            fails.append(f"{metric} not measured")
        elif v > limit:
            fails.append(f"{metric} {v:.4g} > {limit:g}")
    gb = thresholds["memory_max_gb"]
    if gb is not None:
        mb = _num(m.get("peak_device_mb"))
        if mb is None:
            fails.append("peak device memory not measured")
        elif mb * 2**20 > gb * 1e9:
            fails.append(f"peak device memory {mb * 2**20 / 1e9:.3g} GB > {gb:g} GB")
    return fails


def cell_ceiling(row: dict[str, Any], thresholds: dict[str, float | None]) -> dict[str, Any]:
    lengths = sorted((m for m in row["long_context"]["by_length"]), key=lambda m: m["seq_len"])
    judged = []
    ceiling = None
    capped_by = None
    for m in lengths:
        fails = judge_length(m, thresholds)
        judged.append({
            "seq_len": m["seq_len"], "meets": not fails, "fails": fails,
            "kl_mean": _num(m.get("kl_mean")), "ppl_ratio": _num(m.get("ppl_ratio")),
            "top1_agreement": _num(m.get("top1_agreement")), "peak_device_mb": _num(m.get("peak_device_mb")),
        })
        if capped_by is None:
            if fails:
                capped_by = {"seq_len": m["seq_len"], "fails": fails}
            else:
                ceiling = m["seq_len"]
    return {
        "key": row["key"],
        "cell_id": row.get("cell_id"),
        "kv_cache": row.get("kv_cache") or "none",
        "achieved_bits": _num(row.get("achieved_bits")),
        "ceiling": ceiling,
        "capped_by": capped_by,
        "lengths": judged,
    }


def context_ceiling(
    summary_path: str | Path,
    kl_max: float | None = None,
    ppl_ratio_max: float | None = None,
    memory_max_gb: float | None = None,
    out: str | Path | None = None,
) -> dict[str, Any]:
    for name, v in (("--kl-max", kl_max), ("--ppl-ratio-max", ppl_ratio_max), ("--memory-max-gb", memory_max_gb)):
        _check_threshold(name, v)
    outs = json_and_markdown(out)
    for o in outs:
        check_output_file(o, "--out")
    check_not_an_input(outs, [summary_path], "--out")
    summary = load_summary(summary_path)
    if kl_max is None and ppl_ratio_max is None:  # the sweep's own quality rule
        if summary.metric == "kl_mean":
            kl_max = summary.max_quality
        else:
            ppl_ratio_max = summary.max_quality
    thresholds = {"kl_max": kl_max, "ppl_ratio_max": ppl_ratio_max, "memory_max_gb": memory_max_gb}
    measured = [r for r in summary.rows if isinstance(r.get("long_context"), dict)]
    if not measured:
        raise InputError(f"{summary_path}: rows: no row has quality by length (`long_context`); run the matrix "
                         "with evaluation.seq_lens")
    cells, excluded = [], []
    for r in summary.rows:
        if not r.get("valid"):
            excluded.append({"key": r["key"], "why": "invalid: " + ", ".join(r.get("reasons") or [])})
        elif not isinstance(r.get("long_context"), dict) or not r["long_context"].get("by_length"):
            excluded.append({"key": r["key"], "why": "no measurements by length"})
        else:
            cells.append(cell_ceiling(r, thresholds))
    lengths = sorted({m["seq_len"] for c in cells for m in c["lengths"]})
    best = []
    for L in lengths:
        cands = [(c, m) for c in cells for m in c["lengths"] if m["seq_len"] == L and m["meets"]]
        inf = math.inf
        pick = min(cands, key=lambda cm: (cm[1]["kl_mean"] if cm[1]["kl_mean"] is not None else inf,
                                          cm[1]["ppl_ratio"] if cm[1]["ppl_ratio"] is not None else inf,
                                          cm[1]["peak_device_mb"] if cm[1]["peak_device_mb"] is not None else inf,
                                          cm[0]["key"]), default=None)
        best.append({"seq_len": L, "cells_meeting": len(cands),
                     "best": None if pick is None else pick[0]["key"],
                     "kl_mean": None if pick is None else pick[1]["kl_mean"],
                     "peak_device_mb": None if pick is None else pick[1]["peak_device_mb"]})
    doc = {
        "kind": KIND,
        "summary": {"path": str(summary.path), "sha256": summary.sha256},
        "thresholds": thresholds,
        "seq_lens": lengths,
        "cells": cells,
        "best_per_length": best,
        "excluded": excluded,
    }
    if out is not None:
        atomic_write_json(outs[0], doc)
        atomic_write_text(outs[1], render_markdown(doc))
    return doc


def _fmt(v: float | None, spec: str = ".4g") -> str:
    return "-" if v is None else format(v, spec)


def render_markdown(doc: dict[str, Any]) -> str:
    t = doc["thresholds"]
    rule = ", ".join(f"{k} {v:g}" for k, v in t.items() if v is not None) or "none"
    lines = ["# Context ceiling", "", f"Summary `{doc['summary']['path']}`; thresholds: {rule}.", "",
             "| cell | KV cache | ceiling | " + " | ".join(f"{L} tokens (KL / ppl ratio / MiB)" for L in doc["seq_lens"])
             + " |", "|---|---|---|" + "---|" * len(doc["seq_lens"])]
    for c in doc["cells"]:
        by = {m["seq_len"]: m for m in c["lengths"]}
        cols = []
        for L in doc["seq_lens"]:
            m = by.get(L)
            if m is None:
                cols.append("-")
                continue
            mark = "" if m["meets"] else " (fails)"
            cols.append(f"{_fmt(m['kl_mean'])} / {_fmt(m['ppl_ratio'])} / {_fmt(m['peak_device_mb'], '.1f')}{mark}")
        ceiling = "none" if c["ceiling"] is None else str(c["ceiling"])
        lines.append(f"| {c['key']} | {c['kv_cache']} | {ceiling} | " + " | ".join(cols) + " |")
    lines += ["", "Best cell per length (lowest KL among the cells that meet the thresholds):", ""]
    for b in doc["best_per_length"]:
        lines.append(f"- {b['seq_len']} tokens: " + ("no cell meets the thresholds" if b["best"] is None else
                                                     f"{b['best']} (KL {_fmt(b['kl_mean'])}; cells meeting "
                                                     f"it: {b['cells_meeting']})"))
    if doc["excluded"]:
        lines += ["", "Left out:", ""] + [f"- {e['key']}: {e['why']}" for e in doc["excluded"]]
    return "\n".join(lines) + "\n"
