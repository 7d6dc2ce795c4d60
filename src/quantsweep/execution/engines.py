"""Running a list of cells with the engine the sweep asked for, in one process: the shared engine (one union
AutoQuantize call per group of cells) or the naive one (one `mtq.auto_quantize` call per cell and repeat).

The local executor calls this for the whole sweep; a Ray worker calls it for each work unit it is given.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from ..planning import Cell
from .cell_runner import CellRun, execute_cell
from .context import SweepContext
from .progress import Reporter


def run_cell_repeats(ctx: SweepContext, cell: Cell, times: int, reporter: Reporter) -> list[CellRun]:
    """`times` independent AutoQuantize executions of one cell (repeats feed the determinism check)."""
    runs = []
    for i in range(times):
        label = cell.key + (f" (repeat {i + 1}/{times})" if times > 1 else "")
        reporter.start_cell(cell, label, {"calibrate": cell.calib_steps, "score": cell.score_steps, "evaluate": 1})
        runs.append(execute_cell(ctx, cell, on_step=reporter.step))
    return runs


def execute_cells(ctx: SweepContext, cells: list[Cell], reporter: Reporter) -> Iterator[tuple[Cell, list[CellRun]]]:
    """(cell, its runs) in execution order; never raises except KeyboardInterrupt (failures are error runs)."""
    if ctx.engine == "shared" and ctx.matrix.repeats == 1:
        from .shared_runner import execute_shared

        def on_union(call: Any, n_cells: int) -> None:
            label = f"shared search: {len(call.formats)} formats for {n_cells} cells ({call.key})"
            steps = {"calibrate": call.calib_steps * len(call.formats), "score": call.score_steps,
                     "solve": n_cells, "evaluate": n_cells}
            reporter.start_cell(None, label, steps)

        for run in execute_shared(ctx, cells, on_step=reporter.step, on_union=on_union):
            yield run.cell, [run]
        return
    if ctx.engine == "shared":
        reporter.message("repeats > 1: using one AutoQuantize call per execution (naive engine)")
    for cell in cells:
        yield cell, run_cell_repeats(ctx, cell, ctx.matrix.repeats, reporter)
