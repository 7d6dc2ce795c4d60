"""Per-batch score contributions, recorded the same way by both engines (for recipe stability, docs/trust.md).

AutoQuantize's gradient score of a (decision group, format) is a plain sum over the score batches, and both
engines can read ModelOpt's accumulators after every batch (`call_auto_quantize(after_batch=...)`, snapshotted
with `engine.shared._snapshot`): the shared engine already keeps these running sums so that a cell scoring k
batches reads sum k; the naive engine keeps them for this purpose alone. The contribution of batch b is the
difference of consecutive running sums, so the contributions of a cell's k batches add up to its raw score (to
float rounding) and a bootstrap can resample them (trust/stability.py).
"""

from __future__ import annotations


def increments(cumulative: list[float], k: int | None = None) -> list[float]:
    """The per-batch contributions of the first `k` running sums (all when None): [c1, c2 - c1, ...]."""
    series = cumulative if k is None else cumulative[:k]
    return [float(c - p) for c, p in zip(series, [0.0, *series[:-1]], strict=True)]
