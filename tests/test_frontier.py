"""Frontier roles and recommendations (the Orket fixtures re-expressed), --include-invalid, the layer views'
numerics (Spearman, convergence, most sensitive layers) and how manifests are found."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
from report_helpers import error_row, orket_frontier_rows, orket_render_rows, row, summary, write, write_manifest

from quantsweep.kpis import compute_kpis
from quantsweep.reports import layers as L
from quantsweep.reports.frontier import build_frontier, pareto_keys, value_score
from quantsweep.reports.summary_io import load_manifest, load_summary, manifest_candidates, normalize_rows


def view(rows, include_invalid=False, metric="kl_mean", limit=0.05):
    return build_frontier(normalize_rows(rows), metric, limit, include_invalid)


def roles(v):
    return {p["key"].split("/")[0]: p["frontier_role"] for p in v["points"]}


# --- the seed fixtures -----------------------------------------------------------------------------------------
def test_baseline_minimum_viable_and_best_value_on_three_cells():
    v = view(orket_frontier_rows())
    assert roles(v) == {"wint8_afp16": "baseline", "w7_afp16": "best_value", "w6_afp16": "minimum_viable",
                        "wint4_afp16": "frontier"}
    (g,) = v["groups"]
    assert g["group"] == "m|small|default"
    assert (g["baseline"], g["minimum_viable"], g["best_value"]) == (
        "wint8_afp16/default/small", "w6_afp16/default/small", "w7_afp16/default/small")
    assert g["frontier"] == ["wint4_afp16/default/small", "w6_afp16/default/small", "w7_afp16/default/small",
                             "wint8_afp16/default/small"]
    assert g["reason"] == "fewest achieved bits with kl_mean <= 0.05"
    assert g["recommendation"] == ("Smallest that meets quality: w6_afp16/default/small (6.000 bits, kl_mean 0.045). "
                                   "Best value: w7_afp16/default/small (7.000 bits, kl_mean 0.004).")
    p = {x["key"].split("/")[0]: x for x in v["points"]}
    # best value = savings share - quality budget share: 7 bits saves 1/2 of the 2 bits for 0.004/0.05 of the budget
    assert [p[k]["value_score"] for k in ("wint8_afp16", "w7_afp16", "w6_afp16")] == [-0.02, 0.42, 0.1]
    assert p["wint4_afp16"]["value_score"] is None and p["wint4_afp16"]["meets_quality"] is False
    # the vibe_delta analogue: quality lost per bit saved against the baseline
    assert p["wint8_afp16"]["quality_per_bit_saved"] == 0.0
    assert p["w7_afp16"]["quality_per_bit_saved"] == pytest.approx(0.003)
    assert p["w6_afp16"]["quality_per_bit_saved"] == pytest.approx(0.022)
    assert p["wint4_afp16"]["quality_per_bit_saved"] == pytest.approx(0.06225)


def test_orket_golden_three_quants():
    # §2.10: Q8_0 1.0 / Q6_K 0.98 / Q4_K_M 0.75 at target 0.95 -> here KL 0.001 / 0.02 / 0.25 at KL <= 0.05
    rows = [row("wint8_afp16", bits=8.0, kl=0.001), row("w6_afp16", bits=6.0, kl=0.02),
            row("wint4_afp16", bits=4.0, kl=0.25)]
    v = view(rows)
    # Orket's best value was Q8_0 (adherence/latency with equal latencies); ours rewards the bits saved
    assert roles(v) == {"wint8_afp16": "baseline", "w6_afp16": "minimum_viable+best_value",
                        "wint4_afp16": "frontier"}
    assert v["groups"][0]["recommendation"] == (
        "Use w6_afp16/default/small (6.000 bits, kl_mean 0.02): the smallest cell that meets quality, and the best value.")
    p = {x["key"].split("/")[0]: x for x in v["points"]}
    assert p["w6_afp16"]["quality_per_bit_saved"] == pytest.approx(0.0095)
    assert p["wint4_afp16"]["quality_per_bit_saved"] == pytest.approx(0.06225)


def test_nothing_meets_the_threshold():
    v = view([row("wint8_afp16", bits=8.0, kl=0.2), row("wint4_afp16", bits=4.0, kl=0.3)])
    (g,) = v["groups"]
    assert (g["baseline"], g["minimum_viable"], g["best_value"]) == ("wint8_afp16/default/small", None, None)
    assert g["reason"] == "no shown cell met kl_mean <= 0.05"
    assert g["recommendation"] == ("No cell met kl_mean <= 0.05: keep higher precision than "
                                   "wint8_afp16/default/small (8.000 bits, kl_mean 0.2), or relax the threshold.")
    assert roles(v) == {"wint8_afp16": "baseline", "wint4_afp16": "frontier"}


def test_polluted_row_is_hidden_unless_include_invalid_which_never_changes_kpis():
    rows = orket_render_rows()  # §2.11: the 4-bit cell is polluted (MISSING_TELEMETRY)
    v = view(rows)
    assert len(v["points"]) == 2
    assert roles(v) == {"wint8_afp16": "baseline", "w6_afp16": "minimum_viable+best_value"}
    vi = view(rows, include_invalid=True)
    assert len(vi["points"]) == 3
    assert roles(vi) == {"wint8_afp16": "baseline", "w6_afp16": "frontier",
                         "wint4_afp16": "minimum_viable+best_value"}
    bad = [p for p in vi["points"] if not p["valid"]]
    assert [(p["key"], p["reasons"]) for p in bad] == [("wint4_afp16/default/small", ["MISSING_TELEMETRY"])]


def test_all_rows_polluted_orket_case():
    rows = [row(p, bits=b, kl=q, satisfied=False) for p, b, q in
            (("wint8_afp16", 8.0, 0.001), ("w6_afp16", 6.0, 0.03), ("wint4_afp16", 4.0, 0.2))]
    v = view(rows)
    assert v["points"] == [] and v["groups"] == []
    vi = view(rows, include_invalid=True)
    assert vi["groups"][0]["minimum_viable"] == "w6_afp16/default/small"
    k = compute_kpis(normalize_rows(rows), None, {"quality_metric": "kl_mean", "max_quality": 0.05})
    assert k["frontier_success_rate"]["value"] == 0.0  # strict, whatever the views show


# --- rules and ties --------------------------------------------------------------------------------------------
def test_dominated_baseline_and_ties():
    rows = [row("a_x", bits=8.0, kl=0.01), row("b_x", bits=7.0, kl=0.02), row("c_x", bits=7.0, kl=0.03),
            row("d_x", bits=7.5, kl=0.005)]
    v = view(rows)
    assert roles(v) == {"a_x": "baseline", "b_x": "minimum_viable+best_value", "c_x": "dominated", "d_x": "frontier"}
    p = {x["key"].split("/")[0]: x for x in v["points"]}
    assert (p["a_x"]["on_frontier"], p["b_x"]["on_frontier"], p["c_x"]["on_frontier"]) == (False, True, False)
    assert [p[k + "_x"]["value_score"] for k in "abcd"] == [-0.2, 0.6, 0.4, 0.4]


def test_equal_points_and_key_tie_breaks():
    rows = [row("b_x", bits=8.0, kl=0.01), row("a_x", bits=8.0, kl=0.01)]
    v = view(rows)
    assert all(p["on_frontier"] for p in v["points"])
    # same bits, same quality: the key decides, for every role
    assert roles(v) == {"a_x": "baseline+minimum_viable+best_value", "b_x": "frontier"}


def test_error_rows_with_include_invalid_have_no_role():
    v = view([row("a_x", bits=8.0, kl=0.01), error_row("b_x")], include_invalid=True)
    assert roles(v) == {"a_x": "baseline+minimum_viable+best_value", "b_x": ""}
    assert v["groups"][0]["cells"] == 2 and v["groups"][0]["rankable"] == 1


def test_groups_split_by_size_and_granularity_and_budgets_compete_inside():
    rows = [
        row("wint8_afp16", "default", "small", bits=8.0, kl=0.002, budget=8.0, budget_in_key=True),
        row("wint8_afp16", "default", "small", bits=6.1, kl=0.03, budget=6.0, budget_in_key=True),
        row("wint8_afp16", "default", "tiny", bits=8.0, kl=0.002),
        row("wint8_afp16", "w_group64", "small", bits=8.0, kl=0.002),
    ]
    v = view(rows)
    assert [g["group"] for g in v["groups"]] == ["m|small|default", "m|tiny|default", "m|small|w_group64"]
    assert v["groups"][0]["minimum_viable"] == "wint8_afp16/default/small@6"
    assert v["groups"][0]["baseline"] == "wint8_afp16/default/small@8"


def test_ppl_ratio_metric_uses_one_as_ideal():
    rows = [row("a_x", bits=8.0, kl=0.01, ppl_ratio=1.01), row("b_x", bits=6.0, kl=0.04, ppl_ratio=1.04)]
    v = view(rows, metric="ppl_ratio", limit=1.05)
    p = {x["key"].split("/")[0]: x for x in v["points"]}
    assert p["b_x"]["frontier_role"] == "minimum_viable+best_value"
    assert p["a_x"]["value_score"] == -0.2 and p["b_x"]["value_score"] == 0.2


def test_value_score_and_pareto_directly():
    assert value_score(8.0, 0.0, 8.0, 8.0, "kl_mean", 0.1) == 0.0  # nothing can be saved
    assert value_score(6.0, 0.05, 8.0, 4.0, "kl_mean", 0.1) == 0.0  # half the savings for half the budget
    assert value_score(5.0, 1.0, 8.0, 4.0, "ppl_ratio", 1.1) == 0.75  # a ratio below 1 uses no budget
    assert pareto_keys([("a", 1, 1), ("b", 2, 2), ("c", 2, 0.5), ("d", 1, 1)]) == {"a", "c", "d"}


# --- layer views -----------------------------------------------------------------------------------------------
def test_spearman_exact_values():
    assert L.spearman([1, 2, 3, 4, 5], [2, 4, 6, 8, 10]) == 1.0
    assert L.spearman([1, 2, 3, 4, 5], [5, 4, 3, 2, 1]) == -1.0
    assert L.spearman([1, 2, 2, 3], [1, 2, 3, 4]) == pytest.approx(0.948683298, abs=1e-9)  # average ranks for ties
    assert L.spearman([1, 1, 1], [1, 2, 3]) is None
    assert L.spearman([1, 2], [1, 2]) is None


def test_spearman_matches_scipy():
    stats = pytest.importorskip("scipy.stats")
    rng = random.Random(0)
    a = [rng.random() for _ in range(50)]
    b = [x + rng.gauss(0, 0.3) for x in a]
    b[3] = b[4]  # a tie
    assert L.spearman(a, b) == pytest.approx(stats.spearmanr(a, b).statistic, abs=1e-9)


def test_cell_scores_most_sensitive_and_convergence():
    m = {"layers": [
        {"name": "l0", "formats": ["w4", "none"], "raw_scores": [4.0, 0.0]},
        {"name": "l1", "formats": ["none", "w4"], "raw_scores": [0.0, 2.0]},  # the non-none format is picked
        {"name": "l2", "formats": ["w4", "none"], "raw_scores": [float("nan"), 0.0]},  # skipped
    ]}
    assert L.cell_scores(m) == {"l0": 4.0, "l1": 2.0}
    cells = {"A": {"l0": 4.0, "l1": 2.0, "l2": 1.0}, "B": {"l0": 1.0, "l1": 10.0, "l2": 5.0}}
    top = L.most_sensitive(cells)
    assert [(e["layer"], e["mean_relative"], e["max_cell"]) for e in top] == [
        ("l1", 0.75, "B"), ("l0", 0.55, "A"), ("l2", 0.375, "B")]
    heat = L.heatmap_data(cells, top=2)
    assert heat["layers"] == ["l1", "l0"] and heat["cells"] == ["A", "B"]
    assert heat["relative"] == [[0.5, 1.0], [1.0, 0.1]]

    rows = normalize_rows([row("p_x", size=s, bits=8.0, kl=0.01) for s in ("medium", "tiny", "small")]
                          + [row("q_x", size="tiny", bits=8.0, kl=0.01)])
    pts = build_frontier(rows, "kl_mean", 0.05)["points"]
    scores = {
        "p_x/default/tiny": {"a": 1.0, "b": 2.0, "c": 3.0, "d": 4.0},
        "p_x/default/small": {"a": 1.0, "b": 3.0, "c": 2.0, "d": 4.0},
        "p_x/default/medium": {"a": 1.0, "b": 3.0, "c": 2.0, "d": 4.0, "e": 9.0},
        "q_x/default/tiny": {"a": 1.0},
    }
    conv = L.convergence(pts, scores)
    assert len(conv) == 1  # q_x has one size only
    (s,) = conv
    assert s["series"] == "p_x/default"
    assert [(p["from"], p["to"], p["layers"], p["rho"]) for p in s["points"]] == [
        ("tiny", "small", 4, 0.8), ("small", "medium", 4, 1.0)]


# --- finding manifests -----------------------------------------------------------------------------------------
def test_manifest_candidates_order(tmp_path):
    summ = tmp_path / "copy" / "sweep-summary.json"
    c = manifest_candidates(summ, "runs/s/p/g/tiny")
    assert c[:5] == [summ.parent / "runs/s/p/g/tiny", summ.parent / "s/p/g/tiny", summ.parent / "p/g/tiny",
                     summ.parent / "g/tiny", summ.parent / "tiny"]
    assert c[5].as_posix() == "runs/s/p/g/tiny"
    assert manifest_candidates(summ, "/abs/cell") == [Path("/abs/cell")]


def test_manifest_of_another_cell_is_refused_and_missing_is_reported(tmp_path):
    rows = orket_frontier_rows()
    sweep = tmp_path / "moved"
    path = write(sweep / "sweep-summary.json", summary(rows))
    write_manifest(sweep, rows[0], {"x": 1.0})
    other = dict(rows[1], cell_id="someone-else")
    write_manifest(sweep, other, {"x": 1.0})
    s = load_summary(path)
    doc, why = s.manifest(s.rows[0])
    assert why is None and doc["layers"][0]["name"] == "x"
    doc, why = load_manifest(path, s.rows[1])
    assert doc is None and "belongs to cell someone-else" in why
    doc, why = load_manifest(path, s.rows[2])
    assert doc is None and why == "no manifest.json found for path 'runs/s/w6_afp16/default/small'"
    bad = sweep / "wint4_afp16" / "default" / "small"
    bad.mkdir(parents=True)
    (bad / "manifest.json").write_text("{not json")
    doc, why = load_manifest(path, s.rows[3])
    assert doc is None and f"{bad / 'manifest.json'}: invalid JSON: line 1" in why
    json.loads(path.read_text())  # the summary itself is untouched
