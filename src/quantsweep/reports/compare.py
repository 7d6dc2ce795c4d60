"""`quantsweep compare`: two sweep summaries side by side, cell by cell, with a regression gate.

Cells are matched by their **axes** — quant pair, granularity, dataset size and bit budget — never by cell id: an id
hashes the model and the data, so the same cell on two models, two dates or two seq_lens has two ids, and those are
exactly the sweeps one compares. For every matched cell the document gives B − A for the achieved and storage bits
and for every numeric quality metric both rows have, the status change, and the per-layer recipe flips (decision
groups whose chosen format differs, read from the two manifests when they can be found). Cells found in only one
sweep are listed.

The gate (exit 3) fails when, for any cell matched in both sweeps, B is worse than A by more than a threshold:
`kl_mean` up by more than `max_kl_increase`, `ppl_ratio` up by more than `max_ppl_ratio_increase`,
`top1_agreement` down by more than `max_top1_drop`, achieved bits up by more than `max_bits_increase`; or a cell that
was `ok` in A is an error in B; or (with `fail_on_missing`) a cell of A is missing from B. Thresholds left unset
are not gated. Pure: no torch, nothing but the two summaries and their manifests.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import InputError
from ..store.atomic import atomic_write_json, atomic_write_text, check_output_dir, staged_outputs
from .outputs import check_not_an_input
from .summary_io import Summary, load_summary

KIND = "quantsweep.compare"
BITS = ("achieved_bits", "storage_bits")
SKIP_QUALITY = ("per_sequence",)
OUTPUTS = ("compare.json", "compare.md")


@dataclass(frozen=True)
class CompareGate:
    max_kl_increase: float | None = None
    max_ppl_ratio_increase: float | None = None
    max_top1_drop: float | None = None
    max_bits_increase: float | None = None
    fail_on_missing: bool = False

    def as_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


def axes_key(row: dict[str, Any]) -> tuple[str, str, str, float | None]:
    """(pair, granularity, size, budget); a quantized KV cache (axes.kv_cache) is part of the size slot
    (`tiny/kv-fp8`, as in the cell's key), so KV variants of one cell are told apart."""
    budget = row.get("effective_bits_target")
    kv = row.get("kv_cache")
    size = str(row.get("dataset_size")) + ("" if kv in (None, "none") else f"/kv-{kv}")
    return (str(row.get("pair")), str(row.get("granularity")), size, None if budget is None else float(budget))


def _label(key: tuple[str, str, str, float | None]) -> str:
    pair, gran, size, budget = key
    return f"{pair}/{gran}/{size}" + ("" if budget is None else f"@{budget:g}")


def _num(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


def _cells(s: Summary) -> dict[tuple, dict[str, Any]]:
    """The cells of a summary by axes; canary rows that are also sweep cells are rows like any other."""
    out: dict[tuple, dict[str, Any]] = {}
    for r in s.rows:
        out[axes_key(r)] = r  # a summary holds the latest row per cell; same axes twice cannot happen in one sweep
    return out


def _flips(a: Summary, ra: dict[str, Any], b: Summary, rb: dict[str, Any]) -> tuple[list[dict[str, Any]] | None, str | None]:
    ma, why_a = a.manifest(ra)
    mb, why_b = b.manifest(rb)
    if ma is None or mb is None:
        return None, "; ".join(x for x in (why_a and f"A: {why_a}", why_b and f"B: {why_b}") if x)
    chosen_a = {g.get("name"): g.get("chosen") for g in ma["layers"] if isinstance(g, dict)}
    chosen_b = {g.get("name"): g.get("chosen") for g in mb["layers"] if isinstance(g, dict)}
    flips = []
    for name in sorted(set(chosen_a) | set(chosen_b), key=str):
        if chosen_a.get(name) != chosen_b.get(name):
            flips.append({"layer": name, "a": chosen_a.get(name), "b": chosen_b.get(name)})
    return flips, None


def compare(path_a: str | Path, path_b: str | Path, gate: CompareGate) -> dict[str, Any]:
    a, b = load_summary(path_a), load_summary(path_b)
    cells_a, cells_b = _cells(a), _cells(b)
    matched = []
    failures: list[str] = []
    for key in sorted(set(cells_a) & set(cells_b), key=lambda k: (k[0], k[1], k[2], k[3] if k[3] is not None else -1)):
        ra, rb = cells_a[key], cells_b[key]
        entry: dict[str, Any] = {"cell": _label(key), "status": {"a": ra["status"], "b": rb["status"]}}
        deltas: dict[str, float] = {}
        for field in BITS:
            if _num(ra.get(field)) and _num(rb.get(field)):
                deltas[field] = rb[field] - ra[field]
        qa, qb = ra.get("quality") or {}, rb.get("quality") or {}
        for metric in sorted(set(qa) & set(qb)):
            if metric not in SKIP_QUALITY and _num(qa[metric]) and _num(qb[metric]):
                deltas[metric] = qb[metric] - qa[metric]
        entry["a"] = {k: (qa.get(k) if k not in BITS else ra.get(k)) for k in deltas}
        entry["b"] = {k: (qb.get(k) if k not in BITS else rb.get(k)) for k in deltas}
        entry["delta"] = deltas
        flips, why = (_flips(a, ra, b, rb) if ra["status"] == rb["status"] == "ok" else (None, "not ok in both"))
        entry["recipe_flips"] = flips
        if why:
            entry["recipe_flips_unavailable"] = why
        reasons = _regressions(entry, {**qa, **{k: ra.get(k) for k in BITS}}, gate)
        entry["regressions"] = reasons
        failures.extend(f"{entry['cell']}: {r}" for r in reasons)
        matched.append(entry)
    only_a = sorted(_label(k) for k in set(cells_a) - set(cells_b))
    only_b = sorted(_label(k) for k in set(cells_b) - set(cells_a))
    if gate.fail_on_missing:
        failures.extend(f"{c}: in A, missing from B" for c in only_a)
    return {
        "kind": KIND,
        "a": _describe(a),
        "b": _describe(b),
        "gate": {"thresholds": gate.as_dict(), "passed": not failures, "failures": failures},
        "matched": matched,
        "only_in_a": only_a,
        "only_in_b": only_b,
        "exit_code": 3 if failures else 0,
    }


def _regressions(entry: dict[str, Any], a_values: dict[str, Any], gate: CompareGate) -> list[str]:
    """Why B regresses from A for this cell; `a_values`: A's bits and quality (a gated metric A has and B lacks
    cannot be compared)."""
    out = []
    if entry["status"]["a"] == "ok" and entry["status"]["b"] != "ok":
        out.append(f"ok in A, {entry['status']['b']} in B")
    d = entry["delta"]
    checks = (
        ("kl_mean", gate.max_kl_increase, 1, "kl_mean up by"),
        ("ppl_ratio", gate.max_ppl_ratio_increase, 1, "ppl_ratio up by"),
        ("top1_agreement", gate.max_top1_drop, -1, "top1_agreement down by"),
        ("achieved_bits", gate.max_bits_increase, 1, "achieved_bits up by"),
    )
    both_ok = entry["status"]["a"] == entry["status"]["b"] == "ok"
    for metric, limit, sign, words in checks:
        if limit is None:
            continue
        if metric in d:
            if sign * d[metric] > limit * (1 + 1e-9) + 1e-12:  # a delta printed equal to the limit passes
                out.append(f"{words} {sign * d[metric]:.6g} (> {limit:g})")
        elif both_ok and _num(a_values.get(metric)):
            out.append(f"{metric} cannot be compared: missing or not finite in B")
    return out


def _describe(s: Summary) -> dict[str, Any]:
    doc = s.doc
    return {
        "summary": str(s.path),
        "name": (doc.get("matrix") or {}).get("name"),
        "model": (doc.get("model") or {}).get("name"),
        "hardware": (doc.get("hardware") or {}).get("fingerprint"),
        "commit": doc.get("commit"),
        "generated_at": doc.get("generated_at"),
        "cells": len(s.rows),
    }


def _fmt(v: Any) -> str:
    if v is None:
        return "—"
    if isinstance(v, float):
        return f"{v:+.4g}"
    return str(v)


def render_markdown(doc: dict[str, Any]) -> str:
    a, b = doc["a"], doc["b"]
    lines = [
        "# Sweep comparison",
        "",
        f"- A: `{a['summary']}` ({a['name']}, model {a['model']}, {a['cells']} cells, {a['generated_at']})",
        f"- B: `{b['summary']}` ({b['name']}, model {b['model']}, {b['cells']} cells, {b['generated_at']})",
        f"- gate: **{'passed' if doc['gate']['passed'] else 'FAILED'}**",
        "",
        "| cell | status A → B | Δ achieved bits | Δ kl_mean | Δ ppl_ratio | Δ top1 | recipe flips |",
        "|---|---|---|---|---|---|---|",
    ]
    for e in doc["matched"]:
        d = e["delta"]
        flips = e["recipe_flips"]
        lines.append(
            f"| {e['cell']} | {e['status']['a']} → {e['status']['b']} | {_fmt(d.get('achieved_bits'))} | "
            f"{_fmt(d.get('kl_mean'))} | {_fmt(d.get('ppl_ratio'))} | {_fmt(d.get('top1_agreement'))} | "
            f"{'n/a' if flips is None else len(flips)} |"
        )
    for title, cells in (("Only in A", doc["only_in_a"]), ("Only in B", doc["only_in_b"])):
        if cells:
            lines += ["", f"## {title}", ""] + [f"- {c}" for c in cells]
    flipped = [e for e in doc["matched"] if e["recipe_flips"]]
    if flipped:
        lines += ["", "## Recipe flips", ""]
        for e in flipped:
            lines.append(f"- {e['cell']}: " + ", ".join(f"`{f['layer']}` {f['a']} → {f['b']}" for f in e["recipe_flips"]))
    if doc["gate"]["failures"]:
        lines += ["", "## Gate failures", ""] + [f"- {f}" for f in doc["gate"]["failures"]]
    return "\n".join(lines) + "\n"


def write(doc: dict[str, Any], out_dir: str | Path) -> list[str]:
    """compare.json and compare.md into `out_dir`, together (both or neither); an unusable folder is an input
    error naming --out, a failed write a WriteError (exit 5) naming the file."""
    out = check_output_dir(out_dir, "--out")
    check_not_an_input([out / name for name in OUTPUTS], [doc["a"]["summary"], doc["b"]["summary"]], "--out")
    for name in OUTPUTS:
        if (out / name).is_dir() and not (out / name).is_symlink():
            raise InputError(f"--out {out}: {out / name} is a folder, where the comparison writes its {name}")
    with staged_outputs(out) as stage:
        atomic_write_json(stage / "compare.json", doc)
        atomic_write_text(stage / "compare.md", render_markdown(doc))
    return [str(out / name) for name in OUTPUTS]
