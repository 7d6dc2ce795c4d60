"""`quantsweep run`: the canary gate, every cell in turn, resume, and the sweep summary.

Recording order per cell (what makes a crash harmless): cell artifacts (manifest, reports, recipe) are written
atomically, then the row is appended to `rows.jsonl` and fsynced (the commit point), then `sweep-summary.json`
is rewritten atomically. A cell without a row is redone on the next run; a cell with a row is skipped.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from ..errors import ExitCode, InputError
from ..gitinfo import git_commit
from ..kpis import compute_kpis
from ..matrix_io import load_matrix
from ..planning import Plan, expand
from ..schema import SCHEMA_VERSION
from ..store.atomic import atomic_write_json
from ..store.rows import RowLog, latest_by_cell, read_rows
from ..store.validity import finalize_rows
from .progress import Reporter
from .records import RECIPE_FILE, CellRecord, write_artifacts

ROWS_FILE = "rows.jsonl"
SUMMARY_FILE = "sweep-summary.json"
CANARY_FILE = "canary.json"
__all__ = ["RECIPE_FILE", "Reporter", "RunOptions", "SweepOutcome", "run_sweep"]


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
    # distributed execution; None = what the matrix's `execution:` section says (the flags win)
    executor: str | None = None
    ray_address: str | None = None
    workers: int | None = None
    gpus_per_worker: float | None = None


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
        execution = {
            k: v
            for k, v in {
                "executor": options.executor,
                "ray_address": options.ray_address,
                "workers": options.workers,
                "gpus_per_worker": options.gpus_per_worker,
            }.items()
            if v is not None
        }
        if execution:
            overrides["execution"] = m.execution.model_copy(update=execution)
        self.matrix = m.model_copy(update=overrides) if overrides else m
        self.plan: Plan = expand(self.matrix, str(matrix_path))
        self.sweep_dir = Path(self.plan.sweep_dir)
        self.rows_path = self.sweep_dir / ROWS_FILE
        self.summary_path = self.sweep_dir / SUMMARY_FILE
        self.commit = git_commit()
        self.executor: Any = None
        self.info: dict[str, Any] | None = None  # model, dataset, baseline, setup: known once the executor started
        self.canary: dict[str, Any] | None = None

    # -- summary -------------------------------------------------------------------------------------------
    def _rows_in_plan(self) -> list[dict[str, Any]]:
        latest = latest_by_cell(read_rows(self.rows_path))
        return [latest[c.id] for c in self.plan.cells if c.id in latest]

    def write_summary(self, status: str) -> dict[str, Any]:
        from .telemetry import hardware_fingerprint, library_versions

        rows = finalize_rows(self._rows_in_plan())
        kpis = compute_kpis(rows, self.canary, self.matrix.kpi.model_dump(mode="json"))
        # A run with nothing left to do loads no model: keep what the previous summary knew about it.
        previous = _read_json(self.summary_path) if self.info is None else None
        keys = ("model", "dataset", "setup", "baseline", "execution")
        known = self.info if self.info is not None else {k: (previous or {}).get(k) for k in keys}
        execution = self.executor.describe() if self.executor is not None else known.get("execution")
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
            "model": known.get("model"),
            "dataset": known.get("dataset"),
            "setup": known.get("setup") or {},
            "baseline": known.get("baseline"),
            "execution": execution or {"executor": "local"},
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

    # -- recording -----------------------------------------------------------------------------------------
    def _commit(self, record: CellRecord) -> dict[str, Any]:
        """Artifacts first (unless the worker already wrote them), then the row: the commit point."""
        if not record.artifacts_written:
            write_artifacts(record)
        RowLog(self.rows_path).append(record.row)
        return record.row

    def _make_executor(self) -> Any:
        ex = self.matrix.execution
        if ex.executor == "ray":
            from .ray_executor import RayExecutor

            return RayExecutor(self.matrix, self.plan, self.options.engine, self.options.threads, self.reporter)
        from .local_executor import LocalExecutor

        return LocalExecutor(self.matrix, self.plan, self.options.engine, self.options.threads, self.reporter)

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
            self.executor = self._make_executor()
            try:
                return self._run_todo(todo, latest, skipped, canary_path)
            finally:
                self.executor.close()

    def _run_todo(
        self, todo: list[Any], latest: dict[str, dict[str, Any]], skipped: int, canary_path: Path
    ) -> SweepOutcome:
        opts = self.options
        self.info = self.executor.start()
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
            canary, record = self.executor.canary(canary_cell, attempt_of.get(canary_cell.id, 0) + 1)
            self.canary = canary
            atomic_write_json(canary_path, canary)
            if not canary["passed"]:
                self.reporter.message("canary gate FAILED: " + ", ".join(canary["failed_reasons"]))
                summary = self.write_summary("canary_failed")
                return SweepOutcome(self.summary_path, summary, ExitCode.GATE_FAILED, 0, skipped, canary)
            if record is not None and canary_cell in todo and self.matrix.repeats <= canary["repeats"]:
                row = self._commit(record)
                self.reporter.end_cell(row)
                written += 1
                todo.remove(canary_cell)
                self.write_summary("running")
        elif opts.skip_canary and not self.canary:
            self.canary = {"passed": None, "skipped": True, "failed_reasons": []}
        self.reporter.start_cells(len(self.plan.cells), len(self.plan.cells) - len(todo))
        for record in self.executor.run(todo, attempt_of):
            row = self._commit(record)
            written += 1
            self.reporter.end_cell(row)
            summary = self.write_summary("running")
            if opts.fail_fast and row["status"] != "ok":
                self.reporter.message(f"--fail-fast: stopping after the failed cell {row['key']}")
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

