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
from quantsweep.reports.decision import compact_names, kept_layers, overall_recommendation
from quantsweep.reports.frontier import build_frontier, pareto_keys, value_score, what_would_pass
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
    # the table's "cost per bit saved": against the next larger frontier point, the 16-bit model above the largest
    assert [(p[k]["marginal_cost_per_bit"], p[k]["marginal_vs"]) for k in
            ("wint8_afp16", "w7_afp16", "w6_afp16", "wint4_afp16")] == [
        (pytest.approx(0.001 / 8), "16-bit reference"), (pytest.approx(0.003), "wint8_afp16/default/small"),
        (pytest.approx(0.041), "w7_afp16/default/small"), (pytest.approx(0.1025), "w6_afp16/default/small")]
    assert v["reference"] == {"key": "16-bit reference", "bits": 16.0, "kl_mean": 0.0, "ppl_ratio": 1.0,
                              "top1_agreement": 1.0}


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
    # what would pass: the line from the closest cell (8 bits, KL 0.2) to the 16-bit model (KL 0) crosses 0.05 at
    # 8 + (0.2 - 0.05) / 0.2 * 8 = 14 bits
    assert g["recommendation"] == (
        "No cell met kl_mean <= 0.05; closest: wint8_afp16/default/small (8.000 bits, kl_mean 0.2). Would pass: "
        "wint8_afp16/default at a budget of about 14 bits, or a limit of kl_mean <= 0.2.")
    assert roles(v) == {"wint8_afp16": "baseline", "wint4_afp16": "frontier"}


def test_what_would_pass_estimates_rounds_up_and_handles_impossible_limits():
    rank = [p for p in view([row("wint4_afp16", "w_group64", bits=6.0, kl=0.3),
                             row("wint4_afp16", "default", bits=6.0, kl=0.4)])["points"]]
    w = what_would_pass(rank, "kl_mean", 0.1)
    # closest = the best quality (the group-64 cell); 6 + (0.3 - 0.1) / 0.3 * 10 = 12.667 -> 12.75 (a quarter bit up)
    assert (w["closest"], w["estimate"], w["suggested_bits"], w["threshold"]) == (
        "wint4_afp16/w_group64/small", pytest.approx(12.666666667), 12.75, 0.3)
    assert w["text"] == (
        "No cell met kl_mean <= 0.1. Closest: wint4_afp16/w_group64/small (6.000 bits, kl_mean 0.3). What would "
        "pass: wint4_afp16 with w_group64 scales at a budget of 12.75 effective bits (autoquant.effective_bits: "
        "12.75); the straight line from that cell to the 16-bit model crosses kl_mean 0.1 at 12.67 bits, and since "
        "each added bit usually buys less quality than the one before, fewer bits may do. Or a limit of kl_mean <= "
        "0.3 (the closest cell's value).")
    ppl = view([row("a_x", bits=6.0, kl=0.3, ppl_ratio=1.3)], metric="ppl_ratio", limit=0.99)
    w = what_would_pass(ppl["points"], "ppl_ratio", 0.99)
    assert w["estimate"] is None and "Not even the unquantized model meets ppl_ratio <= 0.99" in w["text"]
    assert what_would_pass([], "kl_mean", 0.1)["closest"] is None


# --- the sweep's one recommendation ----------------------------------------------------------------------------
def test_overall_recommendation_fewest_bits_then_quality_then_storage_bits():
    """Across groups: the fewest bits that meet the limit; a tie on bits goes to quality, then to storage bits."""
    rows = [
        row("wint8_afp16", "default", "small", bits=8.0, kl=0.004, storage_bits=8.25),
        row("wint4_afp16", "w_group64", "small", bits=5.0, kl=0.04, storage_bits=5.30),
        row("wint4_afp16", "w_group64", "tiny", bits=5.0, kl=0.04, storage_bits=5.25),  # same bits and KL, fewer
        row("wint4_afp16", "default", "small", bits=4.5, kl=0.09),  # fewer bits, fails the limit
        row("wint4_afp16", "w_group64", "medium", bits=5.0, kl=0.045, storage_bits=5.2),  # same bits, worse KL
    ]
    v = view(rows)
    o = overall_recommendation(v)
    # the runner-up is the next other choice (format or budget); the same choice on other sizes has its own line
    assert (o["cell"], o["runner_up"], o["eligible"], o["rankable"]) == (
        "wint4_afp16/w_group64/tiny", "wint8_afp16/default/small", 4, 5)
    assert o["lines"] == [
        "Use wint4_afp16/w_group64/tiny: wint4_afp16 with w_group64 scales, calibrated on tiny (4 samples), budget 8 "
        "bits, 5.000 bits, 5.250 storage bits; kl_mean 0.04 (limit 0.05), ppl_ratio 1.041.",
        "Why: the fewest bits among the 4 of 5 shown cells that meet kl_mean <= 0.05 (ties: better kl_mean, then "
        "fewer storage bits).",
        "Runner-up: wint8_afp16/default/small (8.000 bits, kl_mean 0.004). It uses +3.000 bits for kl_mean -0.036 "
        "(better quality).",
        "Nothing smaller meets the limit: the best cell below 5.000 bits, wint4_afp16/default/small (4.500 bits, "
        "kl_mean 0.09), misses it by 0.04.",
        "Calibration size: the same format and budget calibrated on small (8 samples) gives the same bits and "
        "kl_mean; medium (32 samples) gives 5.000 bits, kl_mean 0.045 (also meets the limit).",
    ]
    # only the same choice meets the limit: it is the runner-up, with the paired comparison of the two
    comps = [{"axis": "dataset_size", "a": "wint4_afp16/w_group64/tiny", "b": "wint4_afp16/w_group64/medium",
              "metrics": {"kl": {"delta": -0.005, "stderr": 0.004, "resolved": False, "identical": False}}}]
    o = overall_recommendation(view([rows[2], rows[4]]), comps)
    assert len(o["lines"]) == 3
    assert o["lines"][2] == (
        "Runner-up: wint4_afp16/w_group64/medium (5.000 bits, kl_mean 0.045). It uses +0.000 bits for kl_mean "
        "+0.005 (worse quality). Paired on the same held-out sequences the difference is within noise: do not "
        "choose between them on this evidence (|Δkl| 0.005 ± 0.004).")
    o = overall_recommendation(view([rows[0]]))
    assert o["runner_up"] is None and o["lines"][2] == "Runner-up: none; no other shown cell meets the limit."


def test_overall_recommendation_when_nothing_passes_says_what_would():
    rows = [row("wint8_afp16", "default", "small", bits=8.0, kl=0.07),
            row("wint4_afp16", "w_group64", "tiny", bits=6.0, kl=0.3)]
    o = overall_recommendation(view(rows))
    assert (o["cell"], o["closest"]) == (None, "wint8_afp16/default/small")
    # the closest cell is the best quality (INT8, 8 bits, KL 0.07): 8 + (0.07 - 0.05) / 0.07 * 8 = 10.29 -> 10.5
    assert (o["would_pass"]["estimate"], o["would_pass"]["suggested_bits"]) == (pytest.approx(10.285714286), 10.5)
    assert o["lines"] == [o["would_pass"]["text"]]
    assert o["lines"][0].startswith(
        "No cell met kl_mean <= 0.05. Closest: wint8_afp16/default/small (8.000 bits, kl_mean 0.07). What would "
        "pass: wint8_afp16 with default scales at a budget of 10.5 effective bits (autoquant.effective_bits: 10.5)")
    assert overall_recommendation(view([]))["lines"] == [
        "No recommendation: no shown cell has measured bits and quality."]


def test_kept_layers_and_compact_names():
    def g(name, chosen, cost):
        return {"name": name, "formats": ["w4", "none"], "costs": [cost / 4, cost], "chosen": chosen}
    m = {"layers": [g("model.layers.0.mlp.down_proj", "none", 100.0), g("model.layers.1.mlp.down_proj", "none", 100.0),
                    g("model.layers.2.mlp.down_proj", "none", 100.0), g("model.layers.5.mlp.down_proj", "none", 100.0),
                    g("model.layers.3.self_attn.q_proj", "none", 50.0), g("model.layers.4.self_attn.q_proj", "w4", 50.0),
                    g("lm_head", "none", 400.0), g("model.layers.6.mlp.up_proj", "w4", 200.0)]}
    k = kept_layers(m)
    assert k["groups"] == 8 and k["weight_share"] == pytest.approx(850 / 1100)
    assert compact_names(k["names"]) == "mlp.down_proj in layers 0-2, 5; self_attn.q_proj in layer 3; lm_head"
    assert kept_layers({"layers": [{"name": "x", "formats": ["w4", "none"]}]}) is None  # a trimmed manifest
    assert k["by_format"] == {"w4": ["model.layers.4.self_attn.q_proj", "model.layers.6.mlp.up_proj"]}


def test_a_menu_cells_recipe_lists_the_layers_of_each_chosen_format():
    """A format menu's mixed recipe: the report lists, besides the kept layers, which groups got which format."""
    from quantsweep.reports.decision import recipe_blocks

    def g(name, chosen):
        return {"name": name, "formats": ["fp4/default", "fp8/default", "none"], "costs": [4.5, 8.0, 16.0],
                "chosen": chosen}
    m = {"layers": [g("model.layers.0.mlp.down_proj", "fp4/default"), g("model.layers.1.mlp.down_proj", "fp4/default"),
                    g("model.layers.0.self_attn.q_proj", "fp8/default"), g("lm_head", "none")]}
    k = kept_layers(m)
    assert k["by_format"] == {"fp4/default": ["model.layers.0.mlp.down_proj", "model.layers.1.mlp.down_proj"],
                              "fp8/default": ["model.layers.0.self_attn.q_proj"]}
    assert k["names"] == ["lm_head"] and k["weight_share"] == pytest.approx(16 / 64)
    blocks = recipe_blocks([{"key": "fp4+fp8/default/a", "roles": ["overall"], "folder": None, "recipe": None,
                             "kept": k, "why": None}])
    items = next(b[1] for b in blocks if b[0] == "ul")
    assert items == ["kept at 16 bits: 1 of 4 layer groups, 25.0 % of the weights: lm_head",
                     "chosen fp4/default: 2 of 4 layer groups: mlp.down_proj in layers 0-1",
                     "chosen fp8/default: 1 of 4 layer groups: self_attn.q_proj in layer 0"]


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
    # a_x has the most bits but d_x is smaller *and* better: a_x is dominated, never the baseline
    assert roles(v) == {"a_x": "dominated", "b_x": "minimum_viable+best_value", "c_x": "dominated", "d_x": "baseline"}
    p = {x["key"].split("/")[0]: x for x in v["points"]}
    assert (p["a_x"]["on_frontier"], p["b_x"]["on_frontier"], p["c_x"]["on_frontier"]) == (False, True, False)
    assert v["groups"][0]["baseline"] == "d_x/default/small"
    # savings share against the baseline's 7.5 bits: the dominated 8-bit cell "saves" -1 of the 0.5 bits available
    assert [p[k + "_x"]["value_score"] for k in "abcd"] == [-1.2, 0.6, 0.4, -0.1]
    assert [p[k + "_x"]["marginal_cost_per_bit"] for k in "ac"] == [None, None]  # off the frontier: no value


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
