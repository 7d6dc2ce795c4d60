"""Planning (quantsweep.planning): expansion, stable ids, paths, duplicates, budgets, canary, estimate."""

from __future__ import annotations

import copy
import functools
from pathlib import PurePosixPath

import pytest
import yaml
from conftest import MATRICES, minimal, with_axes

from quantsweep.catalogue import QUANT_PAIRS
from quantsweep.errors import MatrixError
from quantsweep.matrix_io import load_matrix, parse_matrix
from quantsweep.planning import expand, resolve_pair
from quantsweep.schema import Matrix

SRC = "matrices/x.yaml"


def plan_of(data, source: str = SRC):
    return expand(parse_matrix(data, source), source)


def grid(pairs, grans, sizes, bits=8.0, **extra):
    data = minimal(**extra)
    data["axes"] = {"quant_pairs": pairs, "granularities": grans, "dataset_sizes": sizes}
    data.setdefault("autoquant", {})["effective_bits"] = bits
    return data


# --- expansion -----------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "pairs, grans, sizes, bits, n",
    [
        (["wint8_afp16"], ["default"], ["small"], 8.0, 1),
        (["wint8_afp16", "wint4_afp16"], ["default", "w_group64"], ["small", "medium"], 8.0, 8),
        (["wint8_afp16", "wint4_afp16", "wfp8_afp8"], ["default", "w_per_tensor"], ["small"], [6.0, 8.0, 10.0], 18),
        (["wint8_afp16"], ["default", "w_group64", "w_group128"], ["small", "medium", "large"], [8.0, 4.0], 18),
    ],
)
def test_expansion_counts(pairs, grans, sizes, bits, n):
    plan = plan_of(grid(pairs, grans, sizes, bits))
    n_budgets = len(bits) if isinstance(bits, list) else 1
    assert len(plan.cells) == n == len(pairs) * len(grans) * len(sizes) * n_budgets
    assert {(c.pair.name, c.granularity.name, c.size_name, c.budget) for c in plan.cells} == {
        (p, g, s, float(b)) for p in pairs for g in grans for s in sizes for b in (bits if n_budgets > 1 else [bits])
    }


def test_expansion_order_is_pairs_then_granularities_then_sizes_then_budgets():
    plan = plan_of(grid(["wint8_afp16", "wint4_afp16"], ["default", "w_group64"], ["small", "medium"], [8.0, 10.0]))
    keys = [c.key for c in plan.cells]
    assert keys[:4] == [
        "wint8_afp16/default/small@8",
        "wint8_afp16/default/small@10",
        "wint8_afp16/default/medium@8",
        "wint8_afp16/default/medium@10",
    ]
    assert keys[-1] == "wint4_afp16/w_group64/medium@10"


def test_preset_counts():
    assert len(expand(load_matrix(MATRICES / "quickstart.yaml")).cells) == 8
    assert len(expand(load_matrix(MATRICES / "granularity-study.yaml")).cells) == 3 * 6 * 2 * 2
    assert len(expand(load_matrix(MATRICES / "full-pairs.yaml")).cells) == 16


def test_paths_single_budget():
    plan = plan_of(grid(["wint8_afp16"], ["default", "w_group64"], ["small"], output_root="out/dir", name="sweep1"))
    assert [c.path for c in plan.cells] == [
        PurePosixPath("out/dir/sweep1/wint8_afp16/default/small"),
        PurePosixPath("out/dir/sweep1/wint8_afp16/w_group64/small"),
    ]
    assert plan.sweep_dir == PurePosixPath("out/dir/sweep1")
    assert not any(part.startswith("bits-") for c in plan.cells for part in c.path.parts)
    assert [c.key for c in plan.cells] == ["wint8_afp16/default/small", "wint8_afp16/w_group64/small"]


def test_paths_several_budgets_get_bits_component():
    plan = plan_of(grid(["wint8_afp16"], ["default"], ["small"], [8.0, 10.5]))
    assert [str(c.path) for c in plan.cells] == [
        "runs/x/wint8_afp16/default/small/bits-8",
        "runs/x/wint8_afp16/default/small/bits-10.5",
    ]
    assert [c.key for c in plan.cells] == ["wint8_afp16/default/small@8", "wint8_afp16/default/small@10.5"]


def test_paths_use_inline_names():
    data = grid(
        [{"name": "my_int8", "weight": "int8", "activation": "fp16", "base": "wint8_afp16"}],
        [{"name": "w_group32", "overrides": {"*weight_quantizer": {"block_sizes": {"-1": 32}}}}],
        [{"name": "tiny", "samples": 2}],
    )
    (cell,) = plan_of(data).cells
    assert str(cell.path) == "runs/x/my_int8/w_group32/tiny"
    assert cell.samples == 2
    assert cell.config["quant_cfg"][1]["cfg"] == {"num_bits": 8, "block_sizes": {-1: 32}}


# --- ids -----------------------------------------------------------------------------------------------------
def _ids(data) -> list[str]:
    return [c.id for c in plan_of(data).cells]


@functools.cache
def _quickstart() -> dict:
    return yaml.safe_load((MATRICES / "quickstart.yaml").read_text())


def quickstart_data() -> dict:
    return copy.deepcopy(_quickstart())


def test_ids_stable_and_unique():
    a, b = _ids(quickstart_data()), _ids(quickstart_data())
    assert a == b
    assert len(set(a)) == len(a)
    assert all(len(i) == 12 and int(i, 16) >= 0 for i in a)


def test_ids_unique_with_budgets_and_duplicate_configs():
    plan = expand(load_matrix(MATRICES / "granularity-study.yaml"))
    ids = [c.id for c in plan.cells]
    assert len(set(ids)) == len(ids)
    paths = [str(c.path).lower() for c in plan.cells]
    assert len(set(paths)) == len(paths)


@pytest.mark.parametrize(
    "section, key, value",
    [
        ("dataset", "seq_len", 256),
        ("dataset", "seed", 1),
        ("dataset", "eval_samples", 9),
        ("autoquant", "effective_bits", 9.0),
        ("autoquant", "method", "kl_div"),
        ("autoquant", "batch_size", 2),
        ("autoquant", "score_size", 2),
        ("autoquant", "disabled_layers", ["*lm_head*"]),
        ("model", "dtype", "float32"),
        ("model", "device", "cpu"),
    ],
)
def test_result_relevant_changes_change_every_id(section, key, value):
    base = _ids(quickstart_data())
    data = quickstart_data()
    data[section][key] = value
    changed = _ids(data)
    assert not set(base) & set(changed)


def test_changing_a_budget_changes_ids():
    data = quickstart_data()
    data["autoquant"]["effective_bits"] = [8.0, 10.0]
    ids8_10 = {c.key: c.id for c in plan_of(data).cells}
    data["autoquant"]["effective_bits"] = [8.0, 12.0]
    ids8_12 = {c.key: c.id for c in plan_of(data).cells}
    # the budget-8 cells are the same computation; the others differ
    assert {k: v for k, v in ids8_10.items() if k.endswith("@8")} == {k: v for k, v in ids8_12.items() if k.endswith("@8")}
    assert not {v for k, v in ids8_10.items() if k.endswith("@10")} & set(ids8_12.values())


def test_changing_samples_of_a_size_changes_only_its_cells():
    base = {c.key: c.id for c in plan_of(quickstart_data()).cells}
    data = quickstart_data()
    data["dataset"]["sizes"]["tiny"] = 5
    changed = {c.key: c.id for c in plan_of(data).cells}
    for key in base:  # keys are pair/granularity/size@budget
        assert (base[key] == changed[key]) is key.split("@")[0].endswith("/small")


@pytest.mark.parametrize(
    "mutate",
    [
        lambda d: d.update(labels={"execution_lane": "other"}),
        lambda d: d.update(kpi={"max_quality": 0.5}),
        lambda d: d.update(canary={"repeats": 3}),
        lambda d: d.update(description="other words"),
        lambda d: d.update(output_root="elsewhere"),
        lambda d: d.update(repeats=3),
        lambda d: d["model"].update(name="renamed"),
        lambda d: d["dataset"]["sizes"].update(unused=99),
    ],
    ids=["labels", "kpi", "canary", "description", "output_root", "repeats", "model-name", "unused-size"],
)
def test_unrelated_changes_keep_ids(mutate):
    data = quickstart_data()
    mutate(data)
    assert _ids(data) == _ids(quickstart_data())


def test_id_depends_on_axis_names_config_hash_does_not():
    data = grid(
        ["wint8_afp16", {"name": "my_int8", "weight": "int8", "activation": "fp16", "base": "wint8_afp16"}],
        ["default"],
        ["small"],
    )
    a, b = plan_of(data).cells
    assert a.config == b.config
    assert a.config_hash == b.config_hash
    assert a.id != b.id


# --- path collisions -----------------------------------------------------------------------------------------
def test_case_insensitive_granularity_collision_rejected_by_semantic_check():
    data = with_axes(granularities=[{"name": "G"}, {"name": "g"}])
    with pytest.raises(MatrixError) as excinfo:
        plan_of(data)
    assert excinfo.value.problems == [("axes.granularities[1]", "duplicate entry 'g' (same as [0])")]


def test_expand_rejects_case_insensitive_path_collision_itself():
    """Even a Matrix that skipped semantic_errors cannot produce two cells in one directory."""
    m = Matrix.model_validate(with_axes(granularities=[{"name": "G"}, {"name": "g"}]))
    with pytest.raises(MatrixError) as excinfo:
        expand(m, SRC)
    ((loc, msg),) = excinfo.value.problems
    assert loc == "axes"
    assert "share path" in msg
    assert str(excinfo.value).startswith(f"{SRC}: axes: ")


def test_close_budgets_get_distinct_paths():
    """8.0 and 8.0000001 are distinct budgets: their folders must differ (10 significant digits in the name)."""
    plan = plan_of(minimal(autoquant={"effective_bits": [8.0, 8.0000001]}))
    assert [c.path.name for c in plan.cells] == ["bits-8", "bits-8.0000001"]
    assert len({c.id for c in plan.cells}) == 2


# --- duplicate configurations --------------------------------------------------------------------------------
def test_config_hash_equal_for_identical_configs():
    plan = plan_of(grid(["wint8_afp16"], ["default", "w_per_out_channel", "w_per_tensor"], ["small"]))
    default, per_channel, per_tensor = plan.cells
    assert default.config == per_channel.config
    assert default.config_hash == per_channel.config_hash
    assert default.id != per_channel.id
    assert per_tensor.config_hash != default.config_hash
    dup = [w for w in plan.warnings if "resolve to the same configuration" in w]
    assert dup == [
        "cells wint8_afp16/default/small, wint8_afp16/w_per_out_channel/small resolve to the same configuration: "
        "they compute the same thing twice"
    ]


def test_no_duplicate_warning_across_sizes():
    plan = plan_of(grid(["wint8_afp16"], ["default"], ["small", "medium"]))
    assert len({c.config_hash for c in plan.cells}) == 2
    assert not any("same configuration" in w for w in plan.warnings)


# --- budgets -------------------------------------------------------------------------------------------------
def test_budget_below_format_bits_flag_and_warning():
    plan = plan_of(grid(["wint4_afp16", "wint8_afp16"], ["default"], ["small"], [3.0, 6.0]))
    flags = {c.key: c.flags for c in plan.cells}
    assert flags == {
        "wint4_afp16/default/small@3": ["budget_below_format_bits"],
        "wint4_afp16/default/small@6": [],
        "wint8_afp16/default/small@3": ["budget_below_format_bits"],
        "wint8_afp16/default/small@6": ["budget_below_format_bits"],
    }
    below = [w for w in plan.warnings if "below the format" in w]
    assert len(below) == 3
    assert (
        "wint8_afp16/default/small@6: budget 6 bits is below the format's 8 bits; this cell will be an error row"
        in below
    )


def test_budget_equal_to_format_bits_is_fine():
    (cell,) = plan_of(grid(["wfp4_afp16"], ["default"], ["small"], 4.5)).cells
    assert cell.format_bits == 4.5
    assert cell.flags == ["needs_gpu"]


def test_flags_experimental_and_overlay_noop():
    plan = plan_of(grid(["wint8_aint4", "wint8_afp16"], ["a_per_token_dynamic"], ["small"]))
    flags = {c.pair.name: c.flags for c in plan.cells}
    assert flags == {"wint8_aint4": ["experimental"], "wint8_afp16": ["overlay_noop"]}
    assert any(w.startswith("wint8_afp16/a_per_token_dynamic: overlay on *input_quantizer does nothing") for w in plan.warnings)
    assert "wint8_aint4: experimental pair (no mainstream deployment kernel)" in plan.warnings


def test_experimental_warning_once_per_pair():
    plan = plan_of(grid(["wint8_aint4"], ["default", "w_group64"], ["small", "medium"]))
    assert plan.warnings.count("wint8_aint4: experimental pair (no mainstream deployment kernel)") == 1


def test_experimental_warning_not_hidden_by_a_suffix_named_pair():
    mine = {"name": "my_wint8_aint4", "weight": "int8", "activation": "int4", "base": "wint8_aint4"}
    plan = plan_of(grid([mine, "wint8_aint4"], ["default"], ["small"]))
    assert "wint8_aint4: experimental pair (no mainstream deployment kernel)" in plan.warnings


def test_score_size_and_calib_size():
    data = grid(["wint8_afp16"], ["default"], ["small", "medium"])  # 16, 128 samples
    data["autoquant"].update(score_size=32, calib_size=8, batch_size=4)
    small, medium = plan_of(data).cells
    assert (small.calib_samples, small.score_samples) == (8, 16)
    assert (medium.calib_samples, medium.score_samples) == (8, 32)
    assert (medium.calib_steps, medium.score_steps) == (2, 8)


def test_score_size_larger_than_every_size_warns():
    data = grid(["wint8_afp16"], ["default"], ["small"])
    data["autoquant"]["score_size"] = 1000
    plan = plan_of(data)
    assert plan.cells[0].score_samples == 16
    assert "autoquant.score_size 1000 exceeds every dataset size; scoring uses all samples" in plan.warnings


# --- inline pairs --------------------------------------------------------------------------------------------
def test_inline_pair_from_scratch_and_gpu_detection():
    data = grid(
        [
            {"name": "mine_int4", "weight": "int4", "activation": "fp16",
             "weight_quantizer": {"num_bits": 4, "block_sizes": {"-1": 32, "type": "static"}}},
            {"name": "mine_mx", "weight": "fp4", "activation": "fp16",
             "weight_quantizer": {"num_bits": [2, 1], "block_sizes": {"-1": 32, "type": "dynamic", "scale_bits": [8, 0]}}},
        ],
        ["default"],
        ["small"],
    )  # fmt: skip
    int4, mx = plan_of(data).cells
    assert int4.pair.needs_gpu is False and mx.pair.needs_gpu is True
    assert int4.pair.experimental is True  # inline pairs default to experimental
    assert int4.config["quant_cfg"][1]["cfg"] == {"num_bits": 4, "block_sizes": {-1: 32, "type": "static"}}
    assert mx.config["quant_cfg"][1]["cfg"]["num_bits"] == (2, 1)
    assert mx.format_bits == 4
    assert int4.config["algorithm"] == "max"


def test_inline_pair_based_on_weight_only_nvfp4_adds_an_input_entry():
    data = grid(
        [{"name": "mine", "weight": "fp4", "activation": "fp8", "base": "wfp4_afp16", "needs_gpu": False,
          "input_quantizer": {"num_bits": [4, 3], "axis": None}, "algorithm": "awq_lite"}],
        ["default"],
        ["small"],
    )  # fmt: skip
    (cell,) = plan_of(data).cells
    assert cell.config["quant_cfg"][2] == {"quantizer_name": "*input_quantizer", "cfg": {"num_bits": (4, 3), "axis": None}}
    assert cell.config["quant_cfg"][1] == QUANT_PAIRS["wfp4_afp16"].config()["quant_cfg"][1]
    assert cell.config["algorithm"] == "awq_lite"
    assert cell.pair.needs_gpu is False  # explicit wins over detection
    assert cell.pair.base_builtin is None
    assert cell.summary()["input_quantizer"] == "fp8-e4m3 per-tensor static"


def test_resolve_pair_does_not_touch_catalogue():
    before = QUANT_PAIRS["wint8_afp16"].config()
    rp = resolve_pair("wint8_afp16")
    rp.config["quant_cfg"][1]["cfg"]["num_bits"] = 2
    assert QUANT_PAIRS["wint8_afp16"].config() == before


# --- canary --------------------------------------------------------------------------------------------------
def test_default_canary_is_cheapest():
    plan = expand(load_matrix(MATRICES / "quickstart.yaml"))
    assert plan.canary_cell.key == "wint4g64_afp16/default/tiny@8"  # the 4-bit format at the first budget
    cell = plan.canary_cell
    assert cell.samples == min(c.samples for c in plan.cells)
    assert not cell.pair.needs_gpu


def test_default_canary_avoids_gpu_and_unrunnable_budgets():
    data = grid(["wfp4_afp16", "wint4_afp16", "wint8_afp16"], ["default"], ["small"], 6.0)
    assert plan_of(data).canary_cell.key == "wint4_afp16/default/small"
    data = grid(["wfp4_afp16", "wint8_afp16"], ["default"], ["small"], 6.0)
    # wint8 (8 bits) cannot meet a 6-bit budget; the runnable one wins even though it needs a GPU
    assert plan_of(data).canary_cell.key == "wfp4_afp16/default/small"


def test_default_canary_prefers_max_calibration():
    data = grid(["wint4_afp16_awq", "wint8_aint8_sq", "wint8_afp16"], ["default"], ["small"])
    assert plan_of(data).canary_cell.pair.name == "wint8_afp16"


def test_explicit_canary_cell():
    data = quickstart_data()
    data["canary"] = {"cell": "wint8_afp16/default/tiny@10"}
    plan = plan_of(data)
    assert plan.canary_cell.key == "wint8_afp16/default/tiny@10"
    data["canary"] = {"cell": plan.cells[3].id}  # a cell id works too
    assert plan_of(data).canary_cell.key == plan.cells[3].key


def test_explicit_canary_cell_with_budgets():
    data = quickstart_data()
    data["autoquant"]["effective_bits"] = [8.0, 10.0]
    data["canary"] = {"cell": "wint8_afp16/default/tiny@10"}
    assert plan_of(data).canary_cell.budget == 10.0


# the quickstart has budgets 8 and 10: a key without its budget, or with another one, names no cell
@pytest.mark.parametrize("cell", ["wint8_afp16/default/huge", "nope", "wint8_afp16/default/tiny",
                                  "wint8_afp16/default/tiny@9"])
def test_unknown_canary_cell(cell):
    data = quickstart_data()
    data["canary"] = {"cell": cell}
    with pytest.raises(MatrixError) as excinfo:
        plan_of(data)
    ((loc, msg),) = excinfo.value.problems
    assert loc == "canary.cell"
    assert repr(cell) in msg
    assert str(excinfo.value).startswith(f"{SRC}: canary.cell: no cell ")


def test_canary_disabled():
    data = quickstart_data()
    data["canary"] = {"enabled": False, "cell": "nope"}
    plan = plan_of(data)
    assert plan.canary_cell is None
    assert plan.estimate()["canary_runs"] == 0


# --- estimate ------------------------------------------------------------------------------------------------
def test_quickstart_estimate():
    est = expand(load_matrix(MATRICES / "quickstart.yaml")).estimate()
    assert est["cells"] == 8
    assert est["unique_formats"] == 2
    # batch 4: tiny (4 samples) = 1 step, small (8) = 2 steps; 2 pairs x 2 budgets
    assert est["calibration_batches_per_cell_sum"] == 12
    assert est["scoring_batches_per_cell_sum"] == 12
    assert est["unique_calibrations"] == 4  # a budget does not change the calibration
    assert est["shared_forward_backward_batches"] == 2
    assert est["canary_runs"] == 2
    assert est["eval_samples"] == 8
    assert est["seq_len"] == 128


def test_estimate_counts_duplicate_configs_once():
    est = plan_of(grid(["wint8_afp16"], ["default", "w_per_out_channel"], ["small"])).estimate()
    assert est["cells"] == 2
    assert est["unique_formats"] == 1
    assert est["unique_calibrations"] == 1


def test_cell_summary_fields():
    cell = expand(load_matrix(MATRICES / "quickstart.yaml")).cells[0]
    s = cell.summary()
    assert s["key"] == "wint8_afp16/default/tiny@8"
    assert s["path"] == "runs/quickstart/wint8_afp16/default/tiny/bits-8"
    assert s["weight_quantizer"] == "int8 per-out-channel static"
    assert s["input_quantizer"] == "disabled"
    assert s["calibration"] == "max"
    assert s["format_bits"] == 8.0 and s["effective_bits_target"] == 8.0
    assert s["flags"] == [] and s["warnings"] == []
