"""Rich progress for `quantsweep run`: a bar over cells, a bar over the current cell's phase, a final table.

When stderr is not a terminal (CI logs) or stdout carries `--json`, bars are replaced by plain lines on stderr:
one per finished cell, and for a shared-engine union call (which can run for minutes before its first cell
finishes) its phases as they go: calibrate, score batch i/n, solve, evaluate. Plain lines never wrap (a CI log
is read by tools, and a value cut at column 80 helps nobody).
"""

from __future__ import annotations

import time
from typing import Any

from rich import box
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, ProgressColumn, Task, TextColumn
from rich.table import Table
from rich.text import Text

from .execution.progress import Reporter
from .planning import Cell

# A phase with many batches prints its first and last batch, and one line at most this often in between.
PLAIN_STEP_INTERVAL_S = 10.0


def _fmt(v: Any, spec: str) -> str:
    return format(v, spec) if isinstance(v, int | float) and not isinstance(v, bool) else "-"


class SinceStartColumn(ProgressColumn):
    """Seconds since the task's cell (or union call) started. Rich's TimeElapsedColumn stops at the moment a
    task first reaches its total and never restarts, which froze the phase bar's timer after the first phase."""

    def render(self, task: Task) -> Text:
        t0 = task.fields.get("t0")
        if t0 is None:
            return Text("-:--:--", style="progress.elapsed")
        seconds = int(time.monotonic() - t0)
        return Text(f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}", style="progress.elapsed")


class RichReporter(Reporter):
    """`quiet` (`run --json`): no bars and no markup, but the plain progress lines still go to stderr."""

    def __init__(self, console: Console, quiet: bool = False):
        self.console = console
        self.quiet = quiet
        self.live = console.is_terminal and not quiet
        self.progress: Progress | None = None
        self.cells_task: Any = None
        self.phase_task: Any = None
        self.steps: dict[str, int] = {}
        self.label = ""
        self.union = False  # the current unit is a shared-engine union call (phases printed in plain mode)
        self.counts: dict[str, int] = {}  # steps done per phase of the current cell / union call
        self.last_line = 0.0
        self.worker_tasks: dict[str, Any] = {}

    def _ensure_progress(self) -> Progress:
        if self.progress is None:
            self.progress = Progress(
                TextColumn("[bold]{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                SinceStartColumn(),
                console=self.console,
                transient=False,
            )
            self.progress.start()
        return self.progress

    def _plain(self, markup: str) -> None:
        """One line that never wraps; without markup under --json (a log parser reads it)."""
        if self.quiet:
            self.console.print(Text.from_markup(markup).plain, markup=False, highlight=False, soft_wrap=True)
        else:
            self.console.print(markup, highlight=False, soft_wrap=True)
        self.last_line = time.monotonic()

    def message(self, text: str) -> None:
        self._plain(f"[dim]·[/] {escape(text)}")

    def start_cells(self, total: int, done: int) -> None:
        if self.live:
            p = self._ensure_progress()
            self.cells_task = p.add_task("cells", total=total, completed=done, t0=time.monotonic())
        else:
            self._plain(f"cells: {done}/{total} recorded, {total - done} to run")

    def start_cell(self, cell: Cell | None, label: str, steps: dict[str, int]) -> None:
        """`cell` is None for a union call; `steps` gives the total of each phase (calibrate, score and, for a
        union call, solve and evaluate: one per cell)."""
        self.steps = dict(steps)
        self.label = label
        self.union = cell is None
        self.counts = {}
        if self.live:
            p = self._ensure_progress()
            if self.phase_task is None:
                self.phase_task = p.add_task("", total=1, t0=time.monotonic())
            p.reset(self.phase_task, total=steps.get("calibrate", 1), completed=0, description=f"{label}: calibrate",
                    t0=time.monotonic())
        else:
            self._plain(f"running {escape(label)}")

    def step(self, phase: str) -> None:
        """One step of `phase`, counted against that phase's own total: the bar shows `evaluate 3/6`, never
        `evaluate 6/2` (Rich keeps a task's previous total when given None). Phases may alternate (a union call
        solves then evaluates each cell in turn): each keeps its own count."""
        self.counts[phase] = self.counts.get(phase, 0) + 1
        done, total = self.counts[phase], self.steps.get(phase) or 0
        if self.live and self.progress is not None and self.phase_task is not None:
            self.progress.update(self.phase_task, description=f"{self.label}: {phase}", total=max(1, total, done),
                                 completed=done)
        elif self.union:
            self._plain_step(phase, done, total)

    def _plain_step(self, phase: str, i: int, total: int) -> None:
        where = f"  {escape(self.label)}: "
        if phase in ("solve", "evaluate"):
            self._plain(f"{where}{phase} {i}/{total}" if total else f"{where}{phase}")
        elif i == 1 or i == total or time.monotonic() - self.last_line >= PLAIN_STEP_INTERVAL_S:
            name = "score batch" if phase == "score" else phase
            self._plain(f"{where}{name} {i}/{total}" if total else f"{where}{name}")

    def end_cell(self, row: dict[str, Any]) -> None:
        if self.live and self.progress is not None and self.cells_task is not None:
            self.progress.advance(self.cells_task)
        q = row.get("quality") or {}
        if row["status"] == "ok":
            text = (
                f"[green]done[/] {escape(row['key'])}: bits {_fmt(row['achieved_bits'], '.3f')}, "
                f"KL {_fmt(q.get('kl_mean'), '.4g')}, ppl ratio {_fmt(q.get('ppl_ratio'), '.4f')}, "
                f"{_fmt(row['telemetry'].get('wall_s'), '.1f')} s"
            )
            if not row["valid"]:
                text += f" [yellow](invalid: {escape(', '.join(row['reasons']))})[/]"
        else:
            text = f"[red]error[/] {escape(row['key'])}: {escape(str(row['error']))}"
        self._plain(text)

    def worker_started(self, name: str, info: dict[str, Any]) -> None:
        where = f"{info.get('host')} pid {info.get('pid')}, {info.get('device')}"
        if info.get("gpu_ids"):
            where += f" (GPU {','.join(info['gpu_ids'])})"
        load = (info.get("setup") or {}).get("prepare_s")
        text = f"[dim]·[/] worker {escape(name)} ready on {escape(where)}, loaded in {_fmt(load, '.1f')} s"
        self._plain(text)

    def worker_status(self, name: str, text: str) -> None:
        """One line per worker under the bars (live), saying what it runs; plain lines otherwise."""
        if self.live:
            p = self._ensure_progress()
            if name not in self.worker_tasks:
                self.worker_tasks[name] = p.add_task("", total=None, t0=time.monotonic())
            p.update(self.worker_tasks[name], description=f"  {escape(name)}: {escape(text)}")
        elif not text.startswith(("idle", "starting")):
            self._plain(f"[dim]·[/] worker {escape(name)}: {escape(text)}")

    def stop(self) -> None:
        if self.progress is not None:
            self.progress.stop()
            self.progress = None

    def finish(self, summary: dict[str, Any]) -> None:
        self.stop()


# The final table's axis columns: (row field, header). An axis with one value across the rows moves to the title,
# so that the columns left fit an 80-column terminal with every name whole.
_TABLE_AXES = (("pair", "pair"), ("granularity", "granularity"), ("dataset_size", "size"),
               ("effective_bits_target", "budget"))


def _axis_text(row: dict[str, Any], field: str) -> str:
    v = row.get(field)
    return _fmt(v, "g") if field == "effective_bits_target" else str(v)


def _rows_table(summary: dict[str, Any], optional: tuple[str, ...], fold: bool) -> Table:
    rows = summary["rows"]
    axes = [a for a in _TABLE_AXES if len({_axis_text(r, a[0]) for r in rows}) > 1] or list(_TABLE_AXES[:1])
    common = [f"{label} {_axis_text(rows[0], f)}" for f, label in _TABLE_AXES if rows and (f, label) not in axes]
    title = f"{summary['matrix']['name']}: {summary['progress']['done']}/{summary['progress']['total']} cells"
    t = Table(title=title + (f" ({', '.join(common)})" if common else ""), title_justify="left",
              box=box.SIMPLE_HEAD, collapse_padding=True, pad_edge=False)
    for _f, label in axes:
        t.add_column(label, no_wrap=not fold, overflow="fold")  # never "…": whole, or folded as the last resort
    for label in ("bits", "KL mean", "PPL ratio", *optional, "ok"):
        t.add_column(label, no_wrap=True, justify="left" if label == "ok" else "right")
    for r in rows:
        q = r.get("quality") or {}
        extra = {"top-1": _fmt(q.get("top1_agreement"), ".3f"),
                 "s": _fmt((r.get("telemetry") or {}).get("wall_s"), ".0f")}
        ok = "error" if r["status"] != "ok" else ("yes" if r.get("valid") else "no")
        t.add_row(*(_axis_text(r, f) for f, _ in axes), _fmt(r.get("achieved_bits"), ".3f"),
                  _fmt(q.get("kl_mean"), ".4g"), _fmt(q.get("ppl_ratio"), ".4f"), *(extra[c] for c in optional), ok)
    return t


def render_rows_table(summary: dict[str, Any], console: Console) -> None:
    """The rows of a finished run: one line per cell with its axes as columns (names never truncated; an axis
    with one value is named once in the title), the numbers people compare, and under the table why a cell is
    invalid or failed. The summary and the per-cell lines printed during the run keep what a narrow terminal
    leaves out."""
    from rich.measure import Measurement

    # the narrowest layout that keeps every name whole: drop wall seconds, then top-1; fold names as a last resort
    for optional, fold in ((("top-1", "s"), False), (("top-1",), False), ((), False), ((), True)):
        table = _rows_table(summary, optional, fold)
        if Measurement.get(console, console.options.update_width(10**6), table).maximum <= console.width:
            break
    console.print(table)
    for r in summary["rows"]:
        if r["status"] != "ok":
            console.print(f"{r['key']}: error: {r.get('error')}", markup=False, highlight=False)
        elif not r.get("valid"):
            console.print(f"{r['key']}: invalid: {', '.join(r.get('reasons', []))}", markup=False, highlight=False)
