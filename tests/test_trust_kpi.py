"""`recipe_stability_rate` (kpis.py) and the validation of a row's `trust` block (reports/trust_io.py). Pure."""

from __future__ import annotations

import pytest
from report_helpers import error_row, row, summary, write

from quantsweep.errors import InputError
from quantsweep.kpis import compute_kpis, evaluate_gate
from quantsweep.reports.summary_io import load_summary, normalize_rows


def stab(stable, computable=True, **kw):
    block = {"computable": computable, "reason": None if computable else "1 score batch", "stable": stable,
             "resamples": 50, "seed": 0, "flip_share": 0.0 if stable else 0.3, "jaccard_mean": 1.0,
             "jaccard_min": 1.0, "score_ci": [0.5, 1.5], "ci_level": 0.95}
    block.update(kw)
    return {"stability": block, "layer_fidelity": None}


def rows():
    return [
        row("wint8_afp16", trust=stab(True)),
        row("wint4_afp16", trust=stab(True)),
        row("w6_afp16", trust=stab(False)),
        row("w7_afp16", trust=stab(None, computable=False)),  # not computable: not counted
        row("w5_afp16"),  # no trust block (written before the check existed): not counted
        error_row("w3_afp16", trust=stab(False)),  # an error row's recipe is not judged
    ]


TH = {"max_missing_telemetry_rate": 1.0, "max_polluted_run_rate": 1.0, "min_frontier_success_rate": 0.0,
      "min_determinism_rate": 0.0}


def test_recipe_stability_rate_counts_judged_ok_cells_and_is_gated():
    k = compute_kpis(normalize_rows(rows()), None, {})
    assert k["recipe_stability_rate"] == {"value": round(2 / 3, 6), "numerator": 2, "denominator": 3}
    g = evaluate_gate(k, {**TH, "min_recipe_stability_rate": 0.9}, skip=("determinism_rate",))
    assert g["failures"] == ["recipe_stability_rate: 0.666667 (2/3) < min_recipe_stability_rate 0.9"]
    assert evaluate_gate(k, {**TH, "min_recipe_stability_rate": 0.5}, skip=("determinism_rate",))["status"] == "PASS"


def test_missing_stability_is_skipped_at_threshold_zero_and_fails_above():
    k = compute_kpis(normalize_rows([row("wint8_afp16")]), None, {})
    assert k["recipe_stability_rate"] == {"value": None, "numerator": 0, "denominator": 0}
    skip = ("determinism_rate",)
    checks = {c["kpi"]: c["status"] for c in evaluate_gate(k, {**TH, "min_recipe_stability_rate": 0.0}, skip)["checks"]}
    assert checks["recipe_stability_rate"] == "SKIPPED"
    g = evaluate_gate(k, {**TH, "min_recipe_stability_rate": 0.5}, skip)
    assert g["failures"] == ["recipe_stability_rate: missing (no cell had a computable stability bootstrap); "
                             "required >= 0.5"]


@pytest.mark.parametrize(
    ("trust", "message"),
    [
        (stab(True, flip_share=1.5), "rows[0].trust.stability.flip_share: expected a number in [0, 1], got 1.5"),
        (stab(True, score_ci=[2.0, 1.0]), "rows[0].trust.stability.score_ci: expected [low, high] with low <= high"),
        (stab(True, computable=False), "rows[0].trust.stability.stable: a verdict without a computable bootstrap"),
        (stab("yes"), "rows[0].trust.stability.stable: expected true, false or null, got str 'yes'"),
        ({"layer_fidelity": {"rho": 2.0}}, "rows[0].trust.layer_fidelity.rho: expected a number in [-1, 1], got 2.0"),
        ({"layer_fidelity": {"groups": [{"name": "a", "kl_mean": -1.0}]}},
         "rows[0].trust.layer_fidelity.groups[0].kl_mean: expected a number >= 0, got -1.0"),
        ([1], "rows[0].trust: expected an object or null, got list [1]"),
    ],
)
def test_hostile_trust_blocks_are_refused(tmp_path, trust, message):
    path = write(tmp_path / "s.json", summary([row("wint8_afp16", trust=trust)]))
    with pytest.raises(InputError) as exc:
        load_summary(path)
    assert message in str(exc.value)
