"""The next cell's solve planned while the device still evaluates this one (shared engine).

A shared-engine cell is solved, then evaluated: its recipe is switched into the union model and the held-out batches
go through it. The solve's larger half (engine/shared.py::plan_cell: the candidate lists, ModelOpt's CBC solve and the
exact HiGHS one, the recipe config) reads only the union call's scores and search state, never the model; only its
other half (`apply_plan`: switching the recipe in) must wait for the previous cell's evaluation. And an evaluation's
forwards are queued on the device without waiting (engine/quality.py::start_comparison); the host waits once, for
the results. So the runner plans cell i+1 between queueing cell i's forwards and waiting for them: where the device
is the bottleneck (a Llama-3-8B-shaped model's evaluation), the plan costs no wall time at all.

What does not change: each cell's plan is made once, from the same inputs, by the same function (the same result
in whichever turn it is made); a plan that fails (a budget below the format's bits, a solver error) fails its own
cell, in that cell's turn, exactly as before. Its seconds are its own cell's `search` phase, not the evaluating
cell's `evaluate`.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

from ..engine.shared import CellPlan


class CellPlans:
    """Each cell's plan, made at most once: ahead of its turn (`prepare`) or in it (`take`)."""

    def __init__(self, count: int, plan: Callable[[int], CellPlan]) -> None:
        self._count = count
        self._plan = plan
        self._made: dict[int, tuple[CellPlan | None, Exception | None]] = {}

    @classmethod
    def for_members(cls, union: Any, members: Sequence[tuple[Any, list[tuple[str, dict[str, Any]]], str]],
                    method: str) -> CellPlans:
        from ..engine.shared import plan_cell

        def plan(i: int) -> CellPlan:
            cell, formats, _backend = members[i]
            return plan_cell(union, formats, cell.budget, cell.score_steps, method, cell.calib_steps)

        return cls(len(members), plan)

    def prepare(self, index: int) -> float:
        """Plan cell `index` now if it exists and is not planned yet; the seconds it took (0 when nothing was done).
        A failure is kept for the cell's own turn."""
        if index >= self._count or index in self._made:
            return 0.0
        t = time.perf_counter()
        try:
            self._made[index] = (self._plan(index), None)
        except Exception as exc:  # the cell's own error, raised in its turn (take)
            self._made[index] = (None, exc)
        return time.perf_counter() - t

    def take(self, index: int) -> CellPlan:
        """Cell `index`'s plan (made now if it was not made ahead); raises what planning it raised."""
        self.prepare(index)
        plan, exc = self._made.pop(index)
        if exc is not None:
            raise exc
        assert plan is not None
        return plan
