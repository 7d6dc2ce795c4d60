"""The exact mixed-precision solve (engine/exact_solver.py) against ModelOpt's PuLP/CBC solve and brute force."""

from __future__ import annotations

import contextlib
import io
import itertools
import warnings

import numpy as np
import pytest

from quantsweep.engine.exact_solver import KnapsackProblem, exact_or_modelopt, solve_exact, start_exact


def knapsack(seed: int, groups: int = 30, budget_bits: float = 6.0):
    """AutoQuantize-shaped: per group INT4 / INT8 / 16-bit, scores ~1e-5 (as ModelOpt's are), costs in weights."""
    rng = np.random.default_rng(seed)
    scores, costs = [], []
    for _ in range(groups):
        w = float(rng.integers(1, 5)) * 1000
        s4 = float(rng.uniform(0, 2e-5))
        scores.append([s4, s4 * float(rng.uniform(0, 0.3)), 0.0])
        costs.append([w * 4 / 16, w * 8 / 16, w])
    return scores, costs, sum(c[-1] for c in costs) * budget_bits / 16


def modelopt_lps(scores, costs, max_cost):
    """ModelOpt's own solver call, as AutoQuantizeGradientSearcher.run_search_with_stats makes it."""
    from modelopt.torch.opt.searcher import LPS

    lps = LPS(name="AutoQuantize", constraints={"w": (None, max_cost)}, constraints_to_candidate_costs={"w": costs},
              candidate_scores=scores, objective_type="minimize", verbose=False)
    with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return lps()


def objective(scores, choice):
    return sum(scores[g][i] for g, i in enumerate(choice))


def test_cbc_with_default_options_stops_short_where_the_exact_solve_does_not():
    scores, costs, max_cost = knapsack(seed=0)
    cbc, status = modelopt_lps(scores, costs, max_cost)
    exact, _ = solve_exact(scores, costs, max_cost)
    assert status == "Optimal"  # CBC says so...
    assert sum(costs[g][i] for g, i in enumerate(exact)) <= max_cost
    assert sum(costs[g][i] for g, i in enumerate(cbc)) <= max_cost
    # ... but its recipe's total score is 4 % worse than the exact optimum
    assert objective(scores, exact) < objective(scores, cbc) * 0.97


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_exact_solve_equals_brute_force(seed):
    scores, costs, max_cost = knapsack(seed, groups=9, budget_bits=7.0)
    best = min(
        (c for c in itertools.product(range(3), repeat=9) if sum(costs[g][i] for g, i in enumerate(c)) <= max_cost),
        key=lambda c: objective(scores, c),
    )
    exact, _ = solve_exact(scores, costs, max_cost)
    assert objective(scores, exact) == pytest.approx(objective(scores, best), rel=1e-12)


def test_infeasible_budget_gives_no_exact_solution():
    scores, costs, _ = knapsack(seed=4, groups=5)
    lowest = sum(min(c) for c in costs)
    choice, status = solve_exact(scores, costs, lowest * 0.99)
    assert choice is None and status


def _stats(scores, costs):
    return {f"g{i}.quant_recipe": {"formats": ["int4", "int8", "none"], "scores": s, "costs": c}
            for i, (s, c) in enumerate(zip(scores, costs, strict=True))}


def test_modelopt_choice_is_kept_when_optimal_and_replaced_when_not():
    scores, costs, max_cost = knapsack(seed=0)
    stats = _stats(scores, costs)
    cbc, _ = modelopt_lps(scores, costs, max_cost)
    as_best = lambda choice: {  # noqa: E731 - ModelOpt's result format
        n: {"format": stats[n]["formats"][i], "costs": stats[n]["costs"][i], "scores": stats[n]["scores"][i]}
        for n, i in zip(stats, choice, strict=True)
    }
    best, ok, record = exact_or_modelopt(stats, max_cost, as_best(cbc), True)
    assert ok and record.used == "exact" and record.groups_differing > 0
    assert record.exact_objective == pytest.approx(sum(b["scores"] for b in best.values()))
    assert record.objective_gap == pytest.approx(1 - record.exact_objective / record.modelopt_objective)
    assert record.objective_gap > 0.03
    # handed the optimum, nothing changes: the same choice object, recorded as ModelOpt's
    exact, _ = solve_exact(scores, costs, max_cost)
    optimal = as_best(exact)
    kept, ok, record = exact_or_modelopt(stats, max_cost, optimal, True)
    assert kept is optimal and ok and record.used == "modelopt" and record.objective_gap == 0.0
    assert record.groups_differing == 0
    # the exact solve started beside ModelOpt's (exact_search does so) answers the same, on the solver thread
    import threading

    names = []
    original = KnapsackProblem.solve
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(KnapsackProblem, "solve",
                   lambda self, s: names.append(threading.current_thread().name) or original(self, s))
        beside = start_exact(stats, max_cost).result()
    assert beside == solve_exact(scores, costs, max_cost) and beside[0] == exact
    assert names and names[0].startswith("qs-exact")
    best2, ok2, record2 = exact_or_modelopt(stats, max_cost, as_best(cbc), True, exact=beside)
    assert best2 == best and record2.to_dict() == exact_or_modelopt(stats, max_cost, as_best(cbc), True)[2].to_dict()
