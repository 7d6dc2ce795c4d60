"""Weight statistics on small arrays: exact values (seed fixture §2.15), whole-matrix percentiles, group ratios."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from weights_helpers import SEED_BANK

from quantsweep.weights.stats import (
    EPS,
    STAT_COLUMNS,
    group_outliers,
    percentiles,
    percentiles_inplace,
    weight_stats,
)


def test_seed_bank_exact_per_expert_values():
    bank = np.array(SEED_BANK, dtype=np.float32)
    s0, s1 = weight_stats(bank[0]), weight_stats(bank[1])
    assert (s0["mean"], s1["mean"]) == (1.0, 0.25)
    assert s0["std"] == pytest.approx(math.sqrt(2.5), abs=1e-15)
    assert s1["std"] == pytest.approx(math.sqrt(5.1875), abs=1e-15)
    assert (s0["mean_abs"], s1["mean_abs"]) == (1.5, 1.75)
    assert s0["rms"] == pytest.approx(math.sqrt(3.5), abs=1e-15)
    assert s1["rms"] == pytest.approx(math.sqrt(5.25), abs=1e-15)
    assert (s0["max_abs"], s1["max_abs"]) == (3.0, 4.0)
    assert (s0["p50_abs"], s1["p50_abs"]) == (1.5, 1.5)
    assert s0["p99_abs"] == pytest.approx(2.97, abs=1e-12)
    assert s1["p99_abs"] == pytest.approx(3.94, abs=1e-12)
    assert s0["p999_abs"] == pytest.approx(2.997, abs=1e-12)
    assert s0["outlier_max_over_mean"] == pytest.approx(3.0 / 1.5, rel=1e-12)
    assert s1["outlier_p99_over_median"] == pytest.approx(3.94 / 1.5, rel=1e-12)
    assert s1["outlier_p999_over_median"] == pytest.approx(3.994 / 1.5, rel=1e-12)
    # 2 columns: groups of 32 / 64 do not fit -> NaN, never a made-up number
    assert all(math.isnan(s0[f"g{g}_outlier_{a}"]) for g in (32, 64) for a in ("median", "p95", "max"))
    assert s0["nonfinite"] == 0
    assert set(s0) == set(STAT_COLUMNS)


def test_seed_bank_group_outliers_of_two():
    bank = np.abs(np.array(SEED_BANK, dtype=np.float32))
    # expert 0: groups [1, 0] -> 1/0.5 = 2, [2, 3] -> 3/2.5 = 1.2; expert 1: [1, 2] -> 4/3, [4, 0] -> 2
    med0, p95_0, max0 = group_outliers(bank[0], 2)
    med1, _, max1 = group_outliers(bank[1], 2)
    assert max0 == pytest.approx(2.0, rel=1e-9) and max1 == pytest.approx(2.0, rel=1e-9)
    assert med0 == pytest.approx((2.0 + 1.2) / 2, rel=1e-9)
    assert p95_0 == pytest.approx(1.2 + 0.95 * (2.0 - 1.2), rel=1e-9)
    assert med1 == pytest.approx((4 / 3 + 2.0) / 2, rel=1e-9)


def test_group_outliers_of_32_and_64_along_the_last_dim():
    w = np.ones((2, 128), dtype=np.float32)
    w[0, 5] = 33.0  # one spike in row 0, group 0 of 32 / of 64
    s = weight_stats(w)
    # group of 32 with the spike: max 33, mean (31 + 33)/32 = 2 -> 16.5; the 7 other groups: 1
    assert s["g32_outlier_max"] == pytest.approx(16.5, rel=1e-9)
    assert s["g32_outlier_median"] == pytest.approx(1.0, rel=1e-9)
    assert s["g32_outlier_p95"] == pytest.approx(1.0 + (16.5 - 1.0) * (0.95 * 7 - 6), rel=1e-9)
    # group of 64 with the spike: mean (63 + 33)/64 = 1.5 -> 22
    assert s["g64_outlier_max"] == pytest.approx(22.0, rel=1e-9)


def test_groups_run_along_rows_not_down_columns():
    w = np.ones((64, 64), dtype=np.float32)
    w[:, 5] = 33.0  # a hot input channel: every row has one spike in its first group of 32
    s = weight_stats(w)
    assert s["g32_outlier_max"] == pytest.approx(16.5, rel=1e-9)
    assert s["g32_outlier_median"] == pytest.approx((16.5 + 1.0) / 2, rel=1e-9)  # 64 groups at 16.5, 64 at 1
    # transposed, the hot channel is one uniform row: no group sees a spike
    assert weight_stats(w.T.copy())["g32_outlier_max"] == pytest.approx(1.0, rel=1e-9)


def test_percentiles_use_the_whole_matrix_not_a_sample():
    # 10,000 values with exactly ten outliers: the 99.9th percentile sits between the last bulk value and them
    w = np.zeros((100, 100), dtype=np.float32)
    w.flat[:9990] = np.linspace(0.0, 1.0, 9990, dtype=np.float32)
    w.flat[9990:] = 100.0
    s = weight_stats(w)
    a = np.abs(w.astype(np.float64)).ravel()
    assert s["p999_abs"] == np.percentile(a, 99.9)
    assert s["p99_abs"] == np.percentile(a, 99)
    assert s["p50_abs"] == np.percentile(a, 50)
    assert s["max_abs"] == 100.0


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.floats(-1e3, 1e3, allow_nan=False, width=32), min_size=1, max_size=300),
    st.lists(st.floats(0, 100), min_size=1, max_size=6),
)
def test_percentiles_match_numpy_linear_exactly(values, qs):
    arr = np.array(values, dtype=np.float64)
    assert percentiles_inplace(arr.copy(), qs) == pytest.approx(list(np.percentile(arr, qs)), rel=0, abs=0)


def test_percentiles_drop_nan_and_empty_is_nan():
    assert percentiles(np.array([np.nan, 1.0, 3.0]), [50]) == [2.0]
    assert math.isnan(percentiles(np.array([]), [50])[0])


def test_stats_accumulate_in_float64():
    # float32 accumulation would lose the +1s: 2**24 + 1 is not a float32
    w = np.array([[2.0**24, 1.0, 1.0, 1.0]], dtype=np.float32)
    assert weight_stats(w)["mean"] == (2.0**24 + 3.0) / 4


def test_nonfinite_counted_and_bf16_style_input_accepted():
    w = np.array([[1.0, np.inf], [np.nan, 2.0]], dtype=np.float32)
    assert weight_stats(w)["nonfinite"] == 2
    with pytest.raises(ValueError, match="2-D"):
        weight_stats(np.zeros(3, dtype=np.float32))


def test_eps_guards_an_all_zero_matrix():
    s = weight_stats(np.zeros((4, 64), dtype=np.float32))
    assert s["outlier_max_over_mean"] == 0.0 and s["std"] == 0.0 and s["g32_outlier_max"] == 0.0
    assert EPS == 1e-12
