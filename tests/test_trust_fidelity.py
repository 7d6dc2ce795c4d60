"""Cell-level fidelity and Spearman's rank correlation (quantsweep.trust): hand-computed cases. Pure."""

from __future__ import annotations

import pytest
from report_helpers import error_row, row

from quantsweep.reports.summary_io import normalize_rows
from quantsweep.trust.fidelity import cell_fidelity
from quantsweep.trust.ranks import average_ranks, spearman


def test_spearman_hand_computed():
    # ranks x = 1 2 3 4, y = 1 3 2 4: d^2 = 0 1 1 0, rho = 1 - 6 * 2 / (4 * 15) = 0.8
    assert spearman([1, 2, 3, 4], [0.1, 0.3, 0.2, 0.4]) == {"rho": 0.8, "n": 4, "reason": None}
    assert spearman([1, 2, 3], [3, 2, 1])["rho"] == -1.0
    # ties share the mean rank: y ranks 1.5 1.5 3; Pearson of (1,2,3) and (1.5,1.5,3) = 0.866025...
    assert average_ranks([5.0, 5.0, 7.0]) == [1.5, 1.5, 3.0]
    assert spearman([1, 2, 3], [5, 5, 7])["rho"] == pytest.approx(3**0.5 / 2, abs=1e-12)


def test_spearman_not_computable_below_three_pairs_or_constant():
    assert spearman([1, 2], [1, 2]) == {"rho": None, "n": 2, "reason": "not computable: 2 pairs (needs 3)"}
    assert spearman([1, 2, float("nan")], [1, 2, 3])["n"] == 2  # a non-finite pair is dropped
    assert spearman([1, 1, 1], [1, 2, 3]) == {"rho": None, "n": 3,
                                              "reason": "not computable: one side takes a single value"}


def test_cell_fidelity_per_group_with_sample_size():
    rows = normalize_rows([
        row("wint8_afp16", size="small", kl=0.1, total_score=1.0),
        row("w7_afp16", size="small", kl=0.3, total_score=2.0),
        row("w6_afp16", size="small", kl=0.2, total_score=3.0),
        row("wint4_afp16", size="small", kl=0.4, total_score=4.0),
        error_row("w3_afp16", size="small"),  # never usable
        row("wint8_afp16", size="tiny", kl=0.1, total_score=1.0),
        row("wint4_afp16", size="tiny", kl=0.5, total_score=2.0),
    ])
    small, tiny = cell_fidelity(rows)
    assert small["group"] == "m|small|default" and small["n"] == 4 and small["rho"] == 0.8
    assert small["cells"] == ["wint8_afp16/default/small", "w7_afp16/default/small", "w6_afp16/default/small",
                              "wint4_afp16/default/small"]
    assert tiny["rho"] is None and tiny["n"] == 2 and tiny["reason"] == "not computable: 2 pairs (needs 3)"
