"""Clustered standard errors, paired differences between cells, and bits per weight counting scales — by hand."""

from __future__ import annotations

import math

import pytest
import torch

from quantsweep.catalogue import QUANT_PAIRS
from quantsweep.engine.quality import clustered_stderr, per_cluster_means
from quantsweep.overlay import apply_overlay
from quantsweep.planning import resolve_granularity
from quantsweep.quant_summary import recipe_storage_bits, storage_bits
from quantsweep.reports.noise import comparisons, paired_difference


def test_clustered_stderr_matches_a_hand_computation():
    # 3 sequences of 2 tokens: x = [1, 3 | 2, 2 | 6, 4], mean 3
    x = torch.tensor([1.0, 3.0, 2.0, 2.0, 6.0, 4.0])
    g = torch.tensor([0, 0, 1, 1, 2, 2])
    # per-sequence sums of deviations: (-2+0) = -2, (-1-1) = -2, (3+1) = 4 -> squares 4 + 4 + 16 = 24
    expected = math.sqrt(3 / 2 * 24) / 6
    assert clustered_stderr(x, g) == pytest.approx(expected, rel=1e-12)
    # equal-length sequences: the standard error of the per-sequence means
    means = per_cluster_means(x, g)
    assert means == [2.0, 2.0, 5.0]
    m = sum(means) / 3
    assert clustered_stderr(x, g) == pytest.approx(math.sqrt(sum((v - m) ** 2 for v in means) / 2 / 3), rel=1e-12)
    # correlated tokens within a sequence: the clustered error is larger than the iid one
    iid = float(x.std(unbiased=True) / math.sqrt(6))
    assert clustered_stderr(x, g) > iid


def test_paired_difference_and_within_noise_verdicts():
    mean, se = paired_difference([1.0, 2.0, 3.0, 4.0], [0.5, 2.5, 2.0, 4.0])
    d = [0.5, -0.5, 1.0, 0.0]
    assert mean == pytest.approx(0.25)
    assert se == pytest.approx(math.sqrt(sum((x - 0.25) ** 2 for x in d) / 3 / 4))
    assert paired_difference([1.0], [2.0]) is None and paired_difference([1.0, 2.0], [1.0]) is None

    def row(key, pair, gran, kl):
        return {"key": key, "status": "ok", "model": "m", "effective_bits_target": 8.0, "pair": pair,
                "granularity": gran, "dataset_size": "s",
                "quality": {"per_sequence": {"kl": kl, "ln_ppl_ratio": [0.0] * len(kl)}}}

    rows = [
        row("w8/default", "w8", "default", [0.010, 0.011, 0.009, 0.010]),
        row("w8/g64", "w8", "g64", [0.011, 0.010, 0.010, 0.009]),  # the same within noise
        row("w4/default", "w4", "default", [0.20, 0.25, 0.22, 0.21]),  # clearly worse
        row("w4/g64", "w4", "g64", [0.10, 0.12, 0.11, 0.12]),
    ]
    comps = {(c["a"], c["b"]): c for c in comparisons(rows)}
    # one-axis pairs only: (w8/default, w4/g64) differs in two axes
    assert set(comps) == {("w8/default", "w8/g64"), ("w8/default", "w4/default"), ("w8/g64", "w4/g64"),
                          ("w4/default", "w4/g64")}
    assert comps[("w8/default", "w8/g64")]["axis"] == "granularity"
    assert comps[("w8/default", "w8/g64")]["metrics"]["kl"]["resolved"] is False
    assert comps[("w8/default", "w4/default")]["metrics"]["kl"]["resolved"] is True
    assert comps[("w4/default", "w4/g64")]["metrics"]["kl"]["delta"] == pytest.approx(0.1075)


def _cfg(pair: str, gran: str = "default"):
    cfg, _ = apply_overlay(QUANT_PAIRS[pair].config(), resolve_granularity(gran).overrides)
    return cfg


@pytest.mark.parametrize(
    "pair,gran,shape,expected",
    [
        ("wint4_afp16", "w_group64", (1024, 576), 4 + 16 / 64),  # 16-bit scale per 64 weights
        ("wint4_afp16", "default", (1024, 576), 4 + 16 / 128),  # group 128
        ("wint4_afp16", "default", (128, 64), 4 + 16 / 64),  # a row shorter than the group: one scale per row
        ("wint8_afp16", "default", (1024, 576), 8 + 16 / 576),  # per output channel: one scale per 576 inputs
        ("wfp4_afp16", "default", (64, 64), 4 + 8 / 16 + 32 / 4096),  # NVFP4: E4M3 per 16 + FP32 per tensor
        ("wmxfp4_amxfp4", "default", (64, 64), 4 + 8 / 32),  # MXFP4: E8M0 per 32
        ("wfp8_afp8", "default", (64, 64), 8 + 32 / 4096),  # FP8: one FP32 scale per tensor
    ],
)
def test_storage_bits_by_hand(pair, gran, shape, expected):
    assert storage_bits(_cfg(pair, gran), shape) == pytest.approx(expected, rel=1e-12)


def test_recipe_storage_bits_mixes_quantized_and_16_bit_layers():
    cfg = _cfg("wint4_afp16", "w_group64")
    layers = [([[64, 64]], True), ([[64, 64], [32, 64]], False)]
    chosen, everywhere = recipe_storage_bits(cfg, layers)
    n1, n2 = 64 * 64, 64 * 64 + 32 * 64
    assert chosen == pytest.approx((n1 * 4.25 + n2 * 16) / (n1 + n2))
    assert everywhere == pytest.approx(4.25)
    assert recipe_storage_bits(cfg, []) == (None, None)
