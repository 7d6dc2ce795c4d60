"""Rich progress for `quantsweep run`: a bar over cells, a bar over the current cell's phase, a final table.

When stderr is not a terminal (CI logs, `--json`), bars are replaced by one plain line per event.
"""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from .execution.progress import Reporter
from .planning import Cell


def _fmt(v: Any, spec: str) -> str:
    return format(v, spec) if isinstance(v, int | float) and not isinstance(v, bool) else "-"


class RichReporter(Reporter):
    def __init__(self, console: Console, quiet: bool = False):
        self.console = console
        self.quiet = quiet
        self.live = console.is_terminal and not quiet
        self.progress: Progress | None = None
        self.cells_task: Any = None
        self.phase_task: Any = None
        self.steps: dict[str, int] = {}
        self.label = ""
        self.worker_tasks: dict[str, Any] = {}

    def _ensure_progress(self) -> Progress:
        if self.progress is None:
            self.progress = Progress(
                TextColumn("[bold]{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                console=self.console,
                transient=False,
            )
            self.progress.start()
        return self.progress

    def message(self, text: str) -> None:
        if not self.quiet:
            self.console.print(f"[dim]·[/] {escape(text)}", highlight=False)

    def start_cells(self, total: int, done: int) -> None:
        if self.live:
            p = self._ensure_progress()
            self.cells_task = p.add_task("cells", total=total, completed=done)
        elif not self.quiet:
            self.console.print(f"cells: {done}/{total} recorded, {total - done} to run")

    def start_cell(self, cell: Cell, label: str, steps: dict[str, int]) -> None:
        self.steps = dict(steps)
        self.label = label
        if self.live:
            p = self._ensure_progress()
            if self.phase_task is None:
                self.phase_task = p.add_task("", total=1)
            p.update(self.phase_task, description=f"{label}: calibrate", total=steps.get("calibrate", 1), completed=0)
        elif not self.quiet:
            self.console.print(f"running {label}", highlight=False)

    def step(self, phase: str) -> None:
        if not self.live or self.progress is None or self.phase_task is None:
            return
        task = self.progress.tasks[self.phase_task]
        if not task.description.endswith(f": {phase}"):
            total = self.steps.get(phase) if phase != "evaluate" else None
            self.progress.update(self.phase_task, description=f"{self.label}: {phase}", total=total, completed=0)
        self.progress.advance(self.phase_task)

    def end_cell(self, row: dict[str, Any]) -> None:
        if self.live and self.progress is not None and self.cells_task is not None:
            self.progress.advance(self.cells_task)
        if self.quiet:
            return
        q = row.get("quality") or {}
        if row["status"] == "ok":
            text = (
                f"[green]done[/] {row['key']}: bits {_fmt(row['achieved_bits'], '.3f')}, "
                f"KL {_fmt(q.get('kl_mean'), '.4g')}, ppl ratio {_fmt(q.get('ppl_ratio'), '.4f')}, "
                f"{_fmt(row['telemetry'].get('wall_s'), '.1f')} s"
            )
            if not row["valid"]:
                text += f" [yellow](invalid: {', '.join(row['reasons'])})[/]"
        else:
            text = f"[red]error[/] {row['key']}: {row['error']}"
        self.console.print(text, highlight=False)

    def worker_started(self, name: str, info: dict[str, Any]) -> None:
        if self.quiet:
            return
        where = f"{info.get('host')} pid {info.get('pid')}, {info.get('device')}"
        if info.get("gpu_ids"):
            where += f" (GPU {','.join(info['gpu_ids'])})"
        load = (info.get("setup") or {}).get("prepare_s")
        text = f"[dim]·[/] worker {escape(name)} ready on {escape(where)}, loaded in {_fmt(load, '.1f')} s"
        self.console.print(text, highlight=False)

    def worker_status(self, name: str, text: str) -> None:
        """One line per worker under the bars (live), saying what it runs; plain lines otherwise."""
        if self.live:
            p = self._ensure_progress()
            if name not in self.worker_tasks:
                self.worker_tasks[name] = p.add_task("", total=None)
            p.update(self.worker_tasks[name], description=f"  {escape(name)}: {escape(text)}")
        elif not self.quiet and not text.startswith(("idle", "starting")):
            self.console.print(f"[dim]·[/] worker {escape(name)}: {escape(text)}", highlight=False)

    def stop(self) -> None:
        if self.progress is not None:
            self.progress.stop()
            self.progress = None

    def finish(self, summary: dict[str, Any]) -> None:
        self.stop()


def render_rows_table(summary: dict[str, Any], console: Console) -> None:
    t = Table(title=f"{summary['matrix']['name']}: {summary['progress']['done']}/{summary['progress']['total']} cells")
    for col in ("cell", "status", "bits (target/achieved)", "score", "KL mean", "PPL ratio", "top-1", "wall s", "valid"):
        t.add_column(col)
    for r in summary["rows"]:
        q = r.get("quality") or {}
        t.add_row(
            r["key"],
            r["status"],
            f"{_fmt(r['effective_bits_target'], 'g')}/{_fmt(r.get('achieved_bits'), '.3f')}",
            _fmt(r.get("total_score"), ".3e"),
            _fmt(q.get("kl_mean"), ".4g"),
            _fmt(q.get("ppl_ratio"), ".4f"),
            _fmt(q.get("top1_agreement"), ".3f"),
            _fmt((r.get("telemetry") or {}).get("wall_s"), ".1f"),
            "yes" if r.get("valid") else "no: " + ",".join(r.get("reasons", [])),
        )
    console.print(t)
