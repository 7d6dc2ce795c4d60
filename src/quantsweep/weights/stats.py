"""Per-matrix weight statistics (pure numpy).

Precision: a matrix is held as float32 (bf16/fp16/fp32 weights convert exactly); every sum, mean, variance and
ratio is accumulated and computed in float64. Percentiles are exact order statistics of |w| over the *whole*
matrix (no sampling) with numpy's default ``linear`` interpolation: for n values sorted ascending and q in
[0, 100], position h = q/100 * (n-1), value = v[floor h] + (h - floor h) * (v[floor h + 1] - v[floor h]). They are
found with `np.partition` (linear time, one float32 copy of |w|), so a large embedding does not need a sort.

Columns (all over the r x c matrix, n = r*c, eps = 1e-12):

- ``mean``, ``std`` (population, two-pass), ``mean_abs``, ``rms`` = sqrt(mean(w^2)), ``max_abs``;
- ``p50_abs``, ``p99_abs``, ``p999_abs``: percentiles 50 / 99 / 99.9 of |w|;
- ``outlier_max_over_mean`` = max_abs / (mean_abs + eps), ``outlier_p99_over_median`` = p99_abs / (p50_abs + eps),
  ``outlier_p999_over_median`` = p999_abs / (p50_abs + eps);
- for G in 32, 64: the matrix's rows are cut into groups of G consecutive elements along the last dimension
  (the input dimension, as ModelOpt's ``block_sizes: {-1: G}`` groups weights); per group the ratio
  max|w| / (mean|w| + eps); ``g{G}_outlier_median``, ``g{G}_outlier_p95`` (percentiles over all groups) and
  ``g{G}_outlier_max``. NaN when the number of columns is not a multiple of G;
- ``nonfinite``: count of NaN/inf weights (the other statistics are then NaN or inf).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

EPS = 1e-12
ABS_PERCENTILES = (50.0, 99.0, 99.9)
GROUP_SIZES = (32, 64)
GROUP_PERCENTILE = 95.0
_CHUNK = 1 << 22  # elements per float64 temporary in the two-pass variance


def _pct_name(q: float) -> str:
    return f"p{str(q).replace('.', '').rstrip('0') if q != int(q) else int(q)}_abs"


STAT_COLUMNS: tuple[str, ...] = (
    "mean",
    "std",
    "mean_abs",
    "rms",
    "max_abs",
    *(_pct_name(q) for q in ABS_PERCENTILES),
    "outlier_max_over_mean",
    "outlier_p99_over_median",
    "outlier_p999_over_median",
    *(f"g{g}_outlier_{a}" for g in GROUP_SIZES for a in ("median", "p95", "max")),
    "nonfinite",
)


def percentiles_inplace(values: np.ndarray, qs: Sequence[float]) -> list[float]:
    """Exact linear-interpolated percentiles of a 1-D array; `values` is partitioned (reordered) in place."""
    n = values.size
    if n == 0:
        return [math.nan for _ in qs]
    positions = [float(q) / 100.0 * (n - 1) for q in qs]
    lows = [int(math.floor(h)) for h in positions]
    highs = [min(lo + 1, n - 1) for lo in lows]
    kth = sorted(set(lows) | set(highs))
    values.partition(kth)
    out = []
    for h, lo, hi in zip(positions, lows, highs, strict=True):
        a, b = float(values[lo]), float(values[hi])
        t = h - lo
        # numpy's _lerp: a + (b-a)*t, written from the upper end when t >= 0.5 (monotone, exact at t = 1)
        out.append(b - (b - a) * (1.0 - t) if t >= 0.5 else a + (b - a) * t)
    return out


def percentiles(values: np.ndarray, qs: Sequence[float]) -> list[float]:
    """Like `percentiles_inplace` on a float64 copy, NaNs dropped (for summaries)."""
    arr = np.asarray(values, dtype=np.float64).ravel()
    arr = arr[~np.isnan(arr)]
    return percentiles_inplace(arr.copy(), qs)


def _moments(w: np.ndarray) -> tuple[float, float, float]:
    """(mean, population std, rms) in float64, the squares summed chunk by chunk."""
    n = w.size
    flat = w.reshape(-1)
    total = float(np.sum(flat, dtype=np.float64))
    mean = total / n
    ss_dev = 0.0
    ss = 0.0
    for start in range(0, n, _CHUNK):
        block = flat[start : start + _CHUNK].astype(np.float64)
        ss += float(np.dot(block, block))
        block -= mean
        ss_dev += float(np.dot(block, block))
    return mean, math.sqrt(ss_dev / n), math.sqrt(ss / n)


def group_outliers(abs_w: np.ndarray, group: int, eps: float = EPS) -> tuple[float, float, float]:
    """(median, p95, max) over groups of `group` along the last dim of max|w| / (mean|w| + eps)."""
    rows, cols = abs_w.shape
    if cols % group or abs_w.size == 0:
        return math.nan, math.nan, math.nan
    g = abs_w.reshape(rows, cols // group, group)
    ratio = g.max(axis=-1).astype(np.float64) / (g.mean(axis=-1, dtype=np.float64) + eps)
    flat = ratio.reshape(-1)
    med, p = percentiles_inplace(flat.copy(), (50.0, GROUP_PERCENTILE))
    return med, p, float(flat.max())


def weight_stats(w: np.ndarray, eps: float = EPS) -> dict[str, float]:
    """The STAT_COLUMNS of a 2-D matrix (any float dtype; held as float32, accumulated in float64)."""
    if w.ndim != 2:
        raise ValueError(f"weight_stats expects a 2-D matrix, got shape {tuple(w.shape)}")
    w = np.ascontiguousarray(w, dtype=np.float32)
    n = w.size
    out: dict[str, float] = {c: math.nan for c in STAT_COLUMNS}
    out["nonfinite"] = 0
    if n == 0:
        return out
    out["nonfinite"] = int(n - np.count_nonzero(np.isfinite(w)))
    mean, std, rms = _moments(w)
    a = np.abs(w)
    mean_abs = float(np.sum(a, dtype=np.float64)) / n
    max_abs = float(a.max())
    out.update(mean=mean, std=std, mean_abs=mean_abs, rms=rms, max_abs=max_abs)
    for g in GROUP_SIZES:
        med, p, mx = group_outliers(a, g, eps)
        out[f"g{g}_outlier_median"], out[f"g{g}_outlier_p95"], out[f"g{g}_outlier_max"] = med, p, mx
    pcts = percentiles_inplace(a.reshape(-1), ABS_PERCENTILES)  # reorders `a`: nothing uses its layout after
    for q, v in zip(ABS_PERCENTILES, pcts, strict=True):
        out[_pct_name(q)] = v
    p50, p99, p999 = out["p50_abs"], out["p99_abs"], out["p999_abs"]
    out["outlier_max_over_mean"] = max_abs / (mean_abs + eps)
    out["outlier_p99_over_median"] = p99 / (p50 + eps)
    out["outlier_p999_over_median"] = p999 / (p50 + eps)
    return out
