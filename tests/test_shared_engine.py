"""The shared engine gives the naive engine's results: same raw scores, recipes, bits and quality (CPU, fp32)."""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path

import pytest
import torch
from pipeline_helpers import TINY_MATRIX, write_matrix

from quantsweep.catalogue import QUANT_PAIRS
from quantsweep.engine.shared import calibration_depends_on_data
from quantsweep.errors import ExitCode
from quantsweep.execution.sweep import RunOptions, run_sweep

os.environ.setdefault("TQDM_DISABLE", "1")


@pytest.mark.parametrize(
    "pair,depends",
    [
        ("wint8_afp16", False),  # weight-only max: weight amax does not depend on data
        ("wint4_afp16", False),
        ("wfp4_afp16", False),  # NVFP4 weights: global amax from the weights
        ("wmxfp4_amxfp4", False),  # MX: E8M0 scales from each block, no calibration
        ("wint8_aint8", True),  # static activation scale
        ("wfp8_afp8", True),
        ("wfp4_afp4", True),  # NVFP4 activations: calibrated global amax
        ("wint4_afp16_awq", True),  # AWQ searches over activations
        ("wint8_aint8_sq", True),
    ],
)
def test_calibration_data_dependence(pair, depends):
    assert calibration_depends_on_data(QUANT_PAIRS[pair].config()) is depends


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_a_large_output_is_scored_in_slices_to_modelopts_value(dtype, monkeypatch):
    """An lm_head-sized output is scored a slice of rows at a time (no float32 copy of the whole output); the value
    is ModelOpt's `_get_auto_quantize_score` up to the order of the float32 sum."""
    from modelopt.torch.quantization.algorithms import _get_auto_quantize_score

    from quantsweep.engine import captured_scores as cs

    gen = torch.Generator().manual_seed(0)
    grad = torch.randn(3, 50, 1000, generator=gen).to(dtype)
    diff = (torch.randn(3, 50, 1000, generator=gen) * 1e-2).to(dtype)
    reference = float(_get_auto_quantize_score(grad, diff))
    assert float(cs._score(grad.float(), diff.clone())) == reference  # the unsliced path: the same operations
    monkeypatch.setattr(cs, "CHUNK_ELEMENTS", 100_000)
    monkeypatch.setattr(cs, "CHUNK_SLICE_ELEMENTS", 7_000)  # 7 rows per slice: 22 slices, the last one short
    assert cs._needs_chunks(grad) and not cs._needs_chunks(grad[:1, :10])
    sliced = float(cs._score_in_chunks(grad, diff.clone()))
    assert sliced == pytest.approx(reference, rel=1e-6) and sliced != 0.0


def test_per_token_dynamic_activations_do_not_depend_on_data():
    from quantsweep.overlay import apply_overlay

    cfg, _ = apply_overlay(QUANT_PAIRS["wint8_aint8"].config(), {"*input_quantizer": {"type": "dynamic", "block_sizes": {-1: None}}})
    assert calibration_depends_on_data(cfg) is False


@pytest.fixture(scope="module")
def both_engines(tmp_path_factory):
    folder = tmp_path_factory.mktemp("engines")
    data = copy.deepcopy(TINY_MATRIX)
    data["name"] = "engines"
    data["canary"]["enabled"] = False
    data["autoquant"]["effective_bits"] = [8.0, 12.0]
    data["axes"] = {
        "quant_pairs": ["wint8_afp16", "wint4_afp16", "wfp8_afp8", "wfp4_afp16"],
        "granularities": ["default"],
        "dataset_sizes": ["a", "b"],
    }
    path = write_matrix(folder, data)
    naive = run_sweep(path, RunOptions(output_root=str(folder / "naive"), engine="naive"))
    shared = run_sweep(path, RunOptions(output_root=str(folder / "shared"), engine="shared"))
    shared.matrix_file = path  # for the row-order check
    return naive, shared


def _manifest(row):
    return json.loads((Path(row["path"]) / "manifest.json").read_text())


def test_shared_engine_equals_naive(both_engines):
    naive, shared = both_engines
    assert naive.exit_code == shared.exit_code == ExitCode.OK
    n_rows = {r["cell_id"]: r for r in naive.summary["rows"]}
    s_rows = {r["cell_id"]: r for r in shared.summary["rows"]}
    assert set(n_rows) == set(s_rows) and len(n_rows) == 16
    for cid, n in n_rows.items():
        s = s_rows[cid]
        assert s["engine"] == "shared" and n["engine"] == "naive"
        assert s["status"] == n["status"] == "ok", (s.get("error"), n.get("error"))
        nm, sm = _manifest(n), _manifest(s)
        n_layers = {g["name"]: g for g in nm["layers"]}
        s_layers = {g["name"]: g for g in sm["layers"]}
        assert set(n_layers) == set(s_layers)
        for name, g in n_layers.items():
            h = s_layers[name]
            assert h["formats"] == g["formats"] and h["costs"] == g["costs"]
            assert h["raw_scores"] == pytest.approx(g["raw_scores"], rel=1e-6, abs=0), (n["key"], name)
            assert h["chosen"] == g["chosen"], (n["key"], name)
        assert s["achieved_bits"] == pytest.approx(n["achieved_bits"], rel=1e-9)
        assert s["total_score"] == pytest.approx(n["total_score"], rel=1e-6)
        assert s["satisfied"] == n["satisfied"]
        for metric in ("kl_mean", "ppl_quant", "top1_agreement"):
            assert s["quality"][metric] == pytest.approx(n["quality"][metric], rel=1e-4, abs=1e-7), (n["key"], metric)
        assert s["result_fingerprint"] == n["result_fingerprint"]
        # recipe stability: the shared engine solves it on a background thread beside the next cells
        # (execution/stability_pipeline.py), the naive engine in the cell's turn; each row gets its own block
        st_s, st_n = s["trust"]["stability"], n["trust"]["stability"]
        assert st_s["computable"] == st_n["computable"] and st_s.get("batches") == st_n.get("batches"), n["key"]
        for key in ("flip_share", "groups_ever_flipped", "full_solve_flips", "distinct_resamples", "stable"):
            assert st_s.get(key) == st_n.get(key), (n["key"], key)
        # the recipe as a ModelOpt config: derived per union format (engine/recipe_configs.py) = ModelOpt's own
        recipe_file = "recipe.json"
        assert json.loads((Path(s["path"]) / recipe_file).read_text()) == json.loads(
            (Path(n["path"]) / recipe_file).read_text()
        ), n["key"]


def test_shared_engine_groups_cells_and_amortises_telemetry(both_engines):
    _, shared = both_engines
    unions = {r["telemetry"]["shared"]["union"]: r["telemetry"]["shared"] for r in shared.summary["rows"]}
    # one call: FP8 W8A8 (static activation scales, max calibration) calibrated in one pass for both sizes,
    # recorded after 4 and after 8 samples' batches, and the weight-only formats beside it (they would share one
    # data-free call across both sizes on their own; execution/shared_runner.py::_fold_data_free)
    assert sorted(unions) == ["calib-max"]
    call = unions["calib-max"]
    assert call["cells"] == 16 and call["formats"] == 4
    assert call["calibration_sizes"] == [1, 2]
    # one calibration forward per batch of the largest size (2 batches of 4 x 32 tokens), not 1 + 2 as in two calls
    assert call["tokens"]["calibrate"] == 2 * 4 * 32
    # weight-only formats are calibrated on their weights alone (ModelOpt's max_calibrate does that before any
    # forward): no calibration forward for them, and the rows still equal the naive engine's (the test above)
    row = shared.summary["rows"][0]
    assert row["telemetry"]["forward_calls"]["calibrate_skipped"] == 3 * 2  # 3 formats x the call's 2 batches
    assert row["telemetry"]["forward_calls"]["calibrate"] == 2
    # every scored module replayed from the captured pass, none the slow way
    assert call["replayed_modules"] > 0 and call["modelopt_replayed_modules"] == 0
    # once calibration is over, ModelOpt's max calibrators' copies of the amax are dropped: one per calibrated
    # quantizer (the weights' of every format and module; FP8 W8A8 the inputs' too)
    modules = call["replayed_modules"]
    assert call["released_calibrators"] == 3 * modules + 2 * modules
    assert all(r["valid"] for r in shared.summary["rows"])
    # rows are recorded in the union calls' cell order although each waits for its bootstrap on another thread,
    # and the bootstrap's own seconds are recorded beside the (critical-path) phases
    from quantsweep.execution.shared_runner import plan_union_calls
    from quantsweep.matrix_io import load_matrix
    from quantsweep.planning import expand

    matrix = load_matrix(shared.matrix_file)
    expected = [c.id for _call, members in plan_union_calls(matrix, "cpu", expand(matrix).cells) for c, *_ in members]
    rows_file = shared.summary_path.parent / "rows.jsonl"
    assert [json.loads(line)["cell_id"] for line in rows_file.read_text().splitlines()] == expected
    computable = [r for r in shared.summary["rows"] if r["trust"]["stability"]["computable"]]
    assert len(computable) == 8  # the 2-batch size's cells (one score batch has nothing to resample)
    for r in computable:
        tel = r["telemetry"]
        assert tel["stability_s"] > 0 and tel["wall_s"] == pytest.approx(sum(tel["phases"].values()), abs=0.01)


def test_cells_that_evaluate_the_same_model_share_one_evaluation(both_engines):
    """execution/shared_evaluations.py: a cell whose solve leaves the union model as an earlier cell left it (same
    recipe per group and, for FP8 W8A8's data-dependent activation scales, the same calibration size) takes that
    cell's quality instead of evaluating again; every other cell is evaluated. The rows still equal the naive
    engine's (test_shared_engine_equals_naive), which evaluates every cell."""
    _, shared = both_engines
    rows = shared.summary["rows"]
    by_key = {r["key"]: r for r in rows}

    def model_of(r):
        chosen = tuple((g["name"], g["chosen"]) for g in _manifest(r)["layers"])
        return r["pair"], r["granularity"], chosen, r["dataset_size"] if r["pair"] == "wfp8_afp8" else None

    first: dict = {}
    for r in rows:  # in the call's order: the first cell of each model is evaluated, the later ones share it
        source = r["telemetry"].get("evaluation_shared_with")
        model = model_of(r)
        if model not in first:
            assert source is None, r["key"]
            assert r["telemetry"]["phases"]["evaluate"] > 0
            first[model] = r["key"]
        else:
            assert source == first[model], r["key"]
            # it ran no evaluation forward of its own: its evaluation tokens are 0, its source's are not
            assert r["telemetry"]["tokens"]["evaluation"] == 0 < by_key[source]["telemetry"]["tokens"]["evaluation"]
    shared_rows = [r for r in rows if r["telemetry"].get("evaluation_shared_with")]
    # INT8 at an 8-bit budget is INT8 everywhere at both sizes: the larger size shares the smaller one's; FP8
    # W8A8's sizes have their own activation scales and never share with each other
    int8 = sorted((r["key"], r["telemetry"].get("evaluation_shared_with")) for r in rows
                  if r["pair"] == "wint8_afp16" and r["achieved_bits"] == 8.0)
    assert len(int8) == 2 and int8[0][1] is None and int8[1][1] == int8[0][0], int8
    assert len(shared_rows) == len(rows) - len(first) > 0
    assert not any(r["pair"] == "wfp8_afp8" and by_key[r["telemetry"]["evaluation_shared_with"]]["dataset_size"]
                   != r["dataset_size"] for r in shared_rows)


def test_shared_evaluations_hand_out_copies_and_never_share_an_unkeyed_model():
    from quantsweep.execution.shared_evaluations import SharedEvaluations, evaluation_key

    state = (("layers.0.quant_recipe", "sig-int4", None), ("layers.1.quant_recipe", "sig-fp8", 2))
    assert evaluation_key(None, "none", 4) is None
    assert evaluation_key(state, "none", 4) == evaluation_key(state, "none", 8)  # KV cache off: samples do not count
    assert evaluation_key(state, "fp8", 4) != evaluation_key(state, "fp8", 8)  # its KV scales are calibrated on them
    memo = SharedEvaluations()
    quality = {"kl_mean": 0.5, "per_seq": [1.0, 2.0]}
    memo.record(None, "a", quality)
    assert len(memo) == 0 and memo.lookup(None) is None
    key = evaluation_key(state, "none", 4)
    memo.record(key, "a", quality)
    quality["per_seq"].append(3.0)  # the recording row's later changes do not reach the copy
    memo.record(key, "b", {"kl_mean": 9.0})  # the first evaluation stays the one shared
    cell, got = memo.lookup(key)
    assert cell == "a" and got == {"kl_mean": 0.5, "per_seq": [1.0, 2.0]}
    got["kl_mean"] = 0.0
    assert memo.lookup(key)[1]["kl_mean"] == 0.5


def test_a_recipe_already_switched_in_is_not_switched_again():
    """apply_plan's `switch_recipe`: ModelOpt's setter runs unless the very recipe is active with every one of its
    quantizers in place; a quantizer someone else swapped in between makes it run again."""
    from quantsweep.engine.shared import switch_recipe

    class Hparam:  # ModelOpt's QuantRecipeHparam, as far as the switch sees it
        def __init__(self, choices):
            self._all_quantizer_choices, self._active, self.sets = choices, None, 0

        @property
        def active(self):
            return self._active

        @active.setter
        def active(self, recipe):
            self.sets += 1
            self._active = recipe
            for module, qs in self._all_quantizer_choices[recipe].items():
                for attr, q in qs.items():
                    setattr(module, attr, q)

    linear = torch.nn.Linear(2, 2)
    int4, int8 = "int4", "int8"
    qs = {r: {"weight_quantizer": torch.nn.Identity(), "input_quantizer": torch.nn.Identity()} for r in (int4, int8)}
    hp = Hparam({r: {linear: qs[r]} for r in (int4, int8)})
    switch_recipe(hp, int4)
    switch_recipe(hp, int4)  # in place already: skipped
    assert hp.sets == 1 and linear.weight_quantizer is qs[int4]["weight_quantizer"]
    switch_recipe(hp, int8)
    assert hp.sets == 2 and linear.input_quantizer is qs[int8]["input_quantizer"]
    linear.weight_quantizer = torch.nn.Identity()  # another quantizer object swapped in by someone else
    switch_recipe(hp, int8)
    assert hp.sets == 3 and linear.weight_quantizer is qs[int8]["weight_quantizer"]


def test_cell_plans_are_made_once_ahead_or_in_turn_and_fail_in_their_own_turn():
    """execution/cell_plans.py: the runner plans cell i+1 while cell i is evaluated; each plan is made once, and a
    plan that fails raises in its own cell's turn (an error row of that cell, not of the one being evaluated)."""
    from quantsweep.engine.autoquant import CellError
    from quantsweep.execution.cell_plans import CellPlans

    made: list[int] = []

    def plan(i: int):
        made.append(i)
        if i == 1:
            raise CellError("budget below the format's bits")
        return f"plan-{i}"

    plans = CellPlans(3, plan)
    assert plans.take(0) == "plan-0"
    assert plans.prepare(1) >= 0.0 and made == [0, 1]  # ahead of its turn: its failure is kept, not raised
    assert plans.prepare(1) == 0.0 and made == [0, 1]  # not made twice
    with pytest.raises(CellError, match="budget below"):
        plans.take(1)
    assert plans.prepare(3) == 0.0  # past the last cell: nothing to plan
    assert plans.take(2) == "plan-2" and made == [0, 1, 2]
    assert plans.prepare(2) == 0.0 and made == [0, 1, 2]  # taken: never made again
    with pytest.raises(ValueError, match="taken already"):
        plans.take(2)


def test_a_cell_modelopt_refuses_is_an_error_row_without_sinking_its_union_call(tmp_path):
    """MXFP6 without dynamic blocks is refused by ModelOpt: that cell (only) becomes an error row."""
    data = copy.deepcopy(TINY_MATRIX)
    data["name"] = "refused"
    data["canary"]["enabled"] = False
    data["axes"] = {"quant_pairs": ["wmxfp6_amxfp6", "wint8_afp16"], "granularities": ["w_per_tensor"], "dataset_sizes": ["a"]}
    path = write_matrix(tmp_path, data)
    outcome = run_sweep(path, RunOptions(output_root=str(tmp_path / "runs"), engine="shared"))
    rows = {r["pair"]: r for r in outcome.summary["rows"]}
    assert outcome.exit_code == ExitCode.CELLS_FAILED
    assert rows["wmxfp6_amxfp6"]["status"] == "error" and "ModelOpt refuses" in rows["wmxfp6_amxfp6"]["error"]
    assert rows["wint8_afp16"]["status"] == "ok" and rows["wint8_afp16"]["engine"] == "shared"
    # nothing left to run: the rewritten summary keeps what the first run knew about the model and baseline
    again = run_sweep(path, RunOptions(output_root=str(tmp_path / "runs"), engine="shared"))
    assert again.rows_written == 0
    assert again.summary["model"]["name"] == "synthetic-llama-tiny" and again.summary["baseline"]["perplexity"] > 1


def test_sizes_share_a_call_only_through_whole_batches():
    """Prefixes of one list of batches are another size's batches only when sizes are multiples of the batch
    size: 6 samples at batch 4 are batches of 4 + 2, which no prefix of 16 samples' list has."""
    from quantsweep.matrix_io import parse_matrix
    from quantsweep.execution.shared_runner import plan_union_calls
    from quantsweep.planning import expand

    data = copy.deepcopy(TINY_MATRIX)
    data["dataset"]["sizes"] = {"six": 6, "sixteen": 16, "eight": 8}
    data["axes"] = {"quant_pairs": ["wint4_afp16", "wfp8_afp8"], "granularities": ["default"],
                    "dataset_sizes": ["six", "sixteen", "eight"]}
    matrix = parse_matrix(data, "m.yaml")
    plan = expand(matrix, "m.yaml")
    calls = {call.key: (call, [c.size_name for c, *_ in members]) for call, members in plan_union_calls(matrix, "cpu", plan.cells)}
    assert {k: sorted(v[1]) for k, v in calls.items()} == {
        "data-free-samples-6-6": ["six"],
        "calib-max": ["eight", "eight", "sixteen", "sixteen"],  # the weight-only cells joined the calibrated call
        "calib-6-samples-6-6": ["six"],
    }
    assert calls["calib-max"][0].calib_steps == 4 and calls["calib-max"][0].prefix_calibration
    assert calls["calib-6-samples-6-6"][0].calib_steps == 2  # its own 4 + 2 samples
    per_size = {call.key for call, _ in plan_union_calls(matrix, "cpu", plan.cells, prefix_calibration=False)}
    assert {"calib-8", "calib-16"} <= per_size and "calib-max" not in per_size


def _fp8_and_int4_sweep(tmp_path: Path, name: str):
    """A shared sweep of FP8 W8A8 and INT4 weight-only at two sizes (4 cells; the INT4 cells folded into the FP8
    call when nothing fails)."""
    data = copy.deepcopy(TINY_MATRIX)
    data["name"] = name
    data["canary"]["enabled"] = False
    data["axes"] = {"quant_pairs": ["wfp8_afp8", "wint4_afp16"], "granularities": ["default"],
                    "dataset_sizes": ["a", "b"]}
    path = write_matrix(tmp_path, data)
    return run_sweep(path, RunOptions(output_root=str(tmp_path / "runs"), engine="shared"))


def test_a_model_whose_calibration_cannot_be_shared_by_prefix_falls_back_to_one_call_per_size(tmp_path, monkeypatch):
    """When the recorded running maximum is not what ModelOpt loaded (e.g. MoE experts' amax synced after the
    pass), the cells are run in one call per calibration size instead: same rows as ever, no error."""
    from quantsweep.engine import prefix_calibration

    def mismatch(self, model):
        raise prefix_calibration.PrefixCalibrationMismatch("forced by the test")

    monkeypatch.setattr(prefix_calibration.PrefixCalibration, "verify", mismatch)
    # the weight-only cells folded into the calibrated call go back to a data-free call of their own
    outcome = _fp8_and_int4_sweep(tmp_path, "fallback")
    assert outcome.exit_code == ExitCode.OK
    rows = outcome.summary["rows"]
    assert len(rows) == 4 and all(r["status"] == "ok" for r in rows)
    assert sorted(r["telemetry"]["shared"]["union"] for r in rows) == ["calib-4", "calib-8", "data-free", "data-free"]


def test_a_failed_folded_call_is_retried_as_separate_calls_so_weight_only_cells_survive(tmp_path, monkeypatch):
    """Weight-only cells folded into a calibrated call (shared_runner._fold_data_free) do not fail with it: the call
    is planned again without folding, and only the cells whose own call fails get error rows."""
    from quantsweep.engine.shared import run_union as real_run_union
    from quantsweep.execution import shared_runner

    calls = []

    def run_union(model, call, *args, **kwargs):
        calls.append((call.key, sorted(f.label for f in call.formats)))
        if any(not f.data_free for f in call.formats):
            raise RuntimeError("calibration failed (forced by the test)")
        return real_run_union(model, call, *args, **kwargs)

    monkeypatch.setattr(shared_runner, "run_union", run_union)
    outcome = _fp8_and_int4_sweep(tmp_path, "folded-failure")
    assert calls == [("calib-max", ["wfp8_afp8/default", "wint4_afp16/default"]),  # folded, fails
                     ("calib-max", ["wfp8_afp8/default"]), ("data-free", ["wint4_afp16/default"])]
    status = {r["key"]: (r["status"], r.get("error") or "") for r in outcome.summary["rows"]}
    assert {k: v[0] for k, v in status.items()} == {
        "wfp8_afp8/default/a": "error", "wfp8_afp8/default/b": "error",
        "wint4_afp16/default/a": "ok", "wint4_afp16/default/b": "ok"}
    assert "forced by the test" in status["wfp8_afp8/default/a"][1]


def test_only_plain_max_weight_only_cells_join_the_calibrated_call():
    """A weight-only format with ModelOpt's `layerwise` option stays in the data-free call: in the calibrated call it
    would turn off the weight-only skip and the calibration twins of every format (autoquant.py's plain_max)."""
    from quantsweep.execution.shared_runner import plan_union_calls
    from quantsweep.matrix_io import parse_matrix
    from quantsweep.planning import expand

    data = copy.deepcopy(TINY_MATRIX)
    layerwise = {"name": "lwint8", "base": "wint8_afp16", "weight": "int8", "activation": "fp16",
                 "algorithm": {"method": "max", "layerwise": {"enable": True}}}
    data["axes"] = {"quant_pairs": ["wfp8_afp8", "wint4_afp16", layerwise], "granularities": ["default"],
                    "dataset_sizes": ["a", "b"]}
    matrix = parse_matrix(data, "m.yaml")
    calls = {call.key: (call, [c.key for c, *_ in members])
             for call, members in plan_union_calls(matrix, "cpu", expand(matrix, "m.yaml").cells)}
    assert sorted(calls) == ["calib-max", "data-free"]
    calib, calib_cells = calls["calib-max"]
    assert [f.label for f in calib.formats] == ["wfp8_afp8/default", "wint4_afp16/default"] and calib.folded
    assert calib_cells == ["wfp8_afp8/default/a", "wfp8_afp8/default/b", "wint4_afp16/default/a",
                           "wint4_afp16/default/b"]
    free, free_cells = calls["data-free"]
    assert [f.label for f in free.formats] == ["lwint8/default"] and free_cells == ["lwint8/default/a", "lwint8/default/b"]
    assert free.cell_ids == [c.id for c in expand(matrix, "m.yaml").cells if c.pair.name == "lwint8"]


def _both_engines_on(tmp_path, name: str, axes: dict, effective_bits: float = 12.0) -> tuple[dict, dict]:
    """One small matrix run through both engines: (naive rows, shared rows) by cell id, the same cells in each."""
    data = copy.deepcopy(TINY_MATRIX)
    data["name"] = name
    data["canary"]["enabled"] = False
    data["autoquant"]["effective_bits"] = effective_bits
    data["axes"] = axes
    path = write_matrix(tmp_path, data)
    naive = run_sweep(path, RunOptions(output_root=str(tmp_path / "naive"), engine="naive"))
    shared = run_sweep(path, RunOptions(output_root=str(tmp_path / "shared"), engine="shared"))
    n_rows = {r["cell_id"]: r for r in naive.summary["rows"]}
    s_rows = {r["cell_id"]: r for r in shared.summary["rows"]}
    assert set(n_rows) == set(s_rows)
    return n_rows, s_rows


def _assert_cells_equal_naive(n_rows: dict, s_rows: dict) -> None:
    """Every shared cell has the naive cell's per-layer raw scores (1e-6), chosen formats and quality (1e-4)."""
    for cid, n in n_rows.items():
        s = s_rows[cid]
        assert s["status"] == n["status"] == "ok", (s.get("error"), n.get("error"))
        n_layers = {g["name"]: g for g in _manifest(n)["layers"]}
        for g in _manifest(s)["layers"]:
            assert g["raw_scores"] == pytest.approx(n_layers[g["name"]]["raw_scores"], rel=1e-6, abs=0), (n["key"], g["name"])
            assert g["chosen"] == n_layers[g["name"]]["chosen"]
        for metric in ("kl_mean", "ppl_quant", "top1_agreement"):
            assert s["quality"][metric] == pytest.approx(n["quality"][metric], rel=1e-4, abs=1e-7), (n["key"], metric)


def test_formats_that_rescale_weights_get_calls_of_their_own_and_equal_naive(tmp_path):
    """AWQ and SmoothQuant fold their scales into the shared weights at the end of ModelOpt's search: in one call
    together the cells' quality came out 100x too high (KL 0.020 for 0.00015). Each gets a call of its own, and
    then every cell equals the naive engine's (raw scores, recipe, quality)."""
    n_rows, s_rows = _both_engines_on(tmp_path, "rescale", {
        "quant_pairs": ["wint4_afp16_awq", "wint8_aint8_sq"], "granularities": ["default"], "dataset_sizes": ["a"]})
    assert len(s_rows) == 2
    unions = sorted(r["telemetry"]["shared"]["union"] for r in s_rows.values())
    assert unions == ["calib-4-wint4_afp16_awq/default", "calib-4-wint8_aint8_sq/default"]  # not one "calib-4"
    _assert_cells_equal_naive(n_rows, s_rows)


def test_weight_only_calibration_skips_the_forward_only_for_plain_max():
    """A weight-only format under plain max needs no calibration forward (ModelOpt calibrates weights on the
    weights); under `layerwise` max the forward is what feeds each layer its inputs, so it must run (skipping it
    made ModelOpt fail with 'collected no inputs')."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from quantsweep.catalogue import QUANT_PAIRS
    from quantsweep.engine.autoquant import call_auto_quantize

    cfg = LlamaConfig(vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=4)
    ids = torch.randint(0, 256, (2, 16), generator=torch.Generator().manual_seed(0))
    batches = [{"input_ids": ids, "labels": ids} for _ in range(2)]
    plain = QUANT_PAIRS["wint8_afp16"].config()
    layerwise = {**plain, "algorithm": {"method": "max", "layerwise": {"enable": True}}}
    calls = {}
    for name, config in (("plain", plain), ("layerwise", layerwise)):
        torch.manual_seed(0)
        out = call_auto_quantize(LlamaForCausalLM(cfg).eval(), configs=[config], budget=16.0, batches=batches,
                                 calib_steps=2, score_steps=1, method="gradient", disabled_layers=None, captured=True)
        calls[name] = out.calls
    assert calls["plain"].get("calibrate_skipped") == 2 and calls["plain"]["calibrate"] == 0
    assert "calibrate_skipped" not in calls["layerwise"] and calls["layerwise"]["calibrate"] >= 2


def test_formats_with_alike_activation_quantizers_share_one_calibration_forward_and_equal_naive(tmp_path):
    """engine/calibration_twins.py: FP8 W8A8 and INT8 W8A8 at two weight granularities are four formats with two
    kinds of input quantizer; the shared call runs the calibration forward for one format of each kind (at two
    dataset sizes, through the prefix records), and every cell still equals the naive engine's per-cell calls."""
    n_rows, s_rows = _both_engines_on(tmp_path, "twins", {
        "quant_pairs": ["wfp8_afp8", "wint8_aint8"], "granularities": ["default", "w_group64"],
        "dataset_sizes": ["a", "b"]})
    assert len(s_rows) == 8
    calls = {r["telemetry"]["shared"]["union"]: r["telemetry"]["forward_calls"] for r in s_rows.values()}
    assert list(calls) == ["calib-max"], calls  # one call: 4 formats, calibrated once for both sizes
    steps = 2  # size b: 8 samples at batch 4
    assert calls["calib-max"]["calibrate"] == 2 * steps and calls["calib-max"]["calibrate_shared"] == 2 * steps
    _assert_cells_equal_naive(n_rows, s_rows)
