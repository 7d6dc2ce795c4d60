"""`quantsweep run`: the canary gate, every cell in turn, resume, and the sweep summary.

Recording order per cell (what makes a crash harmless): cell artifacts (manifest, reports, recipe) are written
atomically, then the row is appended to `rows.jsonl` and fsynced (the commit point), then `sweep-summary.json`
is rewritten atomically. A cell without a row is redone on the next run; a cell with a row is skipped.
"""

from __future__ import annotations

import contextlib
import fcntl
import math
import os
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from ..errors import ExitCode, InputError
from ..gitinfo import git_commit
from ..kpis import compute_kpis
from ..matrix_io import load_matrix
from ..planning import Cell, Plan, expand
from ..reports.layer_report import MANIFEST, write_reports
from ..schema import SCHEMA_VERSION
from ..store.atomic import atomic_write_json
from ..store.rows import RowLog, latest_by_cell, read_rows
from ..store.validity import finalize_rows, missing_telemetry
from .cell_runner import CellRun, SweepContext, build_manifest, build_row, determinism, execute_cell

ROWS_FILE = "rows.jsonl"
SUMMARY_FILE = "sweep-summary.json"
CANARY_FILE = "canary.json"
RECIPE_FILE = "recipe.json"


@dataclass
class RunOptions:
    skip_canary: bool = False
    fail_fast: bool = False
    rerun: bool = False
    retry_errors: bool = False
    device: str | None = None
    threads: int | None = None
    output_root: str | None = None
    engine: str = "shared"  # "shared" (one AutoQuantize call per group of cells) or "naive" (one per cell)


class Reporter:
    """What the sweep tells the user; the CLI plugs a Rich implementation in, tests a silent one."""

    def message(self, text: str) -> None: ...
    def start_cells(self, total: int, done: int) -> None: ...
    def start_cell(self, cell: Cell, label: str, steps: dict[str, int]) -> None: ...
    def step(self, phase: str) -> None: ...
    def end_cell(self, row: dict[str, Any]) -> None: ...
    def finish(self, summary: dict[str, Any]) -> None: ...


@dataclass
class SweepOutcome:
    summary_path: Path
    summary: dict[str, Any]
    exit_code: ExitCode
    rows_written: int = 0
    cells_skipped: int = 0
    canary: dict[str, Any] | None = None
    warnings: list[str] = field(default_factory=list)


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


@contextlib.contextmanager
def sweep_lock(sweep_dir: Path) -> Iterator[None]:
    """One `run` per sweep folder at a time (two writers would interleave rows)."""
    sweep_dir.mkdir(parents=True, exist_ok=True)
    fh = open(sweep_dir / ".lock", "w")  # noqa: SIM115 - held for the whole run
    try:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            raise InputError(f"{sweep_dir}: another `quantsweep run` is using this sweep folder") from None
        fh.write(str(os.getpid()))
        fh.flush()
        yield
    finally:
        fh.close()


def _archive_previous(sweep_dir: Path) -> Path | None:
    """--rerun: move the previous rows/summary/canary aside instead of deleting anything."""
    existing = [sweep_dir / n for n in (ROWS_FILE, SUMMARY_FILE, CANARY_FILE) if (sweep_dir / n).exists()]
    if not existing:
        return None
    dest = sweep_dir / "archive" / datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    dest.mkdir(parents=True, exist_ok=True)
    for p in existing:
        shutil.move(str(p), dest / p.name)
    return dest


class Sweep:
    def __init__(self, matrix_path: Path, options: RunOptions, reporter: Reporter):
        self.matrix_path = matrix_path
        self.options = options
        self.reporter = reporter
        m = load_matrix(matrix_path)
        overrides: dict[str, Any] = {}
        if options.output_root:
            overrides["output_root"] = options.output_root
        if options.device:
            overrides["model"] = m.model.model_copy(update={"device": options.device})
        self.matrix = m.model_copy(update=overrides) if overrides else m
        self.plan: Plan = expand(self.matrix, str(matrix_path))
        self.sweep_dir = Path(self.plan.sweep_dir)
        self.rows_path = self.sweep_dir / ROWS_FILE
        self.summary_path = self.sweep_dir / SUMMARY_FILE
        self.commit = git_commit()
        self.ctx: SweepContext | None = None
        self.canary: dict[str, Any] | None = None
        self.setup: dict[str, Any] = {}

    # -- summary -------------------------------------------------------------------------------------------
    def _rows_in_plan(self) -> list[dict[str, Any]]:
        latest = latest_by_cell(read_rows(self.rows_path))
        return [latest[c.id] for c in self.plan.cells if c.id in latest]

    def write_summary(self, status: str) -> dict[str, Any]:
        from .telemetry import hardware_fingerprint, library_versions

        rows = finalize_rows(self._rows_in_plan())
        kpis = compute_kpis(rows, self.canary, self.matrix.kpi.model_dump(mode="json"))
        # A run with nothing left to do loads no model: keep what the previous summary knew about it.
        previous = _read_json(self.summary_path) if self.ctx is None else None
        carried = {k: (previous or {}).get(k) for k in ("model", "dataset", "setup", "baseline")}
        doc = {
            "schema_version": SCHEMA_VERSION,
            "kind": "quantsweep.sweep_summary",
            "generated_at": _now(),
            "status": status,
            "matrix_file": str(self.matrix_path),
            "commit": self.commit,
            "hardware": hardware_fingerprint(),
            "versions": library_versions(),
            "matrix": self.matrix.model_dump(mode="json"),
            "labels": dict(self.matrix.labels),
            "model": self.ctx.loaded.info if self.ctx else carried["model"],
            "dataset": self.ctx.samples.describe() if self.ctx else carried["dataset"],
            "setup": self.setup if self.ctx else (carried["setup"] or {}),
            "baseline": carried["baseline"]
            if self.ctx is None
            else {
                "perplexity": self.ctx.baseline.perplexity,
                "mean_nll": self.ctx.baseline.mean_nll,
                "eval_tokens": self.ctx.baseline.tokens,
                "kl_method": self.ctx.baseline.method,
            },
            "canary": self.canary,
            "plan": {
                "cells": len(self.plan.cells),
                "cell_ids": [c.id for c in self.plan.cells],
                "warnings": self.plan.warnings,
            },
            "progress": {
                "done": len(rows),
                "total": len(self.plan.cells),
                "errors": sum(1 for r in rows if r.get("status") != "ok"),
                "invalid": sum(1 for r in rows if not r.get("valid")),
            },
            "rows": rows,
            "stability_kpis": kpis,
        }
        atomic_write_json(self.summary_path, doc)
        return doc

    # -- setup ---------------------------------------------------------------------------------------------
    def _prepare(self) -> SweepContext:
        import torch

        from ..engine.data import build_samples, make_batches
        from ..engine.models import load_model
        from ..engine.quality import baseline_outputs
        from .telemetry import library_versions

        m = self.matrix
        t = time.perf_counter()
        self.reporter.message(f"loading model ({m.model.source})")
        loaded = load_model(m.model, progress=self.reporter.message)
        self.setup["model_load_s"] = round(time.perf_counter() - t, 3)
        needed = max(max(c.calib_samples, c.score_samples) for c in self.plan.cells)
        t = time.perf_counter()
        self.reporter.message(f"tokenising dataset ({m.dataset.source})")
        samples = build_samples(m.dataset, loaded.tokenizer, needed)
        self.setup["data_s"] = round(time.perf_counter() - t, 3)
        eval_batches = make_batches(samples.eval_ids, m.autoquant.batch_size, loaded.device, labels=False)
        t = time.perf_counter()
        self.reporter.message("computing baseline outputs on the held-out samples")
        base = baseline_outputs(loaded.model, eval_batches)
        self.setup["baseline_s"] = round(time.perf_counter() - t, 3)
        self.setup["torch_threads"] = torch.get_num_threads()
        return SweepContext(
            engine=self.options.engine,
            matrix=m,
            loaded=loaded,
            samples=samples,
            eval_batches=eval_batches,
            baseline=base,
            versions=library_versions(),
        )

    # -- recording -----------------------------------------------------------------------------------------
    def _record(self, runs: list[CellRun], attempt: int, from_canary: bool = False) -> dict[str, Any]:
        assert self.ctx is not None
        first = runs[0]
        det = determinism(runs, self.matrix.canary.score_rtol) if len(runs) > 1 else None
        cell_dir = Path(first.cell.path)
        manifest = build_manifest(self.ctx, first)
        if first.result is not None:
            atomic_write_json(cell_dir / RECIPE_FILE, first.result.recipe_config)
        atomic_write_json(cell_dir / MANIFEST, manifest)
        write_reports(cell_dir, manifest)
        row = build_row(self.ctx, first, det, attempt)
        row["from_canary"] = from_canary
        RowLog(self.rows_path).append(row)
        return row

    def _run_cell(self, cell: Cell, times: int) -> list[CellRun]:
        assert self.ctx is not None
        runs = []
        for i in range(times):
            label = cell.key + (f" (repeat {i + 1}/{times})" if times > 1 else "")
            steps = {"calibrate": cell.calib_steps, "score": cell.score_steps}
            self.reporter.start_cell(cell, label, steps)
            runs.append(execute_cell(self.ctx, cell, on_step=self.reporter.step))
        return runs

    def _executions(self, todo: list[Cell]) -> Iterator[tuple[Cell, list[CellRun]]]:
        """(cell, its runs) in execution order, from the shared engine or one AutoQuantize call per cell."""
        if self.options.engine == "shared" and self.matrix.repeats == 1:
            from .shared_runner import execute_shared

            assert self.ctx is not None

            def on_union(call: Any, n_cells: int) -> None:
                label = f"shared search: {len(call.formats)} formats for {n_cells} cells ({call.key})"
                steps = {"calibrate": call.calib_steps * len(call.formats), "score": call.score_steps}
                self.reporter.start_cell(None, label, steps)  # type: ignore[arg-type]

            for run in execute_shared(self.ctx, todo, on_step=self.reporter.step, on_union=on_union):
                yield run.cell, [run]
            return
        if self.options.engine == "shared":
            self.reporter.message("repeats > 1: using one AutoQuantize call per execution (naive engine)")
        for cell in todo:
            yield cell, self._run_cell(cell, self.matrix.repeats)

    # -- canary --------------------------------------------------------------------------------------------
    def _run_canary(self, cell: Cell) -> tuple[dict[str, Any], list[CellRun]]:
        assert self.ctx is not None
        spec = self.matrix.canary
        reasons: list[str] = []
        base = self.ctx.baseline
        ppl = base.perplexity
        if not math.isfinite(base.mean_nll):
            reasons.append("BASELINE_LOSS_NONFINITE")
        elif ppl > spec.max_baseline_perplexity:
            reasons.append("BASELINE_PERPLEXITY_TOO_HIGH")
        runs: list[CellRun] = []
        det = None
        if not reasons:
            self.reporter.message(f"canary: {cell.key} x{spec.repeats}")
            runs = self._run_cell(cell, spec.repeats)
            errors = [r.error for r in runs if r.status != "ok"]
            if errors:
                reasons.append("CANARY_CELL_ERROR")
            det = determinism(runs, spec.score_rtol)
            if det is not None and not det["deterministic"] and not errors:
                reasons.append("NONDETERMINISTIC")
            missing = sorted({f for r in runs if r.status == "ok" for f in missing_telemetry(r.telemetry)})
            if missing:
                reasons.append("MISSING_TELEMETRY")
        else:
            missing, errors = [], []
        canary = {
            "passed": not reasons,
            "failed_reasons": reasons,
            "cell": cell.key,
            "cell_id": cell.id,
            "repeats": spec.repeats,
            "baseline": {"perplexity": ppl, "mean_nll": base.mean_nll, "max_perplexity": spec.max_baseline_perplexity},
            "determinism": det,
            "missing_telemetry": missing,
            "errors": errors,
            "runs": [
                {
                    "status": r.status,
                    "fingerprint": r.fingerprint(),
                    "total_score": r.result.total_score if r.result else None,
                    "wall_s": r.telemetry.get("wall_s"),
                }
                for r in runs
            ],
            "finished_at": _now(),
        }
        return canary, runs

    # -- main ----------------------------------------------------------------------------------------------
    def run(self) -> SweepOutcome:
        opts = self.options
        with sweep_lock(self.sweep_dir):
            if opts.rerun:
                moved = _archive_previous(self.sweep_dir)
                if moved:
                    self.reporter.message(f"--rerun: previous results moved to {moved}")
            log = RowLog(self.rows_path)
            torn = log.repair()
            if torn:
                self.reporter.message(f"repaired {self.rows_path}: dropped a partial last line ({torn} bytes)")
            latest = latest_by_cell(read_rows(self.rows_path))
            done_ids = {
                cid for cid, r in latest.items() if r.get("status") == "ok" or not opts.retry_errors
            }
            todo = [c for c in self.plan.cells if c.id not in done_ids]
            skipped = len(self.plan.cells) - len(todo)
            canary_path = self.sweep_dir / CANARY_FILE
            previous_canary = _read_json(canary_path)
            if previous_canary and previous_canary.get("cell_id") == getattr(self.plan.canary_cell, "id", None):
                self.canary = previous_canary
            if not todo:
                self.reporter.message(f"all {len(self.plan.cells)} cells already have rows; nothing to run")
                summary = self.write_summary("complete")
                return SweepOutcome(self.summary_path, summary, self._exit_code(summary), 0, skipped, self.canary)
            if opts.threads:
                import torch

                torch.set_num_threads(opts.threads)
            self.ctx = self._prepare()
            written = 0
            attempt_of = {cid: int(r.get("attempt", 1)) for cid, r in latest.items()}
            canary_cell = self.plan.canary_cell
            run_canary = (
                not opts.skip_canary
                and canary_cell is not None
                and not (self.canary and self.canary.get("passed"))
            )
            if run_canary:
                assert canary_cell is not None
                canary, runs = self._run_canary(canary_cell)
                self.canary = canary
                atomic_write_json(canary_path, canary)
                if not canary["passed"]:
                    self.reporter.message("canary gate FAILED: " + ", ".join(canary["failed_reasons"]))
                    summary = self.write_summary("canary_failed")
                    return SweepOutcome(self.summary_path, summary, ExitCode.GATE_FAILED, 0, skipped, canary)
                if canary_cell in todo and self.matrix.repeats <= len(runs):
                    row = self._record(runs, attempt_of.get(canary_cell.id, 0) + 1, from_canary=True)
                    self.reporter.end_cell(row)
                    written += 1
                    todo.remove(canary_cell)
                    self.write_summary("running")
            elif opts.skip_canary and not self.canary:
                self.canary = {"passed": None, "skipped": True, "failed_reasons": []}
            self.reporter.start_cells(len(self.plan.cells), len(self.plan.cells) - len(todo))
            for cell, runs in self._executions(todo):
                row = self._record(runs, attempt_of.get(cell.id, 0) + 1)
                written += 1
                self.reporter.end_cell(row)
                summary = self.write_summary("running")
                if opts.fail_fast and row["status"] != "ok":
                    self.reporter.message(f"--fail-fast: stopping after the failed cell {cell.key}")
                    summary = self.write_summary("stopped")
                    return SweepOutcome(self.summary_path, summary, ExitCode.CELLS_FAILED, written, skipped, self.canary)
            summary = self.write_summary("complete")
            self.reporter.finish(summary)
            return SweepOutcome(self.summary_path, summary, self._exit_code(summary), written, skipped, self.canary)

    @staticmethod
    def _exit_code(summary: dict[str, Any]) -> ExitCode:
        return ExitCode.CELLS_FAILED if summary["progress"]["errors"] else ExitCode.OK


def _read_json(path: Path) -> dict[str, Any] | None:
    import json

    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return doc if isinstance(doc, dict) else None


def run_sweep(matrix_path: Path, options: RunOptions, reporter: Reporter | None = None) -> SweepOutcome:
    return Sweep(matrix_path, options, reporter or Reporter()).run()


StepHook = Callable[[str], None]
