"""Format menus (a cell whose search chooses per layer among several formats) and per-pair budgets.

Schema and planning are pure and fast; the engine test runs a real tiny sweep with both engines and compares each
menu cell with a direct `mtq.auto_quantize` call given the same candidate list (CPU, fp32)."""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path

import pytest
from pipeline_helpers import TINY_MATRIX, write_matrix

from quantsweep.errors import ExitCode, MatrixError
from quantsweep.matrix_io import parse_matrix
from quantsweep.planning import expand

os.environ.setdefault("TQDM_DISABLE", "1")

INT4_G64 = {"name": "int4g64", "weight": "int4", "activation": "fp16", "base": "wint4_afp16",
            "weight_quantizer": {"num_bits": 4, "block_sizes": {-1: 64}}}


def _matrix(pairs, **autoquant):
    data = copy.deepcopy(TINY_MATRIX)
    data["axes"]["quant_pairs"] = pairs
    data["autoquant"].update(autoquant)
    return data


def _error(pairs, **autoquant) -> str:
    with pytest.raises(MatrixError) as exc:
        parse_matrix(_matrix(pairs, **autoquant), "m.yaml")
    return str(exc.value)


def test_menu_labels_budgets_and_cell_count():
    """A menu is one cell per granularity x size x budget, labelled by its members joined with '+' in the order
    written (aliases resolved) or by its name; an entry's own budgets replace autoquant.effective_bits."""
    data = _matrix(["wint8_afp16", {"menu": ["nvfp4", "fp8"]}, {"pair": "W4A16", "budgets": [4.5, 5]},
                    {"menu": ["wint8_afp16", INT4_G64], "name": "int-mix", "budgets": 6}],
                   effective_bits=[8.0, 10.0])
    plan = expand(parse_matrix(data, "m.yaml"), "m.yaml")
    by_pair: dict[str, list] = {}
    for c in plan.cells:
        by_pair.setdefault(c.pair.name, []).append(c)
    # 2 granularities x 2 sizes x (2, 2, 2, 1) budgets
    assert {p: len(cs) for p, cs in by_pair.items()} == {
        "wint8_afp16": 8, "wfp4_afp4+wfp8_afp8": 8, "wint4_afp16": 8, "int-mix": 4}
    assert len(plan.cells) == 28
    menu = next(c for c in by_pair["wfp4_afp4+wfp8_afp8"] if c.granularity.name == "default" and c.budget == 10.0)
    assert str(menu.path) == "runs/tiny/wfp4_afp4+wfp8_afp8/default/a/bits-10"
    assert [label for label, _ in menu.formats] == ["wfp4_afp4/default", "wfp8_afp8/default"]
    assert menu.is_menu and menu.format_bits == 4.5  # the lowest member: what AutoQuantize's check uses
    assert menu.config["algorithm"] == "max" and [m["label"] for m in menu.config["menu"]] == [
        "wfp4_afp4/default", "wfp8_afp8/default"]
    s = menu.summary()
    assert s["pair"] == "wfp4_afp4+wfp8_afp8" and s["menu"] == ["wfp4_afp4/default", "wfp8_afp8/default"]
    assert s["weight"] == "fp4+fp8" and s["activation"] == "fp4+fp8"
    assert s["weight_quantizer"] == "fp4-e2m1 group16 dynamic scale=fp8-e4m3 | fp8-e4m3 per-tensor static"
    assert s["exportable"] is True and s["export_format"] == "FP8+NVFP4"
    # per-pair budgets: INT4 at 4.5 and 5 (paths bits-4.5 / bits-5), the single-budget menu without a bits- folder
    assert sorted({c.budget for c in by_pair["wint4_afp16"]}) == [4.5, 5.0]
    assert {c.path.name for c in by_pair["wint4_afp16"]} == {"bits-4.5", "bits-5"}
    assert {str(c.path.parent) for c in by_pair["int-mix"]} == {"runs/tiny/int-mix/default", "runs/tiny/int-mix/w_group64"}
    assert len({c.id for c in plan.cells}) == 28


def test_a_single_format_entry_keeps_its_ids_whatever_the_spelling():
    """`{pair: X}` without budgets is the bare entry X: the same ids and paths as before menus existed."""
    bare = expand(parse_matrix(_matrix(["wint8_afp16", "wint4_afp16"]), "m.yaml"), "m.yaml")
    spelled = expand(parse_matrix(_matrix([{"pair": "wint8_afp16"}, {"pair": "int4"}, {"menu": ["fp8", "nvfp4"]}]),
                                  "m.yaml"), "m.yaml")
    assert [(c.id, str(c.path)) for c in bare.cells] == [(c.id, str(c.path)) for c in spelled.cells][:8]
    assert not any(c.is_menu for c in bare.cells) and all(c.formats and len(c.formats) == 1 for c in bare.cells)


def test_menu_errors_are_one_line_each_with_the_field():
    assert _error([{"menu": ["wint4_afp16"]}]) == (
        "m.yaml: axes.quant_pairs[0].menu: a menu needs at least two distinct formats, got 1 (a single format is a "
        "plain quant_pairs entry)")
    assert _error(["wint8_afp16", {"menu": ["wint4_afp16", "int4"]}]) == (
        "m.yaml: axes.quant_pairs[1]: menu[1]: duplicate format 'wint4_afp16' (same as menu[0]); a menu needs "
        "distinct formats")
    assert _error([{"menu": ["wint4_afp16", "wint3"]}]).startswith(
        "m.yaml: axes.quant_pairs[0].menu[1]: unknown quant pair 'wint3'; did you mean ")
    assert _error([["wint4_afp16", "wint8_afp16"]]) == (
        "m.yaml: axes.quant_pairs[0]: a menu of formats is written as a mapping with the key `menu` "
        "(`- menu: [wint4_afp16, wint8_afp16]`), not as a bare list")
    assert _error([{"menu": ["wint4_afp16", "wint8_afp16"], "budgets": [20]}]) == (
        "m.yaml: axes.quant_pairs[0].budgets: effective bits must be in (0, 16], got 20.0")
    assert _error([{"pair": "wint4_afp16", "budgets": [4, 4]}]) == (
        "m.yaml: axes.quant_pairs[0].budgets: duplicate effective-bits budget in [4.0, 4.0]")
    assert _error([{"menu": ["wint4_afp16", "wint8_afp16"], "name": "wint8_afp16"}]) == (
        "m.yaml: axes.quant_pairs[0]: menu name 'wint8_afp16' shadows a catalogue pair; choose another name")
    assert _error([{"menu": ["wint4_afp16", "wint8_afp16"], "name": "mix"}, {"pair": "wint8_afp16"},
                   {"menu": ["wint8_afp16", "wint4_afp16"], "name": "MIX"}]) == (
        "m.yaml: axes.quant_pairs[2]: duplicate entry 'MIX' (same as [0])")
    assert _error([{"menu": ["wint4_afp16", "wint8_afp16"], "budget": [4]}]) == (
        "m.yaml: axes.quant_pairs[0].budget: unknown key (not part of the matrix schema)")
    # a granularity that makes two members one format: ModelOpt would merge them silently
    data = _matrix([{"menu": ["wint8_afp16", {"name": "int8b", "weight": "int8", "activation": "fp16",
                                              "base": "wint8_afp16", "weight_quantizer": {"num_bits": 8, "axis": 0}}]}])
    with pytest.raises(MatrixError) as exc:
        expand(parse_matrix(data, "m.yaml"), "m.yaml")
    assert str(exc.value) == ("m.yaml: axes.quant_pairs[0]: menu 'wint8_afp16+int8b': int8b and wint8_afp16 are the "
                              "same format under granularity 'default'; a menu needs distinct formats")


def test_menu_feasibility_and_exportability_at_plan_time():
    """Min bits use the menu's lowest member; a menu is exportable iff every member is, and only with one
    calibration algorithm for all members."""
    data = _matrix([{"menu": ["wint8_afp16", "wint4_afp16"]}, {"menu": ["wint4_afp16_awq", "wint8_afp16"]}],
                   effective_bits=[4.2], disabled_layers=["*lm_head*"])
    data["axes"]["granularities"] = ["default"]
    plan = expand(parse_matrix(data, "m.yaml"), "m.yaml")
    plain, awq = plan.cells[0], plan.cells[2]
    assert plain.min_effective_bits is not None and plain.min_effective_bits > 15  # lm_head kept at 16 bits
    assert "budget_infeasible" in plain.flags
    assert plain.exportable is False and plain.export.reason.startswith("W4A16_AWQ: 12 of 14 layers cannot be packed")
    assert awq.exportable is False and awq.export.reason == (
        "the menu's formats calibrate with different algorithms; one checkpoint is rebuilt with one calibration "
        "algorithm")
    assert awq.calibration_method == "awq_lite+max"


def test_union_calls_and_work_units_keep_a_menu_whole():
    """All members of a menu are in one call: a data-free one when none depends on the data, else a calibrated
    one (by prefix when all are max-calibrated) that a weight-only member joins; a work unit split never
    separates a menu's members, and a menu with an AWQ member is refused by the shared engine."""
    from quantsweep.execution.shared_runner import plan_union_calls, unsolvable_menus, work_units

    data = _matrix(["wint8_afp16", {"menu": ["wint8_afp16", INT4_G64]}, {"menu": [INT4_G64, "wfp8_afp8"]},
                    {"menu": ["wint4_afp16_awq", "wint8_afp16"]}])
    data["axes"]["granularities"] = ["default"]
    matrix = parse_matrix(data, "m.yaml")
    plan = expand(matrix, "m.yaml")
    refused = unsolvable_menus(plan.cells)
    assert [c.key for c in refused] == ["wint4_afp16_awq+wint8_afp16/default/a", "wint4_afp16_awq+wint8_afp16/default/b"]
    calls = {call.key: (call, members) for call, members in
             plan_union_calls(matrix, "cpu", [c for c in plan.cells if c not in refused])}
    assert sorted(calls) == ["calib-max"]  # the weight-only cells join the calibrated call (_fold_data_free)
    calib, members = calls["calib-max"]
    # int4g64 is shared by a menu of each kind; the weight-only formats are not recorded per size
    assert [(f.label, f.data_free) for f in calib.formats] == [
        ("int4g64/default", True), ("wfp8_afp8/default", False), ("wint8_afp16/default", True)]
    assert [c.key for c, *_ in members] == [
        "int4g64+wfp8_afp8/default/a", "int4g64+wfp8_afp8/default/b",
        "wint8_afp16/default/a", "wint8_afp16/default/b", "wint8_afp16+int4g64/default/a", "wint8_afp16+int4g64/default/b"]
    assert calib.cell_ids == [c.id for c, *_ in members]
    assert calib.prefix_calibration and calib.calib_steps == 2
    # the weight-only member is not recorded per size: its own series serves the smaller size
    calib.formats[0].signature, calib.formats[1].signature = "sig-int4", "sig-fp8"  # run_union sets them
    assert calib.score_key("sig-int4", 1) == "sig-int4" and calib.score_key("sig-fp8", 1) == "sig-fp8@1"
    assert calib.score_key("sig-fp8", 2) == "sig-fp8"
    units = work_units(matrix, "cpu", "shared", plan.cells)
    refused_unit = next(u for u in units if u.label == "refused by ModelOpt")
    assert refused_unit.cell_ids == [c.id for c in refused]
    unit = next(u for u in units if u.label == "union calib-max")
    assert unit.formats == ["int4g64/default", "wfp8_afp8/default", "wint8_afp16/default"]
    parts = unit.split()
    menu_ids = {c.id for c in plan.cells if c.pair.name == "wint8_afp16+int4g64"}
    assert any(menu_ids <= set(p.cell_ids) for p in parts)  # the menu cells stay together


@pytest.fixture(scope="module")
def menu_sweep(tmp_path_factory):
    from quantsweep.execution.sweep import RunOptions, run_sweep

    folder = tmp_path_factory.mktemp("menus")
    data = copy.deepcopy(TINY_MATRIX)
    data["name"] = "menus"
    data["canary"]["enabled"] = False
    # lm_head is 98 % of the tiny model's weights: kept at 16 bits, 15.77 bits leave ~6 bits per weight on average
    # to the other groups, which then mix the menu's formats (and 16 bits)
    data["autoquant"]["effective_bits"] = 15.77
    data["autoquant"]["disabled_layers"] = ["*lm_head*"]
    # NVFP4 + FP8 (both calibrate activations: one calibration pass for both sizes) and INT4 g64 + FP8 (the
    # weight-only member joins that calibrated call); sizes a and b share it by prefix
    data["axes"] = {"quant_pairs": [{"menu": ["nvfp4", "fp8"]}, {"menu": [INT4_G64, "fp8"]}],
                    "granularities": ["default"], "dataset_sizes": ["a", "b"]}
    path = write_matrix(folder, data)
    naive = run_sweep(path, RunOptions(output_root=str(folder / "naive"), engine="naive"))
    shared = run_sweep(path, RunOptions(output_root=str(folder / "shared"), engine="shared"))
    return path, naive, shared


def _direct_auto_quantize(path, cell_key):
    """`mtq.auto_quantize` called directly with the cell's candidate list, model and batches: per group the raw
    scores (by format label), the chosen label, and the achieved effective bits."""
    import modelopt.torch.quantization as mtq
    from modelopt.torch.opt.utils import named_hparams
    from modelopt.torch.quantization.algorithms import QuantRecipe, QuantRecipeHparam

    from quantsweep.engine.exact_solver import exact_search
    from quantsweep.execution.cell_runner import formats_for
    from quantsweep.execution.context import prepare_context
    from quantsweep.matrix_io import load_matrix

    matrix = load_matrix(path)
    plan = expand(matrix, str(path))
    cell = next(c for c in plan.cells if c.key == cell_key)
    ctx, _ = prepare_context(matrix, plan, "naive")
    formats, _backend = formats_for(matrix, "cpu", cell)
    labels = {QuantRecipe(cfg, name=label).checkpoint_signature: label for label, cfg in formats}
    labels[QuantRecipe(None).checkpoint_signature] = "none"
    # quantsweep's policy on ModelOpt's solver (engine/exact_solver.py: its CBC solve is kept unless an exact one is
    # strictly better) applied to this call too; the record keeps ModelOpt's own objective
    with exact_search() as records:
        model, state = mtq.auto_quantize(
            ctx.loaded.take_model(), constraints={"effective_bits": cell.budget},
            quantization_formats=[cfg for _, cfg in formats], data_loader=ctx.batches(cell.samples),
            forward_step=lambda m, b: m(**b), loss_func=lambda out, _b: out.loss,
            num_calib_steps=cell.calib_steps, num_score_steps=cell.score_steps, method="gradient", verbose=False,
            disabled_layers=list(matrix.autoquant.disabled_layers))
    groups = {}
    for name, hp in named_hparams(model, unique=True):
        if isinstance(hp, QuantRecipeHparam) and name in state["candidate_stats"]:
            recipes = state["candidate_stats"][name]["formats"]
            groups[name.removesuffix(".quant_recipe")] = {
                "formats": [labels[r.checkpoint_signature] for r in recipes],
                "raw_scores": [float(hp.get_score(r)) for r in recipes],
                "chosen": labels[hp.active.checkpoint_signature],
            }
    return groups, float(state["best"]["constraints"]["effective_bits"]), records[-1].to_dict()


def _manifest(row):
    return json.loads((Path(row["path"]) / "manifest.json").read_text())


def test_menu_cells_of_both_engines_equal_a_direct_auto_quantize_call(menu_sweep):
    path, naive, shared = menu_sweep
    assert naive.exit_code == shared.exit_code == ExitCode.OK
    n_rows = {r["key"]: r for r in naive.summary["rows"]}
    s_rows = {r["key"]: r for r in shared.summary["rows"]}
    assert sorted(n_rows) == sorted(s_rows) == [
        "int4g64+wfp8_afp8/default/a", "int4g64+wfp8_afp8/default/b",
        "wfp4_afp4+wfp8_afp8/default/a", "wfp4_afp4+wfp8_afp8/default/b"]
    # one union call for all four cells: both menus' three formats calibrated once for both sizes
    assert {r["telemetry"]["shared"]["union"] for r in s_rows.values()} == {"calib-max"}
    assert {r["telemetry"]["shared"]["formats"] for r in s_rows.values()} == {3}
    mixed = 0
    for key in sorted(n_rows):
        direct, direct_bits, direct_solver = _direct_auto_quantize(path, key)
        for row in (n_rows[key], s_rows[key]):
            assert row["status"] == "ok", row.get("error")
            layers = {g["name"]: g for g in _manifest(row)["layers"]}
            assert set(layers) == set(direct)
            for name, d in direct.items():
                g = layers[name]
                assert g["formats"] == d["formats"], (key, name)  # 3 candidates, ModelOpt's order, labels
                assert g["raw_scores"] == pytest.approx(d["raw_scores"], rel=1e-6, abs=0), (key, row["engine"], name)
                assert g["chosen"] == d["chosen"], (key, row["engine"], name)
            assert row["achieved_bits"] == pytest.approx(direct_bits, rel=1e-9)
            assert row["solver"]["used"] == direct_solver["used"]
            assert row["solver"]["modelopt_objective"] == pytest.approx(direct_solver["modelopt_objective"], rel=1e-6)
        chosen = {g["chosen"] for g in _manifest(n_rows[key])["layers"]}
        mixed += len(chosen - {"none"}) > 1
        for metric in ("kl_mean", "ppl_quant", "top1_agreement"):
            assert s_rows[key]["quality"][metric] == pytest.approx(n_rows[key]["quality"][metric], rel=1e-4, abs=1e-7)
        assert s_rows[key]["result_fingerprint"] == n_rows[key]["result_fingerprint"]
        assert s_rows[key]["storage_bits"] == pytest.approx(n_rows[key]["storage_bits"], rel=1e-12)
        assert json.loads((Path(s_rows[key]["path"]) / "recipe.json").read_text()) == json.loads(
            (Path(n_rows[key]["path"]) / "recipe.json").read_text()), key
    assert mixed == 4  # the budget makes real mixes: layers in two different formats in every cell


def test_the_shared_engine_refuses_a_menu_with_an_awq_member_with_an_error_row_naming_naive(tmp_path):
    from quantsweep.execution.sweep import RunOptions, run_sweep

    data = copy.deepcopy(TINY_MATRIX)
    data["name"] = "awq-menu"
    data["canary"]["enabled"] = False
    data["axes"] = {"quant_pairs": [{"menu": ["wint4_afp16_awq", "wint8_afp16"]}], "granularities": ["default"],
                    "dataset_sizes": ["a"]}
    outcome = run_sweep(write_matrix(tmp_path, data), RunOptions(output_root=str(tmp_path / "runs"), engine="shared"))
    assert outcome.exit_code == ExitCode.CELLS_FAILED
    [row] = outcome.summary["rows"]
    assert row["status"] == "error" and row["error"] == (
        "format menu wint4_afp16_awq+wint8_afp16: wint4_afp16_awq/default rescales the weights in its calibration "
        "(AWQ / SmoothQuant), which the shared engine cannot solve from a union call; run this matrix with "
        "--engine naive")
