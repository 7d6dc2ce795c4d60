"""`quantsweep kpi-report`: recompute a summary's stability KPIs from its rows and judge them against thresholds.

Why a module of its own: the CLI function stays a thin wrapper (flags in, exit code out) and the document it
prints is built here, where tests can call it directly. Thresholds: the summary's `matrix.kpi`, then flags on top.
Exit codes: 0 gate passed, 3 gate failed, 2 unusable summary or flag (an `InputError` from `summary_io`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..errors import ExitCode, InputError
from ..kpis import GATES, KPI_NAMES, compute_kpis, evaluate_gate
from ..store.atomic import atomic_write_json, check_output_file
from .outputs import check_not_an_input
from .summary_io import load_summary


def kpi_report(
    summary_path: str | Path,
    overrides: dict[str, Any] | None = None,
    skip: list[str] | tuple[str, ...] = (),
    out: str | Path | None = None,
) -> dict[str, Any]:
    """The kpi-report document: `{summary_path, stability_kpis, thresholds, gate, exit_code}`; written to `out`
    too when given (the same document)."""
    bad = [s for s in skip if s not in KPI_NAMES]
    if bad:
        raise InputError(f"--skip-kpi: unknown KPI {bad[0]!r}; known: {', '.join(KPI_NAMES)}")
    if out is not None:
        check_output_file(out, "--out")  # before anything is read
        check_not_an_input([out], [summary_path], "--out")
    summary = load_summary(summary_path, overrides)
    kpis = compute_kpis(summary.rows, summary.canary, summary.thresholds)
    gate = evaluate_gate(kpis, summary.thresholds, tuple(skip))
    doc = {
        "summary_path": str(summary_path),
        "stability_kpis": kpis,
        "thresholds": summary.thresholds,
        "gate": gate,
        "exit_code": int(ExitCode.GATE_FAILED if gate["status"] == "FAIL" else ExitCode.OK),
    }
    if out is not None:
        atomic_write_json(out, doc)
    return doc


def render_table(doc: dict[str, Any], console: Any) -> None:
    """The human form: one line per KPI with its fraction, threshold and verdict, then the failures."""
    from rich.table import Table

    kpis, gate = doc["stability_kpis"], doc["gate"]
    t = Table(title=f"Stability KPIs of {doc['summary_path']}")
    for col in ("KPI", "value", "numerator / denominator", "threshold", "status"):
        t.add_column(col)
    checks = {c["kpi"]: c for c in gate["checks"]}
    for name in KPI_NAMES:
        k, c = kpis[name], checks[name]
        value = "null" if k["value"] is None else f"{k['value']:.6g}"
        op = ">=" if c["op"] == "min" else "<="
        style = {"PASS": "green", "FAIL": "bold red", "SKIPPED": "yellow"}[c["status"]]
        t.add_row(name, value, f"{k['numerator']} / {k['denominator']}", f"{op} {c['limit']:g} ({GATES[name][0]})",
                  f"[{style}]{c['status']}[/]")
    console.print(t)
    console.print(
        f"{kpis['rows']} rows, {kpis['groups']} groups, {kpis['repeated_executions']} repeated executions; "
        f"quality rule {kpis['quality_metric']} <= {kpis['max_quality']:g}",
        highlight=False,
    )
    by_reason = kpis.get("polluted_by_reason") or {}
    if by_reason:
        console.print("polluted rows by reason: " + ", ".join(f"{k} {v}" for k, v in by_reason.items()),
                      highlight=False)
    if gate["status"] == "PASS":
        console.print("[bold green]KPI gate PASS[/]")
    else:
        console.print("[bold red]KPI gate FAIL[/]")
        for f in gate["failures"]:
            console.print(f"  - {f}", markup=False, highlight=False, soft_wrap=True)
