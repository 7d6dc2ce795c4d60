"""The next cell's solve planned while the device still evaluates this one (shared engine).

A shared-engine cell is solved, then evaluated: its recipe is switched into the union model and the held-out batches
go through it. The solve's larger half (engine/shared.py::plan_cell: the candidate lists, ModelOpt's CBC solve and the
exact HiGHS one, the recipe config) reads only the union call's scores and search state, never the model; only its
other half (`apply_plan`: switching the recipe in) must wait for the previous cell to be done with the model (its
evaluation, long-context evaluation and trust checks, which may switch recipes themselves). And an evaluation's
forwards are queued on the device without waiting (engine/quality.py::start_comparison); the host waits once, for
the results. So the runner plans cell i+1 between queueing cell i's forwards and waiting for them: where the device
is the bottleneck (a Llama-3-8B-shaped model's evaluation), the plan costs no wall time at all.

What does not change: each cell's plan is made once, from the same inputs, by the same function (the same result
in whichever turn it is made); a plan that fails (a budget below the format's bits, a solver error) fails its own
cell, in that cell's turn, exactly as before. Its seconds are its own cell's `search` phase, not the evaluating
cell's `evaluate` (a plan that failed leaves its seconds with the evaluating cell: the failed cell has no search).
The evaluating cell's memory and hardware telemetry spans include the plan (host work only).
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
        self._taken: set[int] = set()

    @classmethod
    def for_members(cls, union: Any, members: Sequence[tuple[Any, list[tuple[str, dict[str, Any]]], str]],
                    method: str) -> CellPlans:
        from ..engine.shared import plan_cell

        def plan(i: int) -> CellPlan:
            cell, formats, _backend = members[i]
            return plan_cell(union, formats, cell.budget, cell.score_steps, method, cell.calib_steps)

        return cls(len(members), plan)

    def prepare(self, index: int) -> float:
        """Plan cell `index` now if it exists and is not planned yet; the seconds a successful plan took (0 when
        nothing was done, or the plan failed: its failure is kept for the cell's own turn)."""
        if index >= self._count or index in self._made or index in self._taken:
            return 0.0
        t = time.perf_counter()
        try:
            self._made[index] = (self._plan(index), None)
        except Exception as exc:  # the cell's own error, raised in its turn (take)
            self._made[index] = (None, exc)
            return 0.0
        return time.perf_counter() - t

    def take(self, index: int) -> CellPlan:
        """Cell `index`'s plan (made now if it was not made ahead); raises what planning it raised."""
        if index in self._taken:
            raise ValueError(f"cell {index}'s plan was taken already")
        self.prepare(index)
        plan, exc = self._made.pop(index)
        self._taken.add(index)
        if exc is not None:
            raise exc
        assert plan is not None
        return plan
