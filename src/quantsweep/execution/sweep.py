"""`quantsweep run`: the canary gate, every cell in turn, resume, and the sweep summary.

Recording order per cell (what makes a crash harmless): cell artifacts (manifest, reports, recipe) are written
atomically, then the row is appended to `rows.jsonl` and fsynced (the commit point), then `sweep-summary.json`
is rewritten atomically. A cell without a row is redone on the next run; a cell with a row is skipped.

Order of a run (what makes bad input harmless, docs/reliability.md): the matrix is read and planned, the model and
data files are checked, and the output folder is checked — all before anything is created. Then the sweep's lock
is taken at once (before torch is imported, so a second run is refused in a second, not after a minute), stale
temporaries of a killed run are removed, the row log is repaired, and every cell folder about to be written is
checked to belong to its cell. Torch, ModelOpt and the model come after that. A run that fails on input after
taking the lock removes the folder it created (nothing is left behind).
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
from ..planning import DEFAULT_MAX_CELLS, Plan, expand
from ..schema import SCHEMA_VERSION
from ..store.atomic import (
    atomic_write_json,
    atomic_write_text,
    check_output_dir,
    make_dirs,
    missing_folders,
    open_no_follow,
    remove_empty_folders,
    remove_stale_temporaries,
)
from ..store.rows import RowLog, RowTail, latest_by_cell, read_rows
from ..store.summary_text import SummaryText
from ..store.validity import finalize_rows
from ..reports.layer_report import MANIFEST
from .progress import Reporter

# Not `.records` here: it imports torch (through the engine), and the lock must be taken before that.
RECIPE_FILE = "recipe.json"
ROWS_FILE = "rows.jsonl"
SUMMARY_FILE = "sweep-summary.json"
CANARY_FILE = "canary.json"
LOCK_FILE = ".lock"
LM_EVAL_BASELINE_FILE = "lm-eval-baseline.json"  # execution/lm_eval_phase.py (not imported here: see above)
# What `run` writes atomically: a temporary of one of these names in the sweep folder is a killed run's (reports
# and baselines writing into the sweep folder stage their files elsewhere, so theirs are never taken).
RUN_WRITES = frozenset({SUMMARY_FILE, CANARY_FILE, RECIPE_FILE, MANIFEST, "layer-sensitivity-report.md",
                        "layer-sensitivity-report.json", ".fs-probe", LM_EVAL_BASELINE_FILE})  # .fs-probe: the Ray executor's
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
    max_cells: int = DEFAULT_MAX_CELLS  # refuse a matrix expanding to more cells (a typo can mean 270,000)
    baseline_cache: bool = True  # read/write the baseline's outputs in the user's cache (engine/baseline_cache.py)


@dataclass
class SweepOutcome:
    summary_path: Path
    summary: dict[str, Any]
    exit_code: ExitCode
    rows_written: int = 0
    cells_skipped: int = 0
    canary: dict[str, Any] | None = None
    warnings: list[str] = field(default_factory=list)
    lm_eval_phase: dict[str, Any] | None = None  # what the lm-eval post-phase evaluated in this run (None: nothing)


def check_lm_eval(spec: Any, plan: Plan, source: str) -> None:
    """`evaluation.lm_eval`: the optional extra is installed and every cell it names is in the plan (exit 2)."""
    from ..engine.lm_eval_runner import require_lm_eval
    from ..trust.downstream import unknown_cells

    require_lm_eval(source)
    missing = unknown_cells(spec.cells, [(c.key, c.id) for c in plan.cells])
    if missing:
        raise InputError(f"{source}: evaluation.lm_eval.cells: no cell {missing[0]!r} in the plan (name cells by "
                         "key, e.g. 'wint8_afp16/default/small@8', or by id)")


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


@contextlib.contextmanager
def sweep_lock(sweep_dir: Path) -> Iterator[None]:
    """One `run` per sweep folder at a time (two writers would interleave rows). The lock file is opened without
    following links. If the run fails on input (InputError), the lock file and the (empty) folders this run created
    are removed again: a run refused for bad input leaves nothing behind."""
    created = missing_folders(sweep_dir)
    lock_path = sweep_dir / LOCK_FILE
    lock_existed = lock_path.exists() or lock_path.is_symlink()
    make_dirs(sweep_dir)
    fd = open_no_follow(lock_path, os.O_RDWR | os.O_CREAT)
    acquired = False
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            raise InputError(f"{sweep_dir}: another `quantsweep run` is using this sweep folder") from None
        try:  # the file we locked must still be the lock (a run refused on input removes the lock it created)
            same = os.fstat(fd).st_ino == os.stat(lock_path, follow_symlinks=False).st_ino
        except FileNotFoundError:
            same = False
        if not same:
            raise InputError(f"{sweep_dir}: another `quantsweep run` started on this sweep folder at the same moment")
        acquired = True
        yield  # the lock file stays empty: a run refused on input must not change even that
    except InputError:
        if acquired and not lock_existed:  # only the run holding the lock may remove it (never a refused one)
            with contextlib.suppress(OSError):
                os.unlink(lock_path)
            remove_empty_folders(created)
        raise
    finally:
        os.close(fd)


def check_no_links_below(sweep_dir: Path, cells: list[Any]) -> None:
    """Refuse a symbolic link planted at a folder between the sweep folder and a cell folder: the cell's manifest,
    recipe and reports would be written wherever it points. (The output root and the sweep folder themselves may
    be links: that is how results go to another disk.)"""
    base = sweep_dir.absolute()
    seen: set[Path] = set()
    for cell in cells:
        folder = Path(cell.path).absolute()
        if not folder.is_relative_to(base):
            continue
        p = base
        for part in folder.relative_to(base).parts:
            p = p / part
            if p in seen:
                continue
            seen.add(p)
            if p.is_symlink():
                raise InputError(f"{p}: is a symbolic link; quantsweep never writes a cell through a link (remove it)")
            if p.exists() and not p.is_dir():
                raise InputError(f"{p}: is a file where cell {cell.key}'s folder goes (remove it)")
            if not p.exists():
                break


def check_cell_folders(cells: list[Any]) -> list[tuple[Any, str]]:
    """Cells whose folder already holds another cell's manifest: (cell, the other id). Two matrices with the same
    `name` (e.g. after changing `dataset.seq_len`) plan the same `<pair>/<granularity>/<size>` paths with different
    cell ids; writing there would overwrite the artifacts the first run's rows point at."""
    from ..inputs.documents import DATA, DocumentError, read_json_object

    conflicts = []
    for cell in cells:
        mf = Path(cell.path) / MANIFEST
        if not mf.exists() and not mf.is_symlink():
            continue
        try:
            other = (read_json_object(mf, DATA, "cell manifest").get("cell") or {}).get("id")
        except DocumentError as exc:
            other = f"unreadable ({exc.detail})"
        if other != cell.id:
            conflicts.append((cell, str(other)))
    return conflicts


def _archive_previous(sweep_dir: Path, foreign_cells: list[Path]) -> Path | None:
    """--rerun: move the previous rows/summary/canary aside instead of deleting anything, with the cell folders
    of other cells that this run would write into (their archived rows keep pointing at real artifacts)."""
    existing = [sweep_dir / n for n in (ROWS_FILE, SUMMARY_FILE, CANARY_FILE, LM_EVAL_BASELINE_FILE)
                if (sweep_dir / n).exists()]
    if not existing and not foreign_cells:
        return None
    dest = sweep_dir / "archive" / datetime.now(UTC).strftime("%Y%m%dT%H%M%S%fZ")
    make_dirs(dest)
    for p in existing:
        shutil.move(str(p), dest / p.name)
    for folder in foreign_cells:
        rel = folder.absolute().relative_to(sweep_dir.absolute()) if folder.absolute().is_relative_to(
            sweep_dir.absolute()) else Path(folder.name)
        make_dirs((dest / "cells" / rel).parent)
        shutil.move(str(folder), dest / "cells" / rel)
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
        self.plan: Plan = expand(self.matrix, str(matrix_path), options.max_cells)
        if self.matrix.evaluation.lm_eval is not None:  # before any model is loaded (docs/trust.md)
            check_lm_eval(self.matrix.evaluation.lm_eval, self.plan, str(matrix_path))
        from ..inputs.preflight import preflight_inputs  # the model's headers and the dataset, before anything is made

        self.input_warnings = preflight_inputs(self.matrix)
        for w in self.input_warnings:
            reporter.message(f"warning: {w}")
        for w in self.plan.warnings:  # budgets no recipe can meet (planning_feasibility.py): said before any work
            if w.endswith("this cell will be an error row"):
                reporter.message(f"warning: {w}")
        self.sweep_dir = Path(self.plan.sweep_dir)
        self.rows_path = self.sweep_dir / ROWS_FILE
        self._row_tail = RowTail(self.rows_path)  # the summary after every cell reads only the new rows...
        self._summary_text = SummaryText()  # ...and encodes only them (store/summary_text.py)
        self.summary_path = self.sweep_dir / SUMMARY_FILE
        check_output_dir(self.sweep_dir, "output_root" if not options.output_root else "--output-root")
        if self.matrix.model.trust_remote_code:
            reporter.message(
                "warning: model.trust_remote_code is true: the model folder's own Python code will run in this process"
            )
        self.commit = git_commit(matrix_path)
        self.executor: Any = None
        self.info: dict[str, Any] | None = None  # model, dataset, baseline, setup: known once the executor started
        self.canary: dict[str, Any] | None = None
        self._archive_pending: list[Path] | None = None  # --rerun: what to move aside once the executor started
        self.lm_eval_phase: dict[str, Any] | None = None
        self._baseline_settings: dict[str, Any] | None = None  # _lm_eval_baseline_settings

    # -- summary -------------------------------------------------------------------------------------------
    def _rows_in_plan(self) -> list[dict[str, Any]]:
        latest = latest_by_cell(self._row_tail.read())  # only what was appended since the last summary is parsed
        return [latest[c.id] for c in self.plan.cells if c.id in latest]

    def write_summary(self, status: str) -> dict[str, Any]:
        from .telemetry import hardware_fingerprint, library_versions

        log_rows = self._rows_in_plan()
        rows = finalize_rows(log_rows)
        kpis = compute_kpis(rows, self.canary, self.matrix.kpi.model_dump(mode="json"))
        # A run with nothing left to do loads no model: keep what the previous summary knew about it.
        previous = _read_json(self.summary_path) if self.info is None else None
        keys = ("model", "dataset", "setup", "baseline", "execution")
        known = self.info if self.info is not None else {k: (previous or {}).get(k) for k in keys}
        execution = self.executor.describe() if self.executor is not None else known.get("execution")
        baseline = known.get("baseline")
        if self.matrix.evaluation.lm_eval is not None and isinstance(baseline, dict):
            from .lm_eval_phase import read_baseline  # the sweep's one lm-eval baseline

            block = read_baseline(self.sweep_dir, self._lm_eval_baseline_settings())
            baseline = {k: v for k, v in baseline.items() if k != "lm_eval"} | ({"lm_eval": block} if block else {})
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
            "baseline": baseline,
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
        atomic_write_text(self.summary_path, self._summary_text.dumps(doc, log_rows))  # = atomic_write_json
        return doc

    # -- recording -----------------------------------------------------------------------------------------
    def _commit(self, record: Any) -> dict[str, Any]:
        """Artifacts first (unless the worker already wrote them), then the row: the commit point."""
        from .records import write_artifacts

        if not record.artifacts_written:
            write_artifacts(record)
        RowLog(self.rows_path).append(record.row)
        return record.row

    def _make_executor(self) -> Any:
        ex = self.matrix.execution
        if ex.executor == "ray":
            from .ray_executor import RayExecutor

            return RayExecutor(self.matrix, self.plan, self.options.engine, self.options.threads, self.reporter,
                               self.options.baseline_cache)
        from .local_executor import LocalExecutor

        return LocalExecutor(self.matrix, self.plan, self.options.engine, self.options.threads, self.reporter,
                             self.options.baseline_cache)

    # -- main ----------------------------------------------------------------------------------------------
    def run(self) -> SweepOutcome:
        opts = self.options
        with sweep_lock(self.sweep_dir):
            stale = remove_stale_temporaries(self.sweep_dir, RUN_WRITES)
            if stale:
                self.reporter.message(f"removed {len(stale)} temporary file(s) left by an interrupted run")
            # --rerun sets the log aside whatever it holds; otherwise a damaged line stops the run
            latest = {} if opts.rerun else latest_by_cell(read_rows(self.rows_path, strict=True))
            done_ids = set() if opts.rerun else {
                cid for cid, r in latest.items() if r.get("status") == "ok" or not opts.retry_errors
            }
            todo = [c for c in self.plan.cells if c.id not in done_ids]
            check_no_links_below(self.sweep_dir, todo)
            conflicts = check_cell_folders(todo)
            if conflicts and not opts.rerun:
                cell, other = conflicts[0]
                raise InputError(
                    f"{Path(cell.path) / MANIFEST}: this folder holds cell {other}, not {cell.id} of this matrix "
                    f"({len(conflicts)} such folder(s); the matrix changed since they were written, or another matrix "
                    "has the same `name`). Nothing was overwritten: give the matrix another `name` or --output-root, "
                    "or pass --rerun to archive the previous results and their cell folders"
                )
            if opts.rerun:
                archive = self.sweep_dir / "archive"
                if archive.is_symlink() or (archive.exists() and not archive.is_dir()):
                    raise InputError(f"{archive}: is a {'symbolic link' if archive.is_symlink() else 'file'}; --rerun "
                                     "moves the previous results into this folder (remove it)")
                # moved only once the executor has started (model and data loaded): a run refused on input changes
                # nothing, not even where the previous results are
                self._archive_pending = [Path(c.path) for c, _ in conflicts]
            else:
                torn = RowLog(self.rows_path).repair()
                if torn:
                    self.reporter.message(f"repaired {self.rows_path}: dropped a partial last line ({torn} bytes)")
            skipped = len(self.plan.cells) - len(todo)
            canary_path = self.sweep_dir / CANARY_FILE
            previous_canary = None if opts.rerun else _read_json(canary_path)  # --rerun runs the canary again
            if previous_canary and previous_canary.get("cell_id") == getattr(self.plan.canary_cell, "id", None):
                self.canary = previous_canary
            if not todo:
                if not self._phase_plan():
                    self.reporter.message(f"all {len(self.plan.cells)} cells already have rows; nothing to run")
                    summary = self.write_summary("complete")
                    return SweepOutcome(self.summary_path, summary, self._exit_code(summary), 0, skipped, self.canary)
                self.reporter.message(f"all {len(self.plan.cells)} cells already have rows; finishing the lm-eval "
                                      "post-phase")
                self.executor = self._make_executor()
                try:
                    self.info = self.executor.start()
                    self._run_lm_eval_phase()
                    summary = self.write_summary("complete")
                    return SweepOutcome(self.summary_path, summary, self._exit_code(summary), 0, skipped,
                                        self.canary, lm_eval_phase=self.lm_eval_phase)
                finally:
                    self.executor.close()
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
        if self._archive_pending is not None:
            moved = _archive_previous(self.sweep_dir, self._archive_pending)
            if moved:
                self.reporter.message(f"--rerun: previous results moved to {moved}")
            self._archive_pending = None
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
        self._run_lm_eval_phase()
        summary = self.write_summary("complete")
        self.reporter.finish(summary)
        return SweepOutcome(self.summary_path, summary, self._exit_code(summary), written, skipped, self.canary,
                            lm_eval_phase=self.lm_eval_phase)

    # -- the lm-eval post-phase (execution/lm_eval_phase.py) ---------------------------------------------------
    def _lm_eval_baseline_settings(self) -> dict[str, Any]:
        """What the lm-eval baseline file must have been computed under (lm_eval_phase.baseline_settings). Once per
        run: it fingerprints the weights (file stats and safetensors headers), and the summary is written after
        every cell."""
        if self._baseline_settings is None:
            from .lm_eval_phase import baseline_settings, model_identity

            assert self.matrix.evaluation.lm_eval is not None
            self._baseline_settings = baseline_settings(self.matrix.evaluation.lm_eval, model_identity(self.matrix))
        return self._baseline_settings

    def _phase_plan(self) -> Any:
        from .lm_eval_phase import PhasePlan, plan_phase

        if self.matrix.evaluation.lm_eval is None:
            return PhasePlan()
        return plan_phase(self.matrix, self.plan, latest_by_cell(read_rows(self.rows_path)), self.sweep_dir,
                          self._lm_eval_baseline_settings())

    def _run_lm_eval_phase(self) -> None:
        """After the last cell: the baseline once and the frontier cells without lm-eval results; each result is
        committed as it arrives (a cell's new row version, or the baseline file)."""
        from .lm_eval_phase import BASELINE_FILE, amended_row, job_for, rebuilt_mismatch, write_baseline

        todo = self._phase_plan()
        if not todo:
            return
        spec = self.matrix.evaluation.lm_eval
        assert spec is not None
        jobs, rows = [], {}
        for cell, row in todo.cells:
            try:
                jobs.append(job_for(cell))
                rows[cell.id] = row
            except InputError as exc:  # a damaged cell folder: recorded on the row, never evaluated blindly
                self._commit_amended(cell, amended_row(row, {
                    "computable": False, "reason": f"cannot rebuild the cell: {exc}"[:500],
                    "num_fewshot": spec.num_fewshot, "limit": spec.limit, "model": "rebuilt"}))
        what = (["the baseline"] if todo.baseline else []) + ([f"{len(jobs)} frontier cell(s)"] if jobs else [])
        if not what:
            return
        self.reporter.message(f"lm-eval post-phase: {' and '.join(what)}")
        done: dict[str, Any] = {"baseline": False, "cells": []}
        self.lm_eval_phase = done
        for label, block in self.executor.downstream(jobs, todo.baseline):
            if label == "baseline":
                write_baseline(self.sweep_dir, self._lm_eval_baseline_settings(), block)
                done["baseline"] = True
                self.reporter.message(f"lm-eval baseline recorded in {self.sweep_dir / BASELINE_FILE}")
            else:
                row = amended_row(rows[label], block)
                warning = rebuilt_mismatch(row, block)
                if warning:
                    self.reporter.message(warning)
                self._commit_amended(next(c for c, _ in todo.cells if c.id == label), row)
                done["cells"].append(row["key"])
            self.write_summary("running")

    def _commit_amended(self, cell: Any, row: dict[str, Any]) -> None:
        """The manifest first, then the new row version (the commit point)."""
        from .lm_eval_phase import record_in_manifest

        record_in_manifest(cell, row["trust"]["lm_eval"])
        RowLog(self.rows_path).append(row)

    @staticmethod
    def _exit_code(summary: dict[str, Any]) -> ExitCode:
        return ExitCode.CELLS_FAILED if summary["progress"]["errors"] else ExitCode.OK


def _read_json(path: Path) -> dict[str, Any] | None:
    """A previous run's canary.json or summary, or None when absent or unusable (the canary then runs again, the
    summary is rebuilt from the rows). Read through the bounded reader: a link to /dev/zero cannot hang a run."""
    from ..inputs.documents import DATA, DocumentError, read_json_object

    if not path.exists():
        return None
    try:
        return read_json_object(path, DATA)
    except DocumentError:
        return None


def run_sweep(matrix_path: Path, options: RunOptions, reporter: Reporter | None = None) -> SweepOutcome:
    return Sweep(matrix_path, options, reporter or Reporter()).run()

