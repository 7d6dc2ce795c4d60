"""`quantsweep render-report`: files, scatter points, plot data, markdown tables, --include-invalid, missing
manifests, byte-for-byte determinism, and a render of a real quickstart summary."""

from __future__ import annotations

import copy
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from report_helpers import GOOD_TELEMETRY, cli, error_row, row, summary, write, write_manifest

from quantsweep.errors import InputError
from quantsweep.reports.render import build_report, render_report
from quantsweep.reports.summary_io import load_summary

REPO = Path(__file__).resolve().parents[1]
QUICKSTART = REPO / "tests" / "fixtures" / "quickstart"
TINY = REPO / "tests" / "fixtures" / "tiny_cells"
STAMP = "2026-02-03T04:05:06+00:00"
FILES = {"report.md", "report.html", "scatter.json", "frontier.png", "frontier.svg", "sensitivity-heatmap.png",
         "sensitivity-heatmap.svg", "convergence.png", "convergence.svg"}


def _scores(seed: int) -> dict[str, float]:
    # 40 layers with a stable pattern plus a small per-cell wobble
    return {f"model.layers.{i:02d}.mlp": (1 + (i * 7) % 40) * 1e-4 * (1 + 0.01 * ((i * seed) % 5)) for i in range(40)}


KEPT = {"w6_afp16/default/small": {"model.layers.00.mlp", "model.layers.01.mlp", "model.layers.02.mlp",
                                   "model.layers.39.mlp"},
        "w7_afp16/default/small": {f"model.layers.{i:02d}.mlp" for i in range(0, 40, 2)} | {"lm_head"}}


def build_sweep(folder: Path) -> Path:
    """Two groups (tiny, small) x the four Orket-style cells, a polluted cell, an error cell; manifests beside the
    summary except for one valid cell (wint4 tiny). The small group's recommended cells record their choices
    (KEPT at 16 bits); the overall choice w6 small also has its recipe.json."""
    cells = (("wint8_afp16", 8.0, 0.001), ("w7_afp16", 7.0, 0.004), ("w6_afp16", 6.0, 0.045),
             ("wint4_afp16", 4.0, 0.25))
    rows = [row(p, size=s, bits=b, kl=q) for s in ("tiny", "small") for p, b, q in cells]
    tel = copy.deepcopy(GOOD_TELEMETRY)
    del tel["peak_host_rss_mb"]
    rows.append(row("w5_afp16", size="small", bits=5.0, kl=0.03, telemetry=tel))  # polluted, meets quality
    rows.append(error_row("w3_afp16", size="tiny"))
    canary = {"passed": True, "cell": "wint8_afp16/default/tiny", "repeats": 2,
              "determinism": {"runs": 2, "identical_recipe": True, "max_rel_score_diff": 0.0, "rtol": 1e-4}}
    path = write(folder / "sweep-summary.json", summary(rows, canary=canary))
    for i, r in enumerate(rows):
        if r["status"] == "ok" and r["key"] != "wint4_afp16/default/tiny":
            scores = _scores(i) | ({"lm_head": 1e-4} if r["key"] in KEPT else {})
            cell = write_manifest(folder, r, scores, KEPT.get(r["key"]))
            if r["key"] == "w6_afp16/default/small":
                (cell / "recipe.json").write_text('{"quant_cfg": []}')
    return path


def table(md: str, heading: str) -> list[list[str]]:
    """The body rows of the first table under `## heading`."""
    section = md.split(f"## {heading}", 1)[1].split("\n## ", 1)[0]
    lines = [ln for ln in section.splitlines() if ln.startswith("|")]
    return [[c.strip() for c in re.split(r"(?<!\\)\|", ln)[1:-1]] for ln in lines[2:]]


@pytest.fixture(scope="module")
def rendered(tmp_path_factory):
    """One sweep rendered four ways (each render takes seconds): a = default, a2 = default again,
    b = --include-invalid, c = default with another timestamp."""
    root = tmp_path_factory.mktemp("render")
    path = build_sweep(root / "runs" / "s")
    res = {
        "a": render_report(path, root / "a", generated_at=STAMP),
        "a2": render_report(path, root / "a2", generated_at=STAMP),
        "b": render_report(path, root / "b", include_invalid=True, generated_at=STAMP),
        "c": render_report(path, root / "c", generated_at="2030-01-01T00:00:00+00:00"),
    }
    return root, path, res


@pytest.fixture
def sweep(rendered):
    return rendered[1]


def test_render_default_view(rendered):
    root, _, results = rendered
    res, out = results["a"], root / "a"
    assert {p.name for p in out.iterdir()} == FILES and set(res["files"]) == FILES
    assert res["points"] == 8 and res["gate"] == "FAIL"
    assert res["plots"] == {"frontier": {"panels": 2, "points": 8},
                            "sensitivity-heatmap": {"layers": 30, "cells": 7},
                            "convergence": {"series": 3, "points": 3}}
    assert res["notes"] == ["wint4_afp16/default/tiny: per-layer scores unavailable (no manifest.json found for path "
                            "'runs/s/wint4_afp16/default/tiny'); left out of the layer views"]
    scatter = json.loads((out / "scatter.json").read_text())
    assert len(scatter["points"]) == 8 and scatter["include_invalid"] is False
    assert scatter["generated_at"] == STAMP and (scatter["x"], scatter["y"]) == ("achieved_bits", "kl_mean")
    assert {p["key"]: p["frontier_role"] for p in scatter["points"] if p["dataset_size"] == "small"} == {
        "wint8_afp16/default/small": "baseline", "w7_afp16/default/small": "best_value",
        "w6_afp16/default/small": "minimum_viable", "wint4_afp16/default/small": "frontier"}

    md = (out / "report.md").read_text()
    kpis = table(md, "Stability KPIs")
    assert kpis == [
        ["determinism_rate", "1", "1 / 1", "≥ 1 (min_determinism_rate)", "PASS"],
        ["missing_telemetry_rate", "0.1", "1 / 10", "≤ 0 (max_missing_telemetry_rate)", "FAIL"],
        ["polluted_run_rate", "0.2", "2 / 10", "≤ 0.25 (max_polluted_run_rate)", "PASS"],
        ["frontier_success_rate", "1", "2 / 2", "≥ 0.5 (min_frontier_success_rate)", "PASS"],
        ["recipe_stability_rate", "null", "0 / 0", "≥ 0 (min_recipe_stability_rate)", "SKIPPED"],
    ]
    assert "## Stability KPIs — gate FAIL" in md
    assert "- missing_telemetry_rate: 0.1 (1/10) > max_missing_telemetry_rate 0" in md
    cells = table(md, "Cells")
    assert len(cells) == 9  # the 16-bit reference first, then the 8 shown rows
    assert cells[0] == ["16-bit reference (unquantized model)", "—", "—", "—", "—", "16.000", "16.000", "0",
                        "1.0000", "1.000", "—", "—", "reference"]
    assert cells[1] == ["wint8_afp16/default/tiny", "wint8_afp16", "default", "tiny", "8", "8.000", "—", "0.001",
                        "1.0010", "0.900", "0.000125 vs 16-bit", "yes", "baseline"]
    assert [c[-1] for c in cells[5:]] == ["baseline", "best_value", "minimum_viable", "frontier"]
    # cost per bit saved against the next larger frontier point: (0.25 - 0.045) / 2, (0.045 - 0.004) / 1
    assert [c[10] for c in cells[7:]] == ["0.041 vs w7_afp16/default/small", "0.103 vs w6_afp16/default/small"]
    assert "kl_mean cost per bit saved: for a frontier cell, how much kl_mean rises for each bit it saves" in md
    recs = table(md, "Recommendations")
    assert [r[:4] for r in recs] == [
        ["m · tiny (4 samples) · default", "wint8_afp16/default/tiny", "w6_afp16/default/tiny", "w7_afp16/default/tiny"],
        ["m · small (8 samples) · default", "wint8_afp16/default/small", "w6_afp16/default/small",
         "w7_afp16/default/small"],
    ]
    failures = table(md, "Failures and invalid rows")
    assert failures == [["w5_afp16/default/small", "ok", "MISSING_TELEMETRY", "—"],
                        ["w3_afp16/default/tiny", "error", "ERROR", "RuntimeError: boom"]]
    assert len(table(md, "Most sensitive layers across cells")) == 15
    assert [r[:3] for r in table(md, "Convergence across dataset sizes")] == [
        ["wint8_afp16/default", "tiny (4) → small (8)", "40"], ["w7_afp16/default", "tiny (4) → small (8)", "40"],
        ["w6_afp16/default", "tiny (4) → small (8)", "40"]]
    assert "8 of 10 rows shown; 2 invalid rows hidden" in md
    assert "## Notes" in md and "wint4_afp16/default/tiny: per-layer scores unavailable" in md

    # the decision, right under the header: both 6-bit cells meet KL <= 0.05 with the same KL; the name decides
    decision = md.split("## Decision\n\n", 1)[1].split("\n\n", 1)[0].splitlines()
    assert decision == [
        "- Use w6_afp16/default/small: w6_afp16 with default scales, calibrated on small (8 samples), budget 8 bits, "
        "6.000 bits; kl_mean 0.045 (limit 0.05), ppl_ratio 1.046.",
        "- Why: the fewest bits among the 6 of 8 shown cells that meet kl_mean <= 0.05 (ties: better kl_mean, then "
        "fewer storage bits).",
        "- Runner-up: w7_afp16/default/small (7.000 bits, kl_mean 0.004). It uses +1.000 bits for kl_mean -0.041 "
        "(better quality).",
        "- Nothing smaller meets the limit: the best cell below 6.000 bits, wint4_afp16/default/small (4.000 bits, "
        "kl_mean 0.25), misses it by 0.2.",
        "- Calibration size: the same format and budget calibrated on tiny (4 samples) gives the same bits and "
        "kl_mean.",
    ]
    assert md.index("## Decision") < md.index("## Stability KPIs")
    assert res["decision"] == {"cell": "w6_afp16/default/small", "runner_up": "w7_afp16/default/small",
                               "closest": None}
    # the recipes of the recommended cells: kept layers from the manifests, the recipe linked from the report
    recipes = md.split("## Recipes of the recommended cells\n\n", 1)[1].split("\n## ", 1)[0]
    cell_dir = root / "runs" / "s" / "w6_afp16" / "default" / "small"
    assert recipes.split("\n\n")[1:] == [
        "w6_afp16/default/small (overall choice, minimum viable)",
        "- kept at 16 bits: 4 of 41 layer groups, 9.8 % of the weights: mlp in layers 0-2, 39\n"
        "- recipe: [recipe.json](../runs/s/w6_afp16/default/small/recipe.json)\n"
        f"- apply: quantsweep export --cell {cell_dir} --out exported/w6_afp16-default-small",
        "w6_afp16/default/tiny (minimum viable)",
        "- kept at 16 bits: unknown, its manifest does not record which format each layer group got\n"
        "- recipe: no recipe.json beside its manifest in " + str(root / "runs/s/w6_afp16/default/tiny"),
        "w7_afp16/default/tiny (best value)",
        "- kept at 16 bits: unknown, its manifest does not record which format each layer group got\n"
        "- recipe: no recipe.json beside its manifest in " + str(root / "runs/s/w7_afp16/default/tiny"),
        "w7_afp16/default/small (best value)",
        "- kept at 16 bits: 21 of 41 layer groups, 51.2 % of the weights: mlp in layers 0, 2, 4, 6, 8, 10, "
        "12, 14, 16, 18, 20, 22, 24, 26, 28, 30, 32, 34, 36, 38; lm_head\n"
        "- recipe: no recipe.json beside its manifest in " + str(root / "runs/s/w7_afp16/default/small"),
        "In Python, with ModelOpt (the recipe's integer block-size keys restored by load_recipe):",
        "```\nimport modelopt.torch.quantization as mtq\nfrom quantsweep.recipe import load_recipe\n"
        f'model = mtq.quantize(model, load_recipe("{cell_dir / "recipe.json"}"), forward_loop)\n```\n',
    ]


def test_include_invalid_changes_views_not_kpis(rendered):
    tmp_path, sweep, results = rendered
    a, b = results["a"], results["b"]
    assert (a["points"], b["points"]) == (8, 10)
    assert b["plots"]["frontier"] == {"panels": 2, "points": 9}  # the error row has no bits to plot
    assert b["plots"]["sensitivity-heatmap"] == {"layers": 30, "cells": 8}  # + the polluted cell's scores
    scatter = json.loads((tmp_path / "b" / "scatter.json").read_text())
    assert len(scatter["points"]) == 10 and scatter["include_invalid"] is True
    roles = {p["key"]: p["frontier_role"] for p in scatter["points"]}
    assert roles["w5_afp16/default/small"] == "minimum_viable+best_value"  # the polluted cell takes over the view
    assert roles["w3_afp16/default/tiny"] == ""
    assert [g["minimum_viable"] for g in b["groups"]] == ["w6_afp16/default/tiny", "w5_afp16/default/small"]
    md_a, md_b = ((tmp_path / d / "report.md").read_text() for d in "ab")
    assert table(md_a, "Stability KPIs") == table(md_b, "Stability KPIs")
    assert len(table(md_b, "Cells")) == 11
    assert table(md_b, "Cells")[9][11] == "no: MISSING_TELEMETRY"
    assert "10 of 10 rows shown." in md_b
    assert build_report(load_summary(sweep), True, STAMP)["kpis"] == build_report(load_summary(sweep), False,
                                                                                  STAMP)["kpis"]


def test_plot_data_counts(sweep):
    rep = build_report(load_summary(sweep), False, STAMP)
    fr = rep["plot_data"]["frontier"]
    assert [len(p["points"]) for p in fr["panels"]] == [4, 4]
    assert [len(p["frontier"]) for p in fr["panels"]] == [4, 4]
    assert fr["pairs"] == ["w6_afp16", "w7_afp16", "wint4_afp16", "wint8_afp16"]
    heat = rep["plot_data"]["sensitivity-heatmap"]
    assert len(heat["relative"]) == 30 and all(len(r) == 7 for r in heat["relative"])
    conv = rep["plot_data"]["convergence"]
    assert conv["steps"] == ["tiny (4) → small (8)"] and [len(s["points"]) for s in conv["series"]] == [1, 1, 1]


def test_html_is_self_contained(rendered):
    page = (rendered[0] / "a" / "report.html").read_text()
    assert page.startswith("<!DOCTYPE html>") and page.count("<svg") == 3
    assert "<img" not in page and "src=" not in page and "<link" not in page
    assert "<td>w7_afp16/default/small</td>" in page and 'gate <span class="FAIL">FAIL</span>' in page
    # head + body rows: KPIs, recommendations, the trust section's verdicts (2 groups x 2 recommended cells) and
    # cell-level fidelity (one row per group), cells (+ the 16-bit reference), top layers, convergence, failures
    assert page.count("<tr>") == (1 + 5) + (1 + 2) + (1 + 4) + (1 + 2) + (1 + 1 + 8) + (1 + 15) + (1 + 3) + (1 + 2)
    assert '<li>recipe: <a href="../runs/s/w6_afp16/default/small/recipe.json">recipe.json</a></li>' in page
    assert page.count("<pre><code>import modelopt.torch.quantization as mtq") == 1


def test_output_is_deterministic(rendered):
    tmp_path = rendered[0]
    for name in sorted(FILES):
        a, b, c = ((tmp_path / d / name).read_bytes() for d in ("a", "a2", "c"))
        assert a == b, name
        if name.endswith((".png", ".svg")):
            assert a == c, name  # plots carry no timestamp
    md_a, md_c = ((tmp_path / d / "report.md").read_text().splitlines() for d in "ac")
    assert [i for i, (x, y) in enumerate(zip(md_a, md_c, strict=True)) if x != y] == [
        next(i for i, ln in enumerate(md_a) if ln.startswith("- Report generated at:"))]


def test_cell_folder_moved_and_summary_only(sweep, tmp_path):
    # the summary alone (no cell folders at all): the report still renders, the layer views are empty and say why
    alone = tmp_path / "alone" / "sweep-summary.json"
    alone.parent.mkdir()
    shutil.copy(sweep, alone)
    res = render_report(alone, tmp_path / "out", generated_at=STAMP)
    assert res["plots"]["sensitivity-heatmap"] == {"layers": 0, "cells": 0}
    assert res["plots"]["convergence"] == {"series": 0, "points": 0}
    assert len(res["notes"]) == 8
    md = (tmp_path / "out" / "report.md").read_text()
    assert "No per-layer scores available (see Notes)." in md and "Not available: needs the same pair" in md


def test_render_bad_summary_exits_2(tmp_path):
    with pytest.raises(InputError, match=r"x.json: rows\[0\].status: missing"):
        doc = summary([row()])
        del doc["rows"][0]["status"]
        render_report(write(tmp_path / "x.json", doc), tmp_path / "out")
    res = cli("render-report", "--summary", str(tmp_path / "x.json"), "--out", "o", cwd=tmp_path)
    assert res.returncode == 2 and "rows[0].status: missing" in res.stderr
    assert not (tmp_path / "o").exists()


# --- a real summary --------------------------------------------------------------------------------------------
def test_render_real_quickstart_summary_byte_identical_across_processes(tmp_path):
    """The 8-cell SmolLM2 quickstart as it was before it asked a question (INT8/INT4 x default/group-64 x 2 sizes at
    8 bits; manifests trimmed to their layers),
    rendered by the CLI twice, with different hash seeds (set/dict order) and working directories."""
    outs, docs = [], []
    for seed in ("1", "2"):
        work = tmp_path / f"w{seed}"
        work.mkdir()
        env = {**os.environ, "PYTHONHASHSEED": seed, "PYTHONWARNINGS": "ignore"}
        res = subprocess.run([sys.executable, "-m", "quantsweep", "render-report", "--summary",
                              str(QUICKSTART / "sweep-summary.json"), "--out", "rep", "--generated-at", STAMP,
                              "--json"], cwd=work, capture_output=True, text=True, env=env, timeout=300)
        assert res.returncode == 0, res.stderr
        docs.append(json.loads(res.stdout))
        outs.append(work / "rep")
    for name in sorted(FILES):
        assert (outs[0] / name).read_bytes() == (outs[1] / name).read_bytes(), name

    doc, out = docs[0], outs[0]
    assert doc["points"] == 8 and doc["gate"] == "PASS" and doc["notes"] == []
    assert doc["plots"] == {"frontier": {"panels": 4, "points": 8},
                            "sensitivity-heatmap": {"layers": 30, "cells": 8},
                            "convergence": {"series": 4, "points": 4}}
    # int8 meets KL <= 0.1 in every group; int4 (KL ~0.19-0.24) does not, but uses fewer bits: both on the frontier
    assert [(g["baseline"], g["minimum_viable"], g["best_value"]) for g in doc["groups"]] == [
        (f"wint8_afp16/{g}/{s}",) * 3 for g, s in
        (("default", "tiny"), ("default", "small"), ("w_group64", "tiny"), ("w_group64", "small"))]
    scatter = json.loads((out / "scatter.json").read_text())
    assert sorted({p["frontier_role"] for p in scatter["points"]}) == ["baseline+minimum_viable+best_value", "frontier"]
    md = (out / "report.md").read_text()
    assert "## Stability KPIs — gate PASS" in md
    assert len(table(md, "Cells")) == 9 and len(table(md, "Recommendations")) == 4
    # one decision for the sweep: INT8 group-64 has the lowest KL at 8 bits; tiny and small are the same model
    # (every layer quantized, weight-only: the calibration data changes nothing). The report does not know yet that
    # ModelOpt cannot export INT8 group-64 on SmolLM2 (issue 17's plan-time exportability).
    assert doc["decision"] == {"cell": "wint8_afp16/w_group64/small", "runner_up": "wint8_afp16/default/small",
                               "closest": None}
    assert ("- Why: the fewest bits among the 4 of 8 shown cells that meet kl_mean <= 0.1 (ties: better kl_mean, "
            "then fewer storage bits).") in md
    # the manifests of the fixture are trimmed to their scores: no choices recorded, no recipe.json
    assert md.count("- kept at 16 bits: unknown, its manifest does not record which format each layer group got") == 4
    # the heatmap's colour scale: lm_head is 1.0 in every cell; the 5th-95th percentiles of the 240 values
    assert ("colour scale; clipped at percentiles of the shown values so that one dominant row (lm_head, typically) "
            "does not wash out the others: values above the 95th percentile (0.625: 12 values) get the darkest "
            "colour, below the 5th percentile (0.0214: 12 values) the lightest") in md
    assert "Model: smollm2-135m-instruct (LlamaForCausalLM, float32, cpu, 134.5M parameters)" in md
    assert "Labels: execution_lane=ci, vram_profile=safe" in md
    conv = table(md, "Convergence across dataset sizes")
    assert [(r[0], r[2]) for r in conv] == [("wint8_afp16/default", "121"), ("wint8_afp16/w_group64", "121"),
                                            ("wint4_afp16/default", "121"), ("wint4_afp16/w_group64", "121")]
    assert all(float(r[3]) > 0.99 for r in conv)
    top = table(md, "Most sensitive layers across cells")
    assert top[0][:4] == ["lm_head", "1.000", "8", "8"]


def test_report_shows_the_solver_gap_resolved_differences_and_storage_bits(tmp_path):
    """Rows that carry solver records, per-sequence quality and storage bits (as `run` writes them now)."""
    rows = [row("wint8_afp16", size="tiny", bits=8.0, kl=0.001), row("wint4_afp16", size="tiny", bits=4.2, kl=0.2),
            row("wint8_afp16", size="small", bits=8.0, kl=0.0011)]
    per = ([0.0010, 0.0011, 0.0009, 0.0010], [0.20, 0.22, 0.19, 0.19], [0.0011, 0.0010, 0.0012, 0.0011])
    for r, kl in zip(rows, per, strict=True):
        r["quality"]["per_sequence"] = {"kl": kl, "ln_ppl_ratio": [0.0, 0.0, 0.0, 0.0]}
        r["solver"] = {"used": "modelopt", "modelopt_objective": 1.0, "exact_objective": 1.0, "objective_gap": 0.0,
                       "groups_differing": 0}
        r["storage_bits"] = r["achieved_bits"] + 0.125
    rows[1]["solver"] = {"used": "exact", "modelopt_objective": 2.0e-3, "exact_objective": 1.9e-3,
                         "objective_gap": 0.05, "groups_differing": 3}
    path = write(tmp_path / "sweep-summary.json", summary(rows))
    render_report(path, tmp_path / "out", generated_at=STAMP)
    md = (tmp_path / "out" / "report.md").read_text()
    assert table(md, "Solver: exact optimum vs ModelOpt's") == [
        ["wint4_afp16/default/tiny", "2.0000e-03", "1.9000e-03", "5 %", "3"]]
    assert "In 1 of 3 cells ModelOpt's recipe was not optimal" in md
    noise = {(r[1], r[2]): r for r in table(md, "Which differences are resolved")}
    assert noise[("wint8_afp16/default/tiny", "wint8_afp16/default/small")][4] == "within noise"
    assert noise[("wint8_afp16/default/tiny", "wint4_afp16/default/tiny")][4] == "resolved"
    assert table(md, "Cells")[1][6] == "8.125"
    # the frontier can be drawn against storage bits
    render_report(path, tmp_path / "storage", generated_at=STAMP, bits="storage")
    scatter = json.loads((tmp_path / "storage" / "scatter.json").read_text())
    assert sorted(p["achieved_bits"] for p in scatter["points"]) == [4.325, 8.125, 8.125]
    assert len(scatter["comparisons"]) == 2


def test_decision_and_kept_layers_of_a_real_tiny_sweep(tmp_path):
    """The tiny synthetic sweep of tests/fixtures/tiny_cells (full manifests and recipes, as `run` wrote them): the
    decision, its runner-up with the paired comparison, the kept layers from `chosen`, and the per-cell report's
    kept layers and apply section."""
    sweep = tmp_path / "t"
    shutil.copytree(TINY, sweep)
    res = render_report(sweep / "sweep-summary.json", tmp_path / "out", generated_at=STAMP)
    assert res["decision"] == {"cell": "wint4_afp16/default/a", "runner_up": "wint8_afp16/default/a", "closest": None}
    md = (tmp_path / "out" / "report.md").read_text()
    assert ("- Runner-up: wint8_afp16/default/a (8.183 bits, kl_mean 4.288e-07). It uses +3.908 bits for kl_mean "
            "-0.0001473 (better quality). Paired on the same held-out sequences the difference is resolved "
            "(|Δkl| 0.000147 ± 9.8e-08).") in md
    # the recipe keeps every decoder linear at 16 bits and quantizes lm_head alone (a 12-bit budget on a model
    # whose lm_head holds 97.7 % of the weights)
    assert ("- kept at 16 bits: 8 of 9 layer groups, 2.3 % of the weights: self_attn.q_proj in layers 0-1; "
            "self_attn.o_proj in layers 0-1; mlp.gate_proj in layers 0-1; mlp.down_proj in layers 0-1") in md
    assert "- recipe: [recipe.json](../t/wint4_afp16/default/a/recipe.json)" in md
    assert f"- apply: quantsweep export --cell {sweep}/wint4_afp16/default/a --out exported/wint4_afp16-default-a" in md
    cells = {c[0]: c for c in table(md, "Cells")}
    assert cells["wfp8_afp8/default/a"][-1] == "dominated"  # same bits as INT8, worse KL: never the baseline
    assert cells["wint8_afp16/default/a"][-1] == "baseline"

    from quantsweep.reports.layer_report import read_manifest
    from quantsweep.reports.layer_report import render_markdown as cell_report
    page = cell_report(read_manifest(sweep / "wint8_afp16" / "default" / "a"))
    assert ("| Kept at 16 bits | 8 of 9, 2.3 % of the weights: self_attn.q_proj in layers 0-1; self_attn.o_proj in "
            "layers 0-1; mlp.gate_proj in layers 0-1; mlp.down_proj in layers 0-1 |") in page
    assert page.endswith(
        "## Apply this recipe\n\n`runs/exp/wint8_afp16/default/a/recipe.json` is the recipe above as a ModelOpt "
        "quantization config. As a Hugging Face checkpoint (docs/export.md):\n\n```console\nquantsweep export "
        "--cell runs/exp/wint8_afp16/default/a --out exported/wint8_afp16-default-a\n```\n\nIn Python, with "
        "ModelOpt:\n\n```python\nimport modelopt.torch.quantization as mtq\nfrom quantsweep.recipe import "
        'load_recipe\nmodel = mtq.quantize(model, load_recipe("runs/exp/wint8_afp16/default/a/recipe.json"), '
        "forward_loop)\n```\n")


def test_heatmap_colour_scale_is_clipped_at_percentiles_only_where_values_lie_beyond():
    from quantsweep.reports import plots

    # one dominant row at 1.0 in every cell (lm_head), the rest in a narrow band, one tiny value
    heat = {"layers": ["lm_head", "a", "b", "c"], "cells": ["x", "y"],
            "relative": [[1.0, 1.0], [0.05, 0.06], [0.04, None], [0.03, 0.001]], "raw": []}
    d = plots.heatmap_plot_data(heat)
    # 7 values: 0.001 0.03 0.04 0.05 0.06 1 1; 5th pct = 0.001 + 0.3 * 0.029, 95th = 1.0 (the maximum: no top clip)
    assert (d["vmin"], d["clipped_below"], d["vmax"], d["clipped_above"]) == (pytest.approx(0.0097), 1, 1.0, 0)
    assert plots.heatmap_caption(d).endswith("values below the 5th percentile (0.0097: 1 value) the lightest (the "
                                             "table gives exact values)")
    fig = plots.draw_heatmap(d)  # the colour bar's ends: 1 at the top, the clipped 5th percentile at the bottom
    assert [t.get_text() for t in fig.axes[1].get_yticklabels()] == [
        "1 = cell's most\nsensitive layer", "0.1", "≤ 0.0097 (5th pct.)"]  # 0.01 would crowd the floor
    heat["relative"] = [[1.0, 1.0], [0.5, 0.6], [0.2, 0.3], [0.1, 0.2]] * 5  # 40 values, ten of them 1.0
    d = plots.heatmap_plot_data(heat)
    assert (d["vmax"], d["clipped_above"]) == (1.0, 0)  # the 95th percentile is the maximum: nothing to clip
    uniform = plots.heatmap_plot_data({**heat, "relative": [[1.0, 1.0]]})
    assert (uniform["vmin"], uniform["vmax"]) == (None, 1.0)
    assert plots.heatmap_caption(uniform).endswith("log colour scale, not clipped")
