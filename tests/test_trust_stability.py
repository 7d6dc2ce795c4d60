"""Recipe stability (quantsweep.trust.stability): the bootstrap of per-batch scores, re-solved. Pure, fast."""

from __future__ import annotations

import numpy as np
import pytest

from quantsweep.execution.stability_pipeline import StabilityPipeline
from quantsweep.trust.stability import THREAD_PREFIX, GroupScores, bootstrap_stability, budget_cost, clamp, groups_from_layers


def _groups(means: list[float], noise: float, batches: int = 8, seed: int = 1) -> list[GroupScores]:
    """Groups choosing between W4 (cost 4) and none (cost 16); per-batch W4 scores around `means`. The recipe
    each group starts with is the full-data optimum at an effective-bits budget of 10 (half the groups at W4)."""
    rng = np.random.default_rng(seed)
    out = []
    for i, m in enumerate(means):
        per_batch = (m * (1 + noise * rng.standard_normal(batches))).clip(min=0).tolist()
        out.append(GroupScores(f"g{i}", ["w4", "none"], [4.0, 16.0], "none", [per_batch, [0.0] * batches]))
    totals = sorted(range(len(out)), key=lambda i: sum(out[i].batch_scores[0]))
    for i in totals[: len(out) // 2]:  # the cheapest half is quantized: the exact optimum on the full data
        out[i].chosen = "w4"
    return out


def test_clamp_and_budget_follow_modelopt():
    assert clamp([3.0, 5.0, 1.0, 2.0]) == [3.0, 3.0, 1.0, 1.0]
    g = _groups([1.0, 2.0], 0.0)
    assert budget_cost(g, 10.0) == 2 * 16 * 10 / 16  # the uncompressed cost of both groups, times 10/16


def test_nearly_equal_scores_are_reported_unstable():
    groups = _groups([1.0] * 20, noise=0.3)
    res = bootstrap_stability(groups, effective_bits=10.0, resamples=40, seed=0)
    assert res["computable"] is True and res["solved"] == 40 and res["groups"] == 20 and res["batches"] == 8
    assert res["stable"] is False
    assert res["flip_share"] > 0.2  # a coin toss over which half is quantized
    assert res["jaccard_mean"] < 0.7
    assert res["groups_ever_flipped"] >= 15
    lo, hi = res["score_ci"]
    assert lo < res["total_score"] * 1.2 and hi > lo


def test_clearly_separated_scores_are_reported_stable():
    groups = _groups([1e-3] * 10 + [1.0] * 10, noise=0.3)
    res = bootstrap_stability(groups, effective_bits=10.0, resamples=40, seed=0)
    assert res["stable"] is True
    assert res["flip_share"] == 0.0 and res["groups_ever_flipped"] == 0
    assert res["jaccard_mean"] == res["jaccard_min"] == 1.0
    assert res["full_solve_flips"] == 0  # the full data re-solved gives the recipe the groups start with
    lo, hi = res["score_ci"]
    assert abs(res["total_score"] - 0.08) < 0.02  # 10 cheap groups x 8 batches x 1e-3
    assert 0.04 < lo <= hi < 0.2  # a sensitive group in any resample would add ~8


def test_bootstrap_is_deterministic_under_a_seed_whatever_the_threads():
    groups = _groups([1.0] * 12, noise=0.3)
    a = bootstrap_stability(groups, 10.0, resamples=30, seed=7, threads=1)
    b = bootstrap_stability(groups, 10.0, resamples=30, seed=7, threads=4)  # solved concurrently, same order
    c = bootstrap_stability(groups, 10.0, resamples=30, seed=8)
    assert a == b
    # resamples that differ (some flip groups), so the thread count had something to get wrong
    assert 0 < a["flip_share"] < 1 and a["score_ci"][0] < a["score_ci"][1]
    assert (a["score_ci"], a["flip_share"]) != (c["score_ci"], c["flip_share"])


def test_one_batch_is_not_computable_and_never_called_stable():
    groups = _groups([1.0, 2.0, 3.0], noise=0.1, batches=1)
    res = bootstrap_stability(groups, 10.0, resamples=10, seed=0)
    assert res["computable"] is False and res["stable"] is None
    assert res["reason"] == "1 score batch: nothing to resample (score more batches)"


def test_groups_from_manifest_layers():
    layers = [{"name": "a", "formats": ["w4", "none"], "costs": [4, 16], "chosen": "w4",
               "batch_scores": [[1.0, 2.0], [0.0, 0.0]]}]
    (g,) = groups_from_layers(layers)
    assert (g.name, g.chosen, g.batch_scores[0]) == ("a", "w4", [1.0, 2.0])
    assert groups_from_layers([{**layers[0], "batch_scores": None}]) is None


def test_threaded_resamples_leave_the_warnings_filters_alone(monkeypatch):
    """scipy's dense LinearConstraint swaps the process-wide warnings filters; run from several threads at once it
    left "error" installed, and ModelOpt's next warning failed every cell of a worker's next union call (seen on an
    H200 host). The solves on the pool must not touch the filters at all."""
    import threading
    import warnings

    touched: list[str] = []
    real = warnings.catch_warnings.__enter__

    def spy(self):  # the class is shared by every module that imported it by name (scipy does)
        touched.append(threading.current_thread().name)
        return real(self)

    monkeypatch.setattr(warnings.catch_warnings, "__enter__", spy)
    before = list(warnings.filters)
    res = bootstrap_stability(_groups([1.0] * 12, noise=0.3), 10.0, resamples=40, seed=3, threads=4)
    assert res["computable"] and res["solved"] == 40
    # the shared engine runs the whole bootstrap, the knapsack's construction included, on a background thread
    # while the main thread runs ModelOpt (execution/stability_pipeline.py)
    with StabilityPipeline() as pipeline:
        pipeline.submit(_Run(), lambda: bootstrap_stability(_groups([1.0] * 12, noise=0.3), 10.0, 40, 3, threads=4))
        (run,) = pipeline.drain()
    assert run.trust["stability"] == res
    assert [name for name in touched if name.startswith(THREAD_PREFIX)] == []
    assert warnings.filters == before


def _slow_block(seconds: float, block: dict) -> dict:
    """A bootstrap that takes a while (module level: a solver process imports it by name)."""
    import time

    time.sleep(seconds)
    return block


class _Run:
    """The parts of a CellRun the pipeline fills in."""

    def __init__(self, name: str = "c", trust_s: float = 0.25) -> None:
        self.name = name
        self.trust = {"stability": None, "layer_fidelity": None}
        self.telemetry = {"phases": {"evaluate": 1.0, "trust": trust_s}, "wall_s": 1.0 + trust_s}


def test_pipeline_releases_rows_in_order_and_charges_the_wait():
    """A row leaves the pipeline only when its stability is in and every row before it has left, so the rows are
    recorded in the cells' order; a row with nothing to wait for (an error row) keeps its place."""
    import threading
    import time

    gate = threading.Event()
    with StabilityPipeline() as pipeline:
        pipeline.submit(_Run("a"), lambda: gate.wait(5) and {"stable": True})
        pipeline.hold(_Run("err"))
        pipeline.submit(_Run("b"), lambda: {"stable": False})
        assert list(pipeline.ready()) == []  # "a" still solving: nothing may overtake it
        gate.set()
        runs = list(pipeline.drain())
    assert [r.name for r in runs] == ["a", "err", "b"]
    a, err, b = runs
    assert a.trust["stability"] == {"stable": True} and b.trust["stability"] == {"stable": False}
    assert err.trust["stability"] is None and "stability_s" not in err.telemetry
    assert len(pipeline) == 0
    # the time a row still waited for its bootstrap is on the critical path: it goes to the trust phase
    with StabilityPipeline() as pipeline:
        pipeline.submit(_Run("slow"), lambda: time.sleep(0.3) or {"stable": True})
        (slow,) = pipeline.drain()
    phases = slow.telemetry["phases"]
    assert phases["trust"] >= 0.25 + 0.2 and slow.telemetry["wall_s"] == round(phases["evaluate"] + phases["trust"], 3)
    assert slow.telemetry["stability_s"] >= 0.3


def test_an_interrupt_while_waiting_keeps_the_row_queued():
    """Ctrl-C while the runner waits for a bootstrap must not drop that row: the runner drains the queue before it
    stops (execution/shared_runner.py), and the row is still at its head."""
    import threading

    gate = threading.Event()
    with StabilityPipeline() as pipeline:
        pipeline.submit(_Run("a"), lambda: gate.wait(5) and {"stable": True})
        real = pipeline._pending[0][1].result
        pipeline._pending[0][1].result = lambda: (_ for _ in ()).throw(KeyboardInterrupt)
        try:
            next(pipeline.drain())
        except KeyboardInterrupt:
            pass
        assert len(pipeline) == 1  # still queued
        pipeline._pending[0][1].result = real
        gate.set()
        (a,) = pipeline.drain()
    assert a.name == "a" and a.trust["stability"] == {"stable": True}


def test_repeated_resamples_are_solved_once(monkeypatch):
    """With 2 score batches only 3 resamples exist ({1,1}, {1,2}, {2,2}): 50 draws need 3 solves (+ the full-data
    self-check), and every draw still counts in the statistics."""
    from quantsweep.engine.exact_solver import KnapsackProblem

    solves = []
    real = KnapsackProblem.solve
    monkeypatch.setattr(KnapsackProblem, "solve", lambda self, scores: solves.append(1) or real(self, scores))
    res = bootstrap_stability(_groups([1.0] * 12, noise=0.5, batches=2), 10.0, resamples=50, seed=0, threads=1)
    assert res["distinct_resamples"] == 3 and len(solves) == 3 + 1
    assert res["solved"] == 50 and res["batches"] == 2


def test_bootstrap_equals_one_solve_per_draw():
    """The de-duplicated, threaded bootstrap gives what solving every draw in turn gives (the definition)."""
    from quantsweep.engine.exact_solver import solve_exact
    from quantsweep.trust.stability import budget_cost

    groups = _groups([1.0, 1.1, 0.9, 1.3, 0.7, 1.0, 1.2, 0.8], noise=0.6, batches=3, seed=5)
    res = bootstrap_stability(groups, 10.0, resamples=40, seed=11, threads=3)
    per_batch = [np.asarray(g.batch_scores) for g in groups]
    costs, budget = [g.costs for g in groups], budget_cost(groups, 10.0)
    ref = [g.formats.index(g.chosen) for g in groups]
    rng = np.random.default_rng(11)
    shares, objectives = [], []
    for _ in range(40):
        counts = np.bincount(rng.integers(0, 3, size=3), minlength=3).astype(np.float64)
        scores = [clamp((a @ counts).tolist()) for a in per_batch]
        choice, _ = solve_exact(scores, costs, budget)
        shares.append(np.mean([c != r for c, r in zip(choice, ref, strict=True)]))
        objectives.append(sum(scores[i][c] for i, c in enumerate(choice)))
    assert res["distinct_resamples"] < 40  # some draws repeat, so the de-duplication was exercised
    assert res["flip_share"] == round(float(np.mean(shares)), 6) and 0 < res["flip_share"] < 1
    assert res["score_ci"] == [float(x) for x in np.percentile(objectives, [2.5, 97.5])]


def test_bootstraps_in_solver_processes_equal_the_threads_and_survive_a_dead_worker(monkeypatch):
    """GPU sweeps solve the bootstraps in spawned solver processes (execution/stability_pipeline.py): the same
    blocks as in this process, released in order; a pool whose worker died computes them here instead."""
    import functools
    import os
    import signal
    import time

    from quantsweep.errors import InputError
    from quantsweep.execution import stability_pipeline
    from quantsweep.trust.stability import stability_block

    def job(seed: int, threads: int) -> functools.partial:
        return functools.partial(stability_block, _groups([1.0] * 12, noise=0.3), 10.0, 30, seed, 0.05, threads)

    jobs = [job(seed, 1) for seed in (1, 2)]
    expected = [j() for j in jobs]
    assert expected[0] != expected[1]  # two different blocks, so that an order mix-up shows
    # a worker solves a bootstrap's resamples on its share of the CPUs beside the main process (here: 2 threads)
    monkeypatch.setattr(stability_pipeline, "default_threads", lambda: 6)
    with StabilityPipeline(processes=2) as pipeline:
        assert pipeline.solver_threads == 2
        for name, seed in zip("ab", (1, 2)):
            pipeline.submit(_Run(name), job(seed, pipeline.solver_threads))
        runs = list(pipeline.drain())
    assert [r.name for r in runs] == ["a", "b"]
    assert [r.trust["stability"] for r in runs] == expected
    assert all(r.telemetry["stability_s"] > 0 for r in runs)
    pool = stability_pipeline._process_pool
    assert pool is not None and len(pool._processes) == 2  # both workers started with the pipeline

    with StabilityPipeline(processes=2) as pipeline:  # the same pool, reused
        assert pipeline._pool is pool
        # Ctrl-C reaches the whole process group: a worker ignores it and its bootstrap still comes back
        pipeline.submit(_Run("slow"), functools.partial(_slow_block, 1.0, {"stable": True}))
        time.sleep(0.5)
        for proc in list(pool._processes.values()):
            os.kill(proc.pid, signal.SIGINT)
        (slow,) = pipeline.drain()
        assert slow.trust["stability"] == {"stable": True} and not pool._broken
        # a worker killed under a running bootstrap: that block is computed here; the pool is replaced
        pipeline.submit(_Run("c"), functools.partial(_slow_block, 1.0, expected[0]))
        time.sleep(0.5)
        for proc in list(pool._processes.values()):
            proc.kill()
        (c,) = pipeline.drain()
        assert c.trust["stability"] == expected[0]
        assert pool._broken and pipeline._pool is not pool
        pipeline.submit(_Run("d"), jobs[1])  # on the fresh pool
        (d,) = pipeline.drain()
    assert d.trust["stability"] == expected[1]
    fresh = stability_pipeline._process_pool
    assert fresh is not pool and not fresh._broken and len(fresh._processes) >= 1

    # what never reaches the bootstrap, and a bootstrap that raises: recorded, never raised (the cell stands)
    assert stability_block(None, 10.0, 30, 1, 0.05) == {
        "computable": False, "reason": "no per-batch scores (the kl_div method's scores are not sums over batches)",
        "stable": None, "resamples": 30, "seed": 1, "max_flip_share": 0.05}
    broken = _groups([1.0] * 4, noise=0.3)
    broken[0].chosen = "w9"  # not one of its formats
    failed = stability_block(broken, 10.0, 30, 1, 0.05)
    assert failed["computable"] is False and failed["reason"].startswith("ValueError: 'w9' is not in list")

    with StabilityPipeline(processes=0) as pipeline:  # the background thread: one solve at a time (the GIL)
        assert pipeline.solver_threads == stability_pipeline.SOLVER_THREADS == 1
    monkeypatch.setattr(stability_pipeline, "default_threads", lambda: 16)
    assert stability_pipeline.threads_per_process(4) == 3  # 16 CPUs, 2 kept for the main process
    monkeypatch.setattr(stability_pipeline, "default_threads", lambda: 2)
    assert stability_pipeline.threads_per_process(1) == 1  # never none

    monkeypatch.delenv(stability_pipeline.PROCESSES_ENV, raising=False)
    assert stability_pipeline.solver_processes("cpu") == 0
    assert 1 <= stability_pipeline.solver_processes("cuda") <= stability_pipeline.MAX_PROCESSES
    monkeypatch.setenv(stability_pipeline.PROCESSES_ENV, "3")
    assert stability_pipeline.solver_processes("cpu") == 3
    monkeypatch.setenv(stability_pipeline.PROCESSES_ENV, "many")
    with pytest.raises(InputError, match="QUANTSWEEP_STABILITY_PROCESSES='many'"):
        stability_pipeline.solver_processes("cuda")
