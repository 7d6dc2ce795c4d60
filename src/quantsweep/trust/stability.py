"""Recipe stability: would the same search on other score data of the same kind pick the same recipe?

AutoQuantize's gradient score of a (decision group, format) is a sum over the score batches. A recipe chosen from
a few batches can hang on which batches they were (mlx-lm users saw the same seed give different recipes). The
bootstrap asks exactly that: draw the score batches again with replacement (as many as were scored, seeded),
rebuild each group's scores from the per-batch contributions, apply ModelOpt's clamp (a format's score is at most
the score of the format before it, `min(score, prev_score)`), re-solve the cell's knapsack with the same exact
solver and the same weight budget (engine/exact_solver.py `KnapsackProblem`, built once per cell), and compare
with the cell's recipe:

  * `flip_share`: the share of decision groups whose choice differs from the cell's, averaged over resamples;
  * `jaccard_mean` / `jaccard_min`: overlap |A ∩ B| / |A ∪ B| of the quantized sets (groups not left at "none";
    1 when both are empty);
  * `score_ci`: the percentile interval of the re-solved total score (the solver's objective: the sum of the chosen
    clamped scores, on the scale of the full score set, since a resample has as many batches);
  * `stable`: `flip_share <= max_flip_share`.

With one score batch there is nothing to resample: the result says so (`computable: false`) instead of reporting
a perfectly stable recipe. Pure (numpy and scipy through the solver, no torch): the unit tests run in a second.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..engine.exact_solver import KnapsackProblem

THREAD_PREFIX = "qs-stability"  # the solver threads' names (tests check none of them touches the warnings filters)
MAX_THREADS = 16  # resamples solved at once, at most (one cell's pool need not take a whole large host)
DEFAULT_RESAMPLES = 50
DEFAULT_MAX_FLIP_SHARE = 0.05
CI_LEVEL = 0.95
NONE_LABEL = "none"


@dataclass
class GroupScores:
    """One decision group as the solver saw it, with its per-batch raw scores (formats x batches)."""

    name: str
    formats: list[str]
    costs: list[float]
    chosen: str
    batch_scores: list[list[float]]


def clamp(scores: list[float]) -> list[float]:
    """ModelOpt's `initialize_candidate_stats` clamp, in the group's format order."""
    out, prev = [], float("inf")
    for s in scores:
        s = min(s, prev)
        out.append(s)
        prev = s
    return out


def budget_cost(groups: list[GroupScores], effective_bits: float) -> float:
    """ModelOpt's weight budget: the groups' uncompressed ("none") cost times effective_bits / 16 (a group
    without a "none" format counts its largest cost, the uncompressed one in ModelOpt's cost model)."""
    total = 0.0
    for g in groups:
        total += g.costs[g.formats.index(NONE_LABEL)] if NONE_LABEL in g.formats else max(g.costs)
    return total * effective_bits / 16.0


def _not_computable(reason: str, **extra: Any) -> dict[str, Any]:
    return {"computable": False, "reason": reason, "stable": None, **extra}


def bootstrap_stability(
    groups: list[GroupScores],
    effective_bits: float,
    resamples: int = DEFAULT_RESAMPLES,
    seed: int = 0,
    max_flip_share: float = DEFAULT_MAX_FLIP_SHARE,
    threads: int | None = None,
) -> dict[str, Any]:
    """The stability block of one cell (see the module docstring). Deterministic for a given `seed`, whatever
    `threads` (how many resamples are solved at once; None or 0: one per CPU this process may use, at most 16)."""
    settings = {"resamples": resamples, "seed": seed, "max_flip_share": max_flip_share}
    if not groups:
        return _not_computable("no decision groups", **settings)
    widths = {len(bs) for g in groups for bs in g.batch_scores}
    if len(widths) != 1 or any(len(g.batch_scores) != len(g.formats) for g in groups):
        return _not_computable("per-batch scores missing or inconsistent", **settings)
    n = widths.pop()
    settings["batches"] = n
    if n < 2:
        return _not_computable(f"{n} score batch: nothing to resample (score more batches)", **settings)
    per_batch = [np.asarray(g.batch_scores, dtype=np.float64) for g in groups]
    if not all(np.all(np.isfinite(a)) for a in per_batch):
        return _not_computable("non-finite per-batch scores", **settings)
    costs = [list(map(float, g.costs)) for g in groups]
    max_cost = budget_cost(groups, effective_bits)
    ref = [g.formats.index(g.chosen) for g in groups]
    ref_quant = {i for i, g in enumerate(groups) if g.formats[ref[i]] != NONE_LABEL}
    full = [clamp(a.sum(axis=1).tolist()) for a in per_batch]
    total_score = float(sum(full[i][c] for i, c in enumerate(ref)))
    # a self-check, solved first: the full data, re-solved, gives the cell's own recipe (per-batch scores add up to
    # the raw scores, the budget is the search's); more than 0 means ties, or inputs that are not the search's.
    # The resamples are drawn in order from one generator (so the same seed gives the same resamples whatever the
    # number of threads), then solved concurrently: HiGHS releases the GIL, and the solves are ~all of the time
    # (~20 ms each; 50 of them were ~1 s per cell on a GPU host, as long as an 8B cell's union share)
    # A resample is a multiset of batches: with n batches only C(2n-1, n) exist (3 for 2 batches, 35 for 4), so
    # many of the draws repeat; each distinct one is solved once (the same problem gives the same solution).
    rng = np.random.default_rng(seed)
    draws = [np.bincount(rng.integers(0, n, size=n), minlength=n) for _ in range(resamples)]
    distinct: dict[bytes, int] = {}
    for counts in draws:
        distinct.setdefault(counts.tobytes(), len(distinct))
    unique = [np.frombuffer(key, dtype=draws[0].dtype).astype(np.float64) for key in distinct]
    unique_problems = [[clamp((a @ counts).tolist()) for a in per_batch] for counts in unique]
    full_choice, *unique_solutions = _solve_all([full, *unique_problems], KnapsackProblem(costs, max_cost), threads)
    which = [distinct[counts.tobytes()] for counts in draws]
    problems = [unique_problems[i] for i in which]
    solutions = [unique_solutions[i] for i in which]
    settings["distinct_resamples"] = len(unique)
    full_solve_flips = None if full_choice is None else sum(c != r for c, r in zip(full_choice, ref, strict=True))
    flips = np.zeros(len(groups))
    flip_shares, jaccards, objectives = [], [], []
    failed = 0
    for scores, choice in zip(problems, solutions, strict=True):
        if choice is None:
            failed += 1
            continue
        differs = np.array([c != r for c, r in zip(choice, ref, strict=True)])
        flips += differs
        flip_shares.append(float(differs.mean()))
        quant = {i for i, g in enumerate(groups) if g.formats[choice[i]] != NONE_LABEL}
        union = quant | ref_quant
        jaccards.append(len(quant & ref_quant) / len(union) if union else 1.0)
        objectives.append(float(sum(scores[i][c] for i, c in enumerate(choice))))
    if not flip_shares:
        return _not_computable(f"no resample could be solved ({failed} of {resamples})", **settings)
    tail = (1 - CI_LEVEL) / 2 * 100
    lo, hi = np.percentile(objectives, [tail, 100 - tail])
    flip_share = float(np.mean(flip_shares))
    return {
        "computable": True,
        "reason": None,
        **settings,
        "solved": len(flip_shares),
        "groups": len(groups),
        "flip_share": round(flip_share, 6),
        "groups_ever_flipped": int(np.count_nonzero(flips)),
        "full_solve_flips": full_solve_flips,
        "jaccard_mean": round(float(np.mean(jaccards)), 6),
        "jaccard_min": round(float(np.min(jaccards)), 6),
        "total_score": total_score,
        "score_ci": [float(lo), float(hi)],
        "ci_level": CI_LEVEL,
        "stable": flip_share <= max_flip_share,
    }


def stability_block(
    groups: list[GroupScores] | None,
    effective_bits: float,
    resamples: int = DEFAULT_RESAMPLES,
    seed: int = 0,
    max_flip_share: float = DEFAULT_MAX_FLIP_SHARE,
    threads: int | None = None,
) -> dict[str, Any]:
    """A cell's `trust.stability` block, never raising: `groups` None when the search has no per-batch scores
    (the kl_div method), and a bootstrap that fails is recorded as not computable, with its reason (the cell
    stands). Plain data in and out, so that it can run in a solver process (execution/stability_pipeline.py)."""
    settings = {"resamples": resamples, "seed": seed, "max_flip_share": max_flip_share}
    if groups is None:
        return _not_computable("no per-batch scores (the kl_div method's scores are not sums over batches)", **settings)
    try:
        return bootstrap_stability(groups, effective_bits, resamples, seed, max_flip_share, threads)
    except Exception as exc:  # a check that fails is recorded, the cell stands
        return _not_computable(f"{type(exc).__name__}: {exc}", **settings)


def default_threads() -> int:
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cpus = os.cpu_count() or 1
    return max(1, min(MAX_THREADS, cpus))


def _solve_all(
    problems: list[list[list[float]]], knapsack: KnapsackProblem, threads: int | None
) -> list[list[int] | None]:
    """The knapsack solved for every score vector, in order; several at once on a thread pool when threads > 1
    (its constraints were built in this thread: see engine/exact_solver.py on scipy and the warnings filters)."""
    threads = min(threads or default_threads(), len(problems))
    if threads <= 1:
        return [knapsack.solve(p)[0] for p in problems]
    with ThreadPoolExecutor(max_workers=threads, thread_name_prefix=THREAD_PREFIX) as pool:
        return [choice for choice, _status in pool.map(knapsack.solve, problems)]


def groups_from_layers(layers: list[dict[str, Any]]) -> list[GroupScores] | None:
    """The groups of a manifest's `layers` (LayerGroup.to_dict), or None when they carry no per-batch scores."""
    out = []
    for g in layers:
        bs = g.get("batch_scores")
        if not bs:
            return None
        out.append(GroupScores(g["name"], list(g["formats"]), list(g["costs"]), g["chosen"], bs))
    return out
