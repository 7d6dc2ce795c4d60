"""The exact optimum of a cell's mixed-precision problem, beside ModelOpt's own solver result.

AutoQuantize's gradient search chooses one format per decision group to minimise the sum of the groups' scores
under a weight-size budget: a multiple-choice knapsack. ModelOpt hands it to PuLP's CBC with default options on
unscaled scores (~1e-5 per group); CBC's default cutoff increment then stops within ~1e-5 of the optimum and still
reports "Optimal", so some recipes are not optimal (0.74–1.0 % worse objective on 3 of the quickstart's 8 cells;
up to 7 % on an INT8 W8A8 per-token cell in an independent re-computation).

Here the same problem (ModelOpt's `candidate_stats`: its clamped scores, its costs, its budget) is solved again with
HiGHS through `scipy.optimize.milp`, with zero relative gap, on scores shifted by each group's minimum and scaled to
order one (the shift and scale change no argmin). The exact choice is used when its objective is strictly lower
than ModelOpt's; when ModelOpt's choice is already optimal it is kept, so a cell's recipe only ever changes to a
better one. Both are recorded per cell (`SolverRecord`). The KL-divergence method (a minimax threshold search, not a
knapsack) keeps ModelOpt's solver.

`exact_search()` patches `AutoQuantizeGradientSearcher.run_search_with_stats` for the duration of a call, so the
naive engine (inside `mtq.auto_quantize`, before ModelOpt applies and folds the recipe) and the shared engine's
per-cell solve go through the same function with the same inputs, and stay equal to each other.

The two solves do not depend on each other (both read the same `candidate_stats`), so the exact one runs on a solver
thread while ModelOpt's builds its PuLP problem and waits for the CBC subprocess: HiGHS releases the GIL, and the
CBC wait holds none. A cell's search then costs about the longer of the two instead of their sum (on an H200 host
the HiGHS solve was ~17 % of the shared engine's search phase in a sampling profile, `search` being ~10 % of a cell).
"""

from __future__ import annotations

import contextlib
import math
import threading
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from typing import Any

import numpy as np

TIE_RTOL = 1e-9  # objectives this close are the same optimum: keep ModelOpt's choice


@dataclass
class SolverRecord:
    """What the two solvers found for one cell."""

    used: str  # "exact" (HiGHS, strictly better) or "modelopt" (ModelOpt's choice is optimal, or no exact solve)
    modelopt_objective: float | None
    modelopt_satisfied: bool
    exact_objective: float | None
    exact_status: str
    groups_differing: int = 0

    @property
    def objective_gap(self) -> float | None:
        """(ModelOpt - exact) / ModelOpt: how much better the exact recipe's total score is (0 when equal)."""
        if self.modelopt_objective is None or self.exact_objective is None or not self.modelopt_satisfied:
            return None
        if self.modelopt_objective == 0:
            return 0.0
        return max(0.0, (self.modelopt_objective - self.exact_objective) / abs(self.modelopt_objective))

    def to_dict(self) -> dict[str, Any]:
        return {
            "used": self.used,
            "modelopt_objective": self.modelopt_objective,
            "modelopt_satisfied": self.modelopt_satisfied,
            "exact_objective": self.exact_objective,
            "exact_status": self.exact_status,
            "objective_gap": self.objective_gap,
            "groups_differing": self.groups_differing,
        }


class KnapsackProblem:
    """One cell's constraints (one choice per group, the weight budget), built once and solved for any number of
    score vectors (the stability bootstrap re-solves the same problem with resampled scores, trust/stability.py).

    The constraint matrices are sparse: scipy's `LinearConstraint` converts a dense matrix under
    `warnings.catch_warnings()` + `simplefilter("error")`, which swaps the process-wide warnings filters and, run
    from several threads at once, can leave "error" in place for the whole process (ModelOpt's next warning then
    fails a cell). Built in the caller's thread and sparse, nothing here touches the filters; `solve` may run on
    several threads at once (HiGHS releases the GIL)."""

    def __init__(self, costs: list[list[float]], max_cost: float) -> None:
        from scipy.optimize import Bounds, LinearConstraint
        from scipy.sparse import csr_array

        self.sizes = [len(c) for c in costs]
        self.costs = costs
        self.max_cost = max_cost
        flat_c = np.array([x for c in costs for x in c], dtype=np.float64)
        self.problem = None
        if not self.sizes or any(n == 0 for n in self.sizes):
            self.problem = "empty or inconsistent problem"
            return
        if not (np.all(np.isfinite(flat_c)) and math.isfinite(max_cost)):
            self.problem = "non-finite scores or costs"
            return
        n = flat_c.size
        c_scale = float(max(abs(max_cost), flat_c.max(), 1e-300))
        rows = np.repeat(np.arange(len(self.sizes)), self.sizes)
        one_hot = csr_array((np.ones(n), (rows, np.arange(n))), shape=(len(self.sizes), n))
        self.constraints = [
            LinearConstraint(one_hot, lb=1.0, ub=1.0),
            LinearConstraint(csr_array((flat_c / c_scale)[None, :]), lb=-np.inf, ub=max_cost / c_scale),
        ]
        self.bounds = Bounds(0, 1)
        self.integrality = np.ones(n)

    def solve(self, scores: list[list[float]]) -> tuple[list[int] | None, str]:
        """Minimise sum_g scores[g][i_g] under the constraints: (the chosen index per group, HiGHS's status text);
        (None, status) when infeasible or not solved."""
        from scipy.optimize import milp

        if self.problem is not None:
            return None, self.problem
        if [len(s) for s in scores] != self.sizes:
            return None, "empty or inconsistent problem"
        flat_s = np.array([x for s in scores for x in s], dtype=np.float64)
        if not np.all(np.isfinite(flat_s)):
            return None, "non-finite scores or costs"
        # shift each group by its minimum (the same constant in every solution) and scale to order one
        offsets = np.repeat([min(s) for s in scores], self.sizes)
        shifted = flat_s - offsets
        scale = float(shifted.max()) if shifted.size and shifted.max() > 0 else 1.0
        res = milp(
            c=shifted / scale,
            constraints=self.constraints,
            integrality=self.integrality,
            bounds=self.bounds,
            options={"mip_rel_gap": 0.0, "presolve": True, "time_limit": 60.0},
        )
        if res.x is None or res.status not in (0,):
            return None, str(res.message)
        choice = []
        start = 0
        for k in self.sizes:
            choice.append(int(np.argmax(res.x[start : start + k])))
            start += k
        total_cost = sum(self.costs[g][i] for g, i in enumerate(choice))
        if total_cost > self.max_cost * (1 + 1e-12) + 1e-300:  # HiGHS's feasibility tolerance let it through
            return None, f"solution exceeds the budget by {total_cost / self.max_cost - 1:.2e} (rounding)"
        return choice, str(res.message)


def solve_exact(scores: list[list[float]], costs: list[list[float]], max_cost: float) -> tuple[list[int] | None, str]:
    """Minimise sum_g scores[g][i_g] subject to sum_g costs[g][i_g] <= max_cost, one choice per group.

    Returns (the chosen index per group, HiGHS's status text); (None, status) when infeasible or not solved."""
    if len(scores) != len(costs):
        return None, "empty or inconsistent problem"
    return KnapsackProblem(costs, max_cost).solve(scores)


def _problem(candidate_stats: dict[str, dict[str, Any]]) -> tuple[list[str], list[list[float]], list[list[float]]]:
    names = list(candidate_stats)
    scores = [[float(s) for s in candidate_stats[n]["scores"]] for n in names]
    costs = [[float(c) for c in candidate_stats[n]["costs"]] for n in names]
    return names, scores, costs


_exact_pool: ThreadPoolExecutor | None = None
_exact_pool_lock = threading.Lock()


def start_exact(candidate_stats: dict[str, dict[str, Any]], max_cost: float) -> Future[tuple[list[int] | None, str]]:
    """`solve_exact` on the solver thread, its constraints built here (see KnapsackProblem on the warnings filters)."""
    global _exact_pool
    _names, scores, costs = _problem(candidate_stats)
    problem = KnapsackProblem(costs, max_cost)
    with _exact_pool_lock:
        if _exact_pool is None:
            _exact_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="qs-exact")
        return _exact_pool.submit(problem.solve, scores)


def exact_or_modelopt(
    candidate_stats: dict[str, dict[str, Any]],
    max_cost: float,
    modelopt_best: dict[str, dict[str, Any]],
    modelopt_satisfied: bool,
    exact: tuple[list[int] | None, str] | None = None,
) -> tuple[dict[str, dict[str, Any]], bool, SolverRecord]:
    """The recipe to use (ModelOpt's result format), whether it meets the budget, and the record of both solves.
    `exact`: the exact solve's (choice, status) when it was solved already (`start_exact`), else it is solved here."""
    names, scores, costs = _problem(candidate_stats)
    ref_choice = {n: list(candidate_stats[n]["formats"]).index(modelopt_best[n]["format"]) for n in names}
    ref_obj = float(sum(scores[g][ref_choice[n]] for g, n in enumerate(names)))
    choice, status = exact if exact is not None else solve_exact(scores, costs, max_cost)
    record = SolverRecord(
        used="modelopt",
        modelopt_objective=ref_obj,
        modelopt_satisfied=bool(modelopt_satisfied),
        exact_objective=None,
        exact_status=status,
    )
    if choice is None:
        return modelopt_best, modelopt_satisfied, record
    exact_obj = float(sum(scores[g][i] for g, i in enumerate(choice)))
    record.exact_objective = exact_obj
    record.groups_differing = sum(1 for g, n in enumerate(names) if choice[g] != ref_choice[n])
    better = exact_obj < ref_obj - TIE_RTOL * max(abs(ref_obj), 1e-300)
    if modelopt_satisfied and not better:
        record.groups_differing = 0
        return modelopt_best, True, record
    record.used = "exact"
    best = {
        n: {
            "format": candidate_stats[n]["formats"][choice[g]],
            "costs": candidate_stats[n]["costs"][choice[g]],
            "scores": candidate_stats[n]["scores"][choice[g]],
        }
        for g, n in enumerate(names)
    }
    return best, True, record


@contextlib.contextmanager
def exact_search() -> Iterator[list[SolverRecord]]:
    """Route AutoQuantize's gradient search through `exact_or_modelopt` for the duration; yields the records of
    the searches made meanwhile (one per `run_search_with_stats` call)."""
    from modelopt.torch.quantization.algorithms import AutoQuantizeGradientSearcher

    records: list[SolverRecord] = []
    original = AutoQuantizeGradientSearcher.__dict__["run_search_with_stats"]

    def run_search_with_stats(self: Any, max_weight_size: float, verbose: bool = False) -> Any:
        exact = start_exact(self.candidate_stats, float(max_weight_size))  # solved beside ModelOpt's CBC
        try:
            best, satisfied = original(self, max_weight_size, verbose)
        finally:
            wait([exact])  # also when ModelOpt raised: no solve outlives its search
        best, satisfied, record = exact_or_modelopt(self.candidate_stats, float(max_weight_size), best, satisfied,
                                                    exact=exact.result())
        records.append(record)
        return best, satisfied

    AutoQuantizeGradientSearcher.run_search_with_stats = run_search_with_stats
    try:
        yield records
    finally:
        AutoQuantizeGradientSearcher.run_search_with_stats = original
