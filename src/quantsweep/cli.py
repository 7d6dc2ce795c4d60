"""The `quantsweep` command line (Typer). Heavy imports (torch, ModelOpt) happen inside the commands that need
them, so `dry-run`, `catalogue` and `--help` start instantly.

Exit codes (docs/cli.md): 0 ok, 1 internal error, 2 invalid input, 3 gate failed, 4 some cells failed,
130 interrupted.
"""

from __future__ import annotations

import contextlib
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any, Literal

import typer
from rich.console import Console
from rich.table import Table

from .errors import ExitCode, QuantsweepError

app = typer.Typer(
    name="quantsweep",
    help="Sweep LLM quantization choices (quant pairs x granularities x dataset sizes) with ModelOpt AutoQuantize.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},  # inherited by every command and sub-command
)

# Wide output when piped (Rich would default to 80 columns and fold tables and lines mid-value in CI logs); the
# progress lines on stderr are printed with soft_wrap (never folded) as well.
# No automatic highlighting: its regex is quadratic in a string's length (a long description would stall dry-run).
PIPED_WIDTH = 200
out = Console(soft_wrap=False, width=None if sys.stdout.isatty() else PIPED_WIDTH, highlight=False)
err = Console(stderr=True, width=None if sys.stderr.isatty() else PIPED_WIDTH, highlight=False)

MatrixOpt = Annotated[Path, typer.Option("--matrix", "-m", help="matrix file (.yaml, .yml or .json)")]
JsonOpt = Annotated[bool, typer.Option("--json", help="print one JSON document on stdout and nothing else there")]
MaxCellsOpt = Annotated[
    int, typer.Option("--max-cells", min=1, help="refuse a matrix expanding to more cells (default 10,000)")
]
# Constrained options are typed as Literal so that `--help` lists their choices (`<auto|cpu|cuda>`, not `<str>`)
# and a wrong value is refused by the parser (exit 2) with the choices named.
Device = Literal["auto", "cpu", "cuda"]
DeviceOpt = Annotated[Device | None, typer.Option("--device", help="override model.device")]


def _print_version(value: bool) -> None:
    if value:
        from . import __version__

        out.print(f"quantsweep {__version__}", highlight=False)
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool, typer.Option("--version", "-V", callback=_print_version, is_eager=True, help="print the version and exit")
    ] = False,
) -> None:
    """Sweep LLM quantization choices (quant pairs x granularities x dataset sizes) with ModelOpt AutoQuantize."""


def _emit_json(doc: Any) -> None:
    sys.stdout.write(json.dumps(doc, indent=2, sort_keys=False, default=str) + "\n")
    sys.stdout.flush()


# --- dry-run ----------------------------------------------------------------------------------------------
@app.command("dry-run")
def dry_run(matrix: MatrixOpt, max_cells: MaxCellsOpt = 10_000, as_json: JsonOpt = False) -> None:
    """Validate and expand a matrix; print the plan. Creates nothing, loads no model, uses no network."""
    from .dry_run import build_dry_run, render_dry_run

    doc = build_dry_run(matrix, max_cells)
    if as_json:
        _emit_json(doc)
    else:
        render_dry_run(doc, out)


# --- run --------------------------------------------------------------------------------------------------
@app.command("run")
def run(
    matrix: MatrixOpt,
    skip_canary: Annotated[bool, typer.Option("--skip-canary", help="do not run the canary gate")] = False,
    fail_fast: Annotated[bool, typer.Option("--fail-fast", help="stop at the first failed cell")] = False,
    rerun: Annotated[
        bool, typer.Option("--rerun", help="run every cell again (previous rows are moved to archive/)")
    ] = False,
    retry_errors: Annotated[bool, typer.Option("--retry-errors", help="run cells whose last row is an error")] = False,
    device: DeviceOpt = None,
    threads: Annotated[int | None, typer.Option("--threads", min=1, help="torch CPU threads")] = None,
    output_root: Annotated[str | None, typer.Option("--output-root", help="override output_root")] = None,
    baseline_root: Annotated[
        Path | None,
        typer.Option("--baseline-root", help="after the run, compare with this sweep's baseline there (docs/baselines.md)"),
    ] = None,
    engine: Annotated[
        Literal["shared", "naive"],
        typer.Option(
            "--engine",
            help="shared: one AutoQuantize call serves every cell that can share it (default); "
            "naive: one mtq.auto_quantize call per cell (the reference)",
        ),
    ] = "shared",
    executor: Annotated[
        Literal["local", "ray"] | None,
        typer.Option(
            "--executor",
            help="local: this process, one device (default); ray: workers on a Ray cluster (needs the optional ray extra). "
            "Overrides the matrix's execution.executor",
        ),
    ] = None,
    ray_address: Annotated[
        str | None,
        typer.Option("--ray-address", help="join this Ray cluster ('auto' or host:port); default: start a local one"),
    ] = None,
    workers: Annotated[
        int | None, typer.Option("--workers", min=1, help="Ray workers (default: one per --gpus-per-worker GPUs)")
    ] = None,
    gpus_per_worker: Annotated[
        float | None, typer.Option("--gpus-per-worker", min=0, help="GPUs per Ray worker (default 1, 0 without GPUs); 2 or more spread each worker's model over its GPUs")
    ] = None,
    max_cells: MaxCellsOpt = 10_000,
    no_baseline_cache: Annotated[
        bool,
        typer.Option("--no-baseline-cache", help="compute the unquantized model's outputs on the held-out samples "
                     "afresh, neither reading nor writing the cache of earlier sweeps (docs/running.md)"),
    ] = False,
    as_json: JsonOpt = False,
) -> None:
    """Run the canary gate, then AutoQuantize for every cell; resumes where a previous run stopped."""
    import os

    os.environ.setdefault("TQDM_DISABLE", "1")  # ModelOpt's own tqdm bars would interleave with ours
    if engine not in ("shared", "naive"):
        raise QuantsweepError("--engine must be shared or naive", ExitCode.INVALID_INPUT)
    if device not in (None, "auto", "cpu", "cuda"):
        raise QuantsweepError("--device must be auto, cpu or cuda", ExitCode.INVALID_INPUT)
    if executor not in (None, "local", "ray"):
        raise QuantsweepError("--executor must be local or ray", ExitCode.INVALID_INPUT)
    from .execution.sweep import RunOptions, run_sweep
    from .ui import RichReporter, render_rows_table

    _quiet_libraries()
    reporter = RichReporter(err, quiet=as_json)
    opts = RunOptions(
        skip_canary=skip_canary,
        fail_fast=fail_fast,
        rerun=rerun,
        retry_errors=retry_errors,
        device=device,
        threads=threads,
        output_root=output_root,
        engine=engine,
        executor=executor,
        ray_address=ray_address,
        workers=workers,
        gpus_per_worker=gpus_per_worker,
        max_cells=max_cells,
        baseline_cache=not no_baseline_cache,
    )
    try:
        with _library_prints_to_stderr():
            outcome = run_sweep(matrix, opts, reporter)
    finally:
        reporter.stop()
    summary = outcome.summary
    against = _against_baseline(baseline_root, outcome.summary_path, summary) if baseline_root is not None else None
    if as_json:
        _emit_json(
            {
                **({"baseline": against} if baseline_root is not None else {}),
                "summary": str(outcome.summary_path),
                "status": summary["status"],
                "exit_code": int(outcome.exit_code),
                "progress": summary["progress"],
                "canary": summary["canary"],
                "stability_kpis": summary["stability_kpis"],
                "rows_written": outcome.rows_written,
                "cells_skipped": outcome.cells_skipped,
                # what the lm-eval post-phase evaluated in this run: {"baseline": bool, "cells": [keys]} or null
                "lm_eval_phase": outcome.lm_eval_phase,
            }
        )
    else:
        render_rows_table(summary, out)
        can = summary.get("canary") or {}
        if can.get("passed") is False:
            out.print(f"[bold red]canary gate failed:[/] {', '.join(can.get('failed_reasons', []))}")
        out.print(f"summary: {outcome.summary_path}", highlight=False)
        if baseline_root is not None:
            _print_against_baseline(against)
    raise typer.Exit(int(outcome.exit_code))


def _against_baseline(root: Path, summary_path: Path, summary: dict[str, Any]) -> dict[str, Any]:
    """The finished sweep against its baseline (informational: the run's exit code is unchanged)."""
    from .reports.compare import CompareGate, compare as build
    from .store.baselines import BaselineStore

    try:
        store = BaselineStore(root)
        record, why = store.resolve(summary)
        if record is None:
            return {"record": None, "why": why}
        doc = build(store.summary_path(record), summary_path, CompareGate())
    except QuantsweepError as exc:  # the sweep itself is recorded and fine: say why there is no comparison
        return {"record": None, "why": f"the comparison failed: {exc}"}
    return {"record": record.id, "why": why, "comparison": doc}


def _print_against_baseline(against: dict[str, Any] | None) -> None:
    if not against or against.get("record") is None:
        out.print(f"baseline: none ({(against or {}).get('why')})", highlight=False)
        return
    doc = against["comparison"]
    out.print(f"baseline {against['record']} ({against['why']}): {len(doc['matched'])} cells matched, "
              f"{len(doc['only_in_a'])} only in the baseline, {len(doc['only_in_b'])} new", highlight=False)
    table = Table("cell", "status", "Δ bits", "Δ kl_mean", "Δ ppl_ratio", "recipe flips")
    for e in doc["matched"]:
        d = e["delta"]
        flips = e["recipe_flips"]
        table.add_row(e["cell"], f"{e['status']['a']} → {e['status']['b']}",
                      *(f"{d[k]:+.4g}" if k in d else "—" for k in ("achieved_bits", "kl_mean", "ppl_ratio")),
                      "n/a" if flips is None else str(len(flips)))
    out.print(table)


def _quiet_libraries() -> None:
    from .quiet import quiet_libraries

    quiet_libraries()


# --- report -----------------------------------------------------------------------------------------------
@app.command("report")
def report(
    cell: Annotated[Path, typer.Option("--cell", help="a cell folder containing manifest.json")],
    as_json: JsonOpt = False,
) -> None:
    """Regenerate a cell's layer-sensitivity-report.{md,json} from its manifest (the manifest is not touched)."""
    from .reports.layer_report import regenerate

    md, js = regenerate(cell)
    if as_json:
        _emit_json({"markdown": str(md), "json": str(js)})
    else:
        out.print(f"wrote {md} and {js}", highlight=False)


@contextlib.contextmanager
def _library_prints_to_stderr() -> Iterator[None]:
    """What libraries print to stdout while a command works goes to stderr: stdout carries `--json` alone.

    Why: ModelOpt prints "Loading extension modelopt_cuda_ext_fp8..." when a process first loads a CUDA kernel
    (seen in `export --json` on an H200: the JSON document came after that line and did not parse)."""
    with contextlib.redirect_stdout(sys.stderr):
        yield


@app.command("export")
def export(
    cell: Annotated[Path, typer.Option("--cell", help="a cell folder of a finished sweep (manifest.json, recipe.json)")],
    out_dir: Annotated[Path, typer.Option("--out", "-o", help="a new or empty folder for the checkpoint")],
    device: DeviceOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Export a cell's recipe as a unified Hugging Face checkpoint, verified against the cell. See docs/export.md."""
    from .export.checkpoint import export_cell

    _quiet_libraries()
    with _library_prints_to_stderr():
        doc = export_cell(cell, out_dir, device, lambda m: err.print(m, markup=False, highlight=False))
    if as_json:
        _emit_json({k: doc[k] for k in ("out", "cell", "quality", "checks", "calibration", "device", "seconds")})
    else:
        c = doc["checks"]
        out.print(f"wrote {doc['out']}: {c['quant_algo']}, {c['quantized_modules']} quantized modules, quality "
                  f"reproduced ({', '.join(f'{k} {v:.6g}' for k, v in doc['quality']['reproduced'].items())}), "
                  f"{c['dequantized_weights_compared']} weights dequantized and compared (largest difference "
                  f"{c['largest_weight_difference']:.3g})", highlight=False)


def _report_gate_failures(gate: str, failures: list[str]) -> None:
    """One line on stderr naming every failure (stdout may be carrying --json)."""
    if failures:
        err.print(f"{gate} FAILED: " + "; ".join(failures), markup=False, highlight=False, soft_wrap=True)


# --- kpi-report / render-report ------------------------------------------------------------------------------
SummaryOpt = Annotated[Path, typer.Option("--summary", "-s", help="a sweep-summary.json")]


@app.command("kpi-report")
def kpi_report(
    summary: SummaryOpt,
    out_file: Annotated[Path | None, typer.Option("--out", help="also write the JSON document to this file")] = None,
    max_missing_telemetry_rate: Annotated[float | None, typer.Option(help="override matrix.kpi")] = None,
    max_polluted_run_rate: Annotated[float | None, typer.Option(help="override matrix.kpi")] = None,
    min_frontier_success_rate: Annotated[float | None, typer.Option(help="override matrix.kpi")] = None,
    min_determinism_rate: Annotated[float | None, typer.Option(help="override matrix.kpi")] = None,
    min_recipe_stability_rate: Annotated[float | None, typer.Option(help="override matrix.kpi")] = None,
    quality_metric: Annotated[Literal["kl_mean", "ppl_ratio"] | None, typer.Option(help="override matrix.kpi")] = None,
    max_quality: Annotated[float | None, typer.Option(help="override matrix.kpi")] = None,
    skip_kpi: Annotated[list[str] | None, typer.Option("--skip-kpi", help="leave this KPI out of the gate")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Recompute the stability KPIs from a summary's rows and gate them (exit 0 pass, 3 fail). See docs/kpis.md."""
    from .reports.kpi_report import kpi_report as build
    from .reports.kpi_report import render_table

    overrides = {
        "max_missing_telemetry_rate": max_missing_telemetry_rate,
        "max_polluted_run_rate": max_polluted_run_rate,
        "min_frontier_success_rate": min_frontier_success_rate,
        "min_determinism_rate": min_determinism_rate,
        "min_recipe_stability_rate": min_recipe_stability_rate,
        "quality_metric": quality_metric,
        "max_quality": max_quality,
    }
    doc = build(summary, overrides, skip_kpi or [], out_file)
    if as_json:
        _emit_json(doc)
        _report_gate_failures("KPI gate", doc["gate"]["failures"])
    else:
        render_table(doc, out)
    raise typer.Exit(doc["exit_code"])


@app.command("render-report")
def render_report(
    summary: SummaryOpt,
    out_dir: Annotated[Path, typer.Option("--out", "-o", help="folder for report.md/.html, scatter.json, plots")],
    include_invalid: Annotated[
        bool, typer.Option("--include-invalid", help="show invalid rows in the views (never changes the KPIs)")
    ] = False,
    generated_at: Annotated[
        str | None, typer.Option("--generated-at", help="timestamp written into the report (default: now, UTC)")
    ] = None,
    bits: Annotated[
        Literal["achieved", "storage"],
        typer.Option("--bits", help="frontier x axis: achieved (AutoQuantize's budget bits) or storage (scales counted)"),
    ] = "achieved",
    as_json: JsonOpt = False,
) -> None:
    """Render a sweep report (markdown, HTML, scatter JSON, PNG/SVG plots) from a summary alone. See docs/reports.md."""
    from .reports.render import render_report as render

    if bits not in ("achieved", "storage"):
        raise QuantsweepError("--bits must be achieved or storage", ExitCode.INVALID_INPUT)
    res = render(summary, out_dir, include_invalid, generated_at, bits)
    if as_json:
        _emit_json(res)
    else:
        out.print(f"wrote {', '.join(res['files'])} to {res['out']} ({res['points']} points, gate {res['gate']})",
                  highlight=False)
        for note in res["notes"]:
            err.print(f"note: {note}", markup=False, highlight=False, soft_wrap=True)


@app.command("compare")
def compare(
    summaries: Annotated[
        list[Path], typer.Option("--summary", "-s", help="two sweep-summary.json files: A (reference), then B")
    ],
    out_dir: Annotated[Path | None, typer.Option("--out", "-o", help="folder for compare.md and compare.json")] = None,
    max_kl_increase: Annotated[float | None, typer.Option(help="gate: largest allowed rise of kl_mean (B - A)")] = None,
    max_ppl_ratio_increase: Annotated[float | None, typer.Option(help="gate: largest allowed rise of ppl_ratio")] = None,
    max_top1_drop: Annotated[float | None, typer.Option(help="gate: largest allowed fall of top1_agreement")] = None,
    max_bits_increase: Annotated[float | None, typer.Option(help="gate: largest allowed rise of achieved bits")] = None,
    fail_on_missing: Annotated[bool, typer.Option(help="gate: a cell of A missing from B fails")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Compare two sweeps cell by cell, matched by axes (exit 0, or 3 when the gate fails). See docs/compare.md."""
    from .reports.compare import CompareGate, render_markdown, write
    from .reports.compare import compare as build

    if len(summaries) != 2:
        raise QuantsweepError(f"compare takes two --summary files (A, then B), got {len(summaries)}",
                              ExitCode.INVALID_INPUT)
    for name, value in (("--max-kl-increase", max_kl_increase), ("--max-ppl-ratio-increase", max_ppl_ratio_increase),
                        ("--max-top1-drop", max_top1_drop), ("--max-bits-increase", max_bits_increase)):
        if value is not None and not value >= 0:
            raise QuantsweepError(f"{name} must be a number >= 0, got {value}", ExitCode.INVALID_INPUT)
    gate = CompareGate(max_kl_increase, max_ppl_ratio_increase, max_top1_drop, max_bits_increase, fail_on_missing)
    if out_dir is not None:
        from .store.atomic import check_output_dir

        check_output_dir(out_dir, "--out")  # before anything is read
    doc = build(summaries[0], summaries[1], gate)
    files = write(doc, out_dir) if out_dir is not None else []
    if as_json:
        _emit_json(doc)
    else:
        out.print(render_markdown(doc), markup=False, highlight=False)
        if files:
            out.print(f"wrote {', '.join(files)}", highlight=False)
    _report_gate_failures("compare gate", doc["gate"]["failures"])
    raise typer.Exit(doc["exit_code"])


@app.command("frontier")
def frontier(
    summary: SummaryOpt,
    out_file: Annotated[Path, typer.Option("--out", "-o", help="the artifact file to write")],
    storage_root: Annotated[
        Path | None, typer.Option("--storage-root", help="also keep it in this history, by hardware/lane/profile")
    ] = None,
    provenance_ref: Annotated[str | None, typer.Option(help="free text: where the run came from")] = None,
    include_invalid: Annotated[bool, typer.Option("--include-invalid", help="rank invalid rows too")] = False,
    bits: Annotated[Literal["achieved", "storage"], typer.Option("--bits", help="frontier x axis")] = "achieved",
    as_json: JsonOpt = False,
) -> None:
    """The frontier explorer artifact of a sweep (per group: frontier, roles, recommendation; keyed by hardware,
    lane and profile, with provenance). See docs/reports.md."""
    from .reports.frontier_artifact import build_artifact, write_artifact

    if bits not in ("achieved", "storage"):
        raise QuantsweepError("--bits must be achieved or storage", ExitCode.INVALID_INPUT)
    from .store.atomic import check_output_dir, check_output_file

    check_output_file(out_file, "--out")  # before anything is read
    if storage_root is not None:
        check_output_dir(storage_root, "--storage-root")
    doc = build_artifact(summary, provenance_ref, include_invalid, bits)
    files = write_artifact(doc, out_file, storage_root)
    if as_json:
        _emit_json({"files": files, "key": doc["key"], "groups": len(doc["groups"])})
    else:
        out.print(f"wrote {', '.join(files)} ({len(doc['groups'])} groups)", highlight=False)


# --- thermal-profile / context-ceiling (docs/hardware.md) ----------------------------------------------------
def _print_markdown(text: str) -> None:
    out.print(text, markup=False, highlight=False, soft_wrap=True)


@app.command("thermal-profile")
def thermal_profile(
    summaries: Annotated[str, typer.Option("--summaries", help="summaries of repeated sweeps, comma-separated, "
                                                               "in the order they ran")],
    cooldown_target_c: Annotated[float, typer.Option(help="temperature to cool down to between cells")] = 50.0,
    polluted_thermal_threshold_c: Annotated[
        float, typer.Option(help="a row whose GPU peak reaches this is thermally polluted")
    ] = 85.0,
    monotonic_window: Annotated[int, typer.Option(help="consecutive rises (falls for clocks) that make a drift")] = 2,
    out_file: Annotated[Path | None, typer.Option("--out", help="write the JSON here and the markdown beside it "
                                                                "(same name, .md)")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Per repeated cell across summaries: temperature and SM clock trends, monotonic drift, thermally polluted
    rows, and whether to cool down between cells. See docs/hardware.md."""
    from .reports.thermal_profile import render_markdown
    from .reports.thermal_profile import thermal_profile as build

    paths = [p.strip() for p in summaries.split(",") if p.strip()]
    doc = build(paths, cooldown_target_c, polluted_thermal_threshold_c, monotonic_window, out_file)
    if as_json:
        _emit_json(doc)
    else:
        _print_markdown(render_markdown(doc))


@app.command("context-ceiling")
def context_ceiling(
    summary: SummaryOpt,
    kl_max: Annotated[float | None, typer.Option(help="KL divergence limit (default: the sweep's quality rule)")] = None,
    ppl_ratio_max: Annotated[float | None, typer.Option(help="perplexity ratio limit")] = None,
    memory_max_gb: Annotated[float | None, typer.Option(help="peak device memory limit, GB (10^9 bytes)")] = None,
    out_file: Annotated[Path | None, typer.Option("--out", help="write the JSON here and the markdown beside it "
                                                                "(same name, .md)")] = None,
    as_json: JsonOpt = False,
) -> None:
    """The longest context each cell meets every threshold at (evaluation.seq_lens), and the best cell per length.
    See docs/hardware.md."""
    from .reports.context_ceiling import context_ceiling as build
    from .reports.context_ceiling import render_markdown

    doc = build(summary, kl_max, ppl_ratio_max, memory_max_gb, out_file)
    if as_json:
        _emit_json(doc)
    else:
        _print_markdown(render_markdown(doc))


@app.command("check-artifacts")
def check_artifacts(
    frontier_files: Annotated[
        list[Path] | None, typer.Option("--frontier", help="a frontier explorer artifact (repeatable)")
    ] = None,
    baseline_records: Annotated[
        list[Path] | None, typer.Option("--baseline-record", help="a baseline store's record.json (repeatable)")
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Validate artifacts against their schemas (docs/schemas/): exit 0 when all hold, 2 naming the first field
    that does not."""
    from .reports.artifacts import check_artifact

    todo = [("frontier", p) for p in frontier_files or []] + [("baseline-record", p) for p in baseline_records or []]
    if not todo:
        raise QuantsweepError("check-artifacts needs at least one --frontier or --baseline-record file",
                              ExitCode.INVALID_INPUT)
    results = [check_artifact(kind, path) for kind, path in todo]
    if as_json:
        _emit_json(results)
    else:
        for r in results:
            out.print(f"{r['file']}: valid {r['kind']}", highlight=False)


# --- baseline ---------------------------------------------------------------------------------------------
baseline_app = typer.Typer(help="Keep sweep summaries as baselines: add, pin, resolve, prune. See docs/baselines.md.",
                           no_args_is_help=True)
app.add_typer(baseline_app, name="baseline")
RootOpt = Annotated[Path, typer.Option("--storage-root", help="the baseline store's folder")]


def _summary_doc(path: Path) -> dict[str, Any]:
    from .reports.summary_io import load_summary

    return load_summary(path).doc


def _recordable(path: Path) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    """A summary and the manifests of its cells that can be found (cell id -> manifest); a manifest that is found
    but unusable is an input error (a record without it would lose that cell's per-layer recipe silently)."""
    from .reports.summary_io import load_summary

    s = load_summary(path)
    return s.doc, s.recordable_manifests()


def _record_out(record: Any, as_json: bool, verb: str) -> None:
    if as_json:
        _emit_json(record.to_dict())
    else:
        out.print(f"{verb} {record.id} ({record.matrix_name}, {record.cells} cells, pinned={record.pinned})",
                  highlight=False)


@baseline_app.command("add")
def baseline_add(
    root: RootOpt,
    summary: SummaryOpt,
    note: Annotated[str | None, typer.Option(help="a note kept with the record")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Record a sweep summary (unpinned: prune may remove it later)."""
    from .store.baselines import BaselineStore

    store = BaselineStore(root)
    store.check_writable()  # before anything is read
    doc, manifests = _recordable(summary)
    _record_out(store.add(summary, doc, pinned=False, note=note, manifests=manifests), as_json, "added")


@baseline_app.command("pin")
def baseline_pin(
    root: RootOpt,
    record: Annotated[str | None, typer.Option("--record", help="an existing record id")] = None,
    summary: Annotated[Path | None, typer.Option("--summary", "-s", help="record this summary, pinned")] = None,
    note: Annotated[str | None, typer.Option(help="a note kept with a new record")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Pin a record (or record a summary pinned): prune never removes it and resolve prefers it."""
    from .store.baselines import BaselineStore

    if (record is None) == (summary is None):
        raise QuantsweepError("baseline pin takes exactly one of --record ID or --summary FILE", ExitCode.INVALID_INPUT)
    store = BaselineStore(root)
    if summary is not None:
        store.check_writable()  # before anything is read
        doc, manifests = _recordable(summary)
        _record_out(store.add(summary, doc, pinned=True, note=note, manifests=manifests), as_json, "pinned")
    else:
        _record_out(store.set_pinned(str(record), True), as_json, "pinned")


@baseline_app.command("unpin")
def baseline_unpin(
    root: RootOpt,
    record: Annotated[str, typer.Option("--record", help="a record id")],
    as_json: JsonOpt = False,
) -> None:
    """Unpin a record (it becomes subject to prune's retention rule)."""
    from .store.baselines import BaselineStore

    _record_out(BaselineStore(root).set_pinned(record, False), as_json, "unpinned")


@baseline_app.command("list")
def baseline_list(root: RootOpt, as_json: JsonOpt = False) -> None:
    """Every record, oldest first."""
    from .store.baselines import BaselineStore

    records = BaselineStore(root).records()
    if as_json:
        _emit_json([r.to_dict() for r in records])
        return
    table = Table("id", "pinned", "matrix", "model", "hardware", "lane", "profile", "cells", "created")
    for r in records:
        table.add_row(r.id, "yes" if r.pinned else "", str(r.matrix_name), str(r.model), str(r.hardware_fingerprint),
                      str(r.lane), str(r.profile), str(r.cells), r.created_at)
    out.print(table)


@baseline_app.command("resolve")
def baseline_resolve(root: RootOpt, summary: SummaryOpt, as_json: JsonOpt = False) -> None:
    """The baseline of a summary: the newest pinned record of its group, else the newest (exit 2 when none)."""
    from .store.baselines import BaselineStore, identity

    store = BaselineStore(root)
    doc = _summary_doc(summary)
    record, why = store.resolve(doc)
    if record is None:
        raise QuantsweepError(f"{summary}: no baseline in {root}: {why}", ExitCode.INVALID_INPUT)
    result = {"record": record.to_dict(), "why": why, "summary": str(store.summary_path(record)),
              "matrix_changed": record.matrix_hash != identity(doc)["matrix_hash"]}
    if as_json:
        _emit_json(result)
    else:
        out.print(f"{record.id}: {why}; summary {result['summary']}"
                  + (" (the matrix differs from this sweep's)" if result["matrix_changed"] else ""), highlight=False)


@baseline_app.command("health")
def baseline_health(root: RootOpt, as_json: JsonOpt = False) -> None:
    """Counts, pins, ages and missing hardware fingerprints per group."""
    from .store.baselines import BaselineStore

    doc = BaselineStore(root).health()
    if as_json:
        _emit_json(doc)
        return
    out.print(f"{doc['records']} records, {doc['pinned']} pinned, {doc['missing_hardware_fingerprint']} without a "
              "hardware fingerprint", highlight=False)
    for g in doc["groups"]:
        out.print(f"  {g['matrix_name']} / {g['model']} / {g['hardware_fingerprint']} / {g['lane']} / {g['profile']}: "
                  f"{g['records']} records ({g['pinned']} pinned), newest {g['newest_age_days']} and oldest "
                  f"{g['oldest_age_days']} days old, {g['matrix_hashes']} matrix version(s)",
                  highlight=False)


@baseline_app.command("prune")
def baseline_prune(
    root: RootOpt,
    keep_last: Annotated[int, typer.Option(help="unpinned records kept per group")] = 10,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="list what would be removed")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Remove per group the unpinned records older than the newest --keep-last; pinned records always stay."""
    from .store.baselines import BaselineStore

    removed = BaselineStore(root).prune(keep_last, dry_run)
    if as_json:
        _emit_json({"removed": removed, "dry_run": dry_run})
    else:
        out.print(("would remove " if dry_run else "removed ") + (", ".join(removed) or "nothing"), highlight=False)


# --- catalogue --------------------------------------------------------------------------------------------
@app.command("catalogue")
def catalogue(as_json: JsonOpt = False) -> None:
    """List the quant pairs and granularity overlays a matrix can name."""
    from .catalogue import GRANULARITIES, QUANT_PAIRS
    from .quant_summary import calibration_method, describe_quantizer, format_bits

    pairs = []
    for p in QUANT_PAIRS.values():
        cfg = p.config()
        pairs.append(
            {
                **p.to_dict(),
                "format_bits": format_bits(cfg),
                "weight_quantizer": describe_quantizer(cfg, "*weight_quantizer"),
                "input_quantizer": describe_quantizer(cfg, "*input_quantizer"),
                "calibration": calibration_method(cfg) or "none",
            }
        )
    grans = [g.to_dict() for g in GRANULARITIES.values()]
    if as_json:
        from .overlay import to_jsonable

        _emit_json({"quant_pairs": pairs, "granularities": to_jsonable({"g": grans})["g"]})
        return
    t = Table(title="Quant pairs", show_lines=False)
    for col in ("name", "W/A", "bits", "weight quantizer", "input quantizer", "calib", "ModelOpt built-in", "flags"):
        t.add_column(col)
    for p in pairs:
        flags = ",".join(f for f in ("experimental", "needs_gpu", "extra") if p[f])
        t.add_row(
            p["name"],
            f"{p['weight']}/{p['activation']}",
            f"{p['format_bits']:g}",
            p["weight_quantizer"],
            p["input_quantizer"],
            str(p["calibration"]),
            p["base_builtin"] or "(derived)",
            flags,
        )
    out.print(t)
    g = Table(title="Granularity overlays")
    g.add_column("name")
    g.add_column("overrides")
    g.add_column("meaning")
    for gr in GRANULARITIES.values():
        from .overlay import to_jsonable

        g.add_row(gr.name, json.dumps(to_jsonable(gr.overrides())), gr.description)
    out.print(g)


# --- weights ----------------------------------------------------------------------------------------------
@app.command("weights")
def weights(
    model: Annotated[
        str, typer.Option("--model", help="embedded | synthetic:PRESET | a Hugging Face folder | a .safetensors file")
    ] = "embedded",
    formats: Annotated[
        list[str] | None,
        typer.Option("--formats", "-f", help="PAIR/GRANULARITY (repeat or comma-separate; 'none' = statistics only)"),
    ] = None,
    delta: Annotated[list[str] | None, typer.Option("--delta", help="A:B, per-matrix error of A minus B")] = None,
    out_dir: Annotated[Path | None, typer.Option("--out", "-o", help="output folder (default runs/weights/<model>)")] = None,
    strict: Annotated[bool, typer.Option("--strict/--no-strict", help="a fused split that does not add up is an error")] = True,
    rules: Annotated[Path | None, typer.Option("--rules", help="naming rules file (YAML/JSON)")] = None,
    top: Annotated[int, typer.Option("--top", min=0, help="hostile layers to show")] = 10,
    device: Annotated[Device, typer.Option("--device", help="where to fake-quantize")] = "cpu",
    threads: Annotated[int | None, typer.Option("--threads", min=1, help="torch CPU threads")] = None,
    fake_quant_backend: Annotated[
        Literal["auto", "modelopt", "torch"],
        typer.Option("--fake-quant-backend", help="NVFP4/MX: auto = PyTorch on a CPU, ModelOpt's kernels on CUDA"),
    ] = "auto",
    as_json: JsonOpt = False,
) -> None:
    """Data-free weight statistics and simulated weight-quantization error per matrix (docs/weights.md)."""
    import os

    os.environ.setdefault("TQDM_DISABLE", "1")
    from .weights.command import RichProgress, WeightsOptions, hostile_table, run_weights

    _quiet_libraries()
    opts = WeightsOptions(model, formats, delta, out_dir, strict, rules, top, device, threads, fake_quant_backend)
    res = run_weights(opts, RichProgress(err, quiet=as_json))
    if as_json:
        _emit_json({k: res.doc[k] for k in ("out_dir", "summary_md", "manifest", "files", "rows", "error_rows",
                                              "parquet", "warnings", "hostile_layers", "seconds")}
                   | {"formats": res.formats, "deltas": [d["name"] for d in res.doc["deltas"]]})
        return
    if res.hostile:
        out.print(hostile_table(res))
    for w in res.warnings:
        err.print(f"warning: {w}", markup=False, highlight=False)
    rows = res.doc["rows"]
    out.print(f"wrote {res.out_dir}: {rows['matrix_stats']} matrices, {rows['quant_error']} quantization rows "
              f"({res.doc['error_rows']} errors), summary {res.doc['summary_md']}", highlight=False)


def main() -> None:
    """Console entry point: maps errors to documented exit codes, with a one-line message on stderr."""
    import click

    try:
        from typer._click import exceptions as typer_exc  # typer >= 0.16 vendors part of click
    except ImportError:  # pragma: no cover - older typer
        typer_exc = click.exceptions

    def _classes(name: str) -> tuple[type[BaseException], ...]:
        found = {getattr(mod, name, None) for mod in (click.exceptions, typer_exc)}
        return tuple(c for c in found if isinstance(c, type))

    usage_errors, aborts, exits = _classes("ClickException"), _classes("Abort"), (typer.Exit, *_classes("Exit"))
    try:
        rc = app(standalone_mode=False)
    except QuantsweepError as exc:
        err.print("[bold red]error:[/] ", end="")
        err.print(str(exc), markup=False, highlight=False, soft_wrap=True)
        sys.exit(int(exc.exit_code))
    except exits as exc:
        rc = exc.exit_code
    except (KeyboardInterrupt, *aborts):
        rc = int(ExitCode.INTERRUPTED)
    except usage_errors as exc:
        exc.show()
        # bare `quantsweep` prints the help (NoArgsIsHelpError): that is not an error
        sys.exit(0 if type(exc).__name__ == "NoArgsIsHelpError" else int(ExitCode.INVALID_INPUT))
    except OSError as exc:
        # The file system failed under us (disk full, quota, read-only, I/O error) somewhere the writing layer does
        # not reach (a library writing its own files): one line naming the file, not a traceback. Anything else is
        # a bug and keeps its traceback.
        import errno

        from .store.atomic import write_error

        if exc.errno not in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS, errno.EIO):
            raise

        werr = write_error(exc, getattr(exc, "filename", None) or "a file", "input/output failed")
        err.print("[bold red]error:[/] ", end="")
        err.print(str(werr), markup=False, highlight=False, soft_wrap=True)
        sys.exit(int(werr.exit_code))
    # With standalone_mode=False, click returns the code of a `typer.Exit` instead of raising it; typer turns a
    # Ctrl-C into Exit(130) the same way.
    rc = rc if isinstance(rc, int) else 0
    if rc == ExitCode.INTERRUPTED:
        err.print("interrupted; what was recorded is intact: run the same command again to resume", markup=False,
                  highlight=False, soft_wrap=True)
    sys.exit(rc)


if __name__ == "__main__":
    main()
