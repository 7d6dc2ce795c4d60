"""`autoquant.disabled_layers` with both engines, and the infeasible budgets it causes, known at plan time.

The tiny Llama's `lm_head` (49152 x 64) holds 97.7 % of its linear weights: kept at 16 bits, no recipe goes below
15.8168 bits (INT8) or 15.7252 bits (INT4). ModelOpt says so inside `mtq.auto_quantize` (the naive engine); the
shared engine used to fail every cell ("format ... missing from the shared search of lm_head.quant_recipe")."""

from __future__ import annotations

import json

import pytest
from pipeline_helpers import cli, load_rows, write_matrix

from quantsweep.matrix_io import parse_matrix
from quantsweep.model_shapes import plan_shapes
from quantsweep.planning import expand
from quantsweep.planning_feasibility import minimum_effective_bits

MATRIX = {
    "name": "disabled",
    "model": {"source": "synthetic", "preset": "llama-tiny"},
    "dataset": {"seq_len": 32, "sizes": {"a": 4}, "eval_samples": 4, "seed": 0},
    "autoquant": {"batch_size": 4, "effective_bits": [12.0, 15.8], "disabled_layers": ["*lm_head*"]},
    "axes": {"quant_pairs": ["wint8_afp16", "wint4_afp16"], "granularities": ["default"], "dataset_sizes": ["a"]},
    "canary": {"enabled": False},
}
# by hand: lm_head 49152*64 = 3,145,728 elements; two decoder layers 2 * 36,864 = 73,728
TOTAL, HEAD = 3_145_728 + 73_728, 3_145_728
MIN_INT8 = (HEAD * 16 + 73_728 * 8) / TOTAL  # 15.81679...
MIN_INT4 = (HEAD * 16 + 73_728 * 4) / TOTAL  # 15.72519...


def test_minimum_bits_at_plan_time_from_the_shapes():
    shapes = plan_shapes(parse_matrix(MATRIX, "m.yaml").model)
    assert shapes is not None and sum(x.numel for x in shapes.linears) == TOTAL and len(shapes.linears) == 15
    assert minimum_effective_bits(shapes, 8, ["*lm_head*"]) == pytest.approx(MIN_INT8, abs=1e-12)
    assert minimum_effective_bits(shapes, 4, []) == 4.0
    assert minimum_effective_bits(shapes, 4, ["model.layers.0.*"]) == pytest.approx(
        (36_864 * 16 + (TOTAL - 36_864) * 4) / TOTAL, abs=1e-12)
    plan = expand(parse_matrix(MATRIX, "m.yaml"))
    got = {c.key: (round(c.min_effective_bits, 4), c.flags) for c in plan.cells}
    assert got == {
        "wint8_afp16/default/a@12": (15.8168, ["budget_infeasible"]),
        "wint8_afp16/default/a@15.8": (15.8168, ["budget_infeasible"]),
        "wint4_afp16/default/a@12": (15.7252, ["budget_infeasible"]),
        "wint4_afp16/default/a@15.8": (15.7252, []),
    }
    assert ("wint4_afp16/default/a@12: budget 12 bits is infeasible: with autoquant.disabled_layers kept at 16 bits "
            "the minimum achievable is 15.7252 bits; this cell will be an error row") in plan.warnings


def test_embedded_model_shapes_from_the_gguf_header():
    shapes = plan_shapes(parse_matrix({"name": "e", "axes": {"quant_pairs": ["fp8"], "dataset_sizes": ["small"]}},
                                      "m.yaml").model)
    assert shapes is not None and shapes.source == "GGUF header" and len(shapes.linears) == 30 * 7 + 1
    by_name = {x.name: (x.out_features, x.in_features) for x in shapes.linears}
    assert by_name["model.layers.0.self_attn.k_proj"] == (192, 576)
    assert by_name["model.layers.29.mlp.down_proj"] == (576, 1536)
    assert by_name["lm_head"] == (49152, 576)  # tied to token_embd: no output.weight in the file


def test_dry_run_reports_the_minimum(tmp_path):
    path = write_matrix(tmp_path, MATRIX)
    res = cli("dry-run", "--matrix", str(path), "--json", cwd=tmp_path, timeout=120)
    assert res.returncode == 0, res.stderr
    cells = json.loads(res.stdout)["cells"]
    assert [(c["key"], c["min_effective_bits"], "budget_infeasible" in c["flags"]) for c in cells] == [
        ("wint8_afp16/default/a@12", 15.8168, True), ("wint8_afp16/default/a@15.8", 15.8168, True),
        ("wint4_afp16/default/a@12", 15.7252, True), ("wint4_afp16/default/a@15.8", 15.7252, False)]
    human = cli("dry-run", "--matrix", str(path), cwd=tmp_path, timeout=120).stdout
    assert "12/8 (min 15.82)" in human and "budget 12 bits is infeasible" in human


def test_both_engines_give_the_same_rows(tmp_path):
    path = write_matrix(tmp_path, MATRIX)
    rows = {}
    for engine in ("naive", "shared"):
        res = cli("run", "--matrix", str(path), "--output-root", str(tmp_path / engine), "--engine", engine, "--json",
                  cwd=tmp_path)
        assert res.returncode == 4, res.stderr[-2000:]  # three error rows
        assert "the minimum achievable is 15.8168 bits" in res.stderr  # the plan's warning, before any cell ran
        rows[engine] = {r["key"]: r for r in load_rows(tmp_path / engine / "disabled" / "rows.jsonl")}
    naive, shared = rows["naive"], rows["shared"]
    assert list(naive) == list(shared)
    for key in ("wint8_afp16/default/a@12", "wint8_afp16/default/a@15.8", "wint4_afp16/default/a@12"):
        assert naive[key]["status"] == shared[key]["status"] == "error"
        assert naive[key]["error"] == shared[key]["error"]
    assert shared["wint4_afp16/default/a@12"]["error"] == (
        "ModelOpt rejected the search: The effective_bits target 12.0 is infeasible for the resolved module search "
        "spaces. The minimum achievable effective bits is 15.7252.")
    assert f"{MIN_INT8:.4f}" in shared["wint8_afp16/default/a@15.8"]["error"]
    a, b = naive["wint4_afp16/default/a@15.8"], shared["wint4_afp16/default/a@15.8"]
    assert a["status"] == b["status"] == "ok"
    assert a["achieved_bits"] == pytest.approx(b["achieved_bits"], abs=1e-9) and MIN_INT4 <= a["achieved_bits"] <= 15.8
    assert a["total_score"] == pytest.approx(b["total_score"], rel=1e-5)
    assert a["quantized_layer_count"] == b["quantized_layer_count"] < a["layer_count"]
    recipe = lambda e: json.loads((tmp_path / e / "disabled/wint4_afp16/default/a/bits-15.8/recipe.json").read_text())  # noqa: E731
    assert recipe("naive") == recipe("shared")
