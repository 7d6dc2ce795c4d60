"""The catalogue against ModelOpt 0.47 itself (the one test module that imports ModelOpt, and with it torch).

Checks that the plain-data catalogue cannot drift from ModelOpt silently:
- every pair with a `base_builtin` is exactly that ModelOpt preset;
- `default_disabled_entries()` is the tail every ModelOpt preset carries;
- `quant_summary.format_bits` equals 16 x ModelOpt's `estimate_quant_compression` (the cost AutoQuantize uses);
- every pair x granularity effective config validates as a ModelOpt `QuantizeConfig`.
"""

from __future__ import annotations

import copy
import warnings

import pytest

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    import modelopt.torch.quantization as mtq
    from modelopt.torch.quantization.algorithms import estimate_quant_compression
    from modelopt.torch.quantization.config import QuantizeConfig

from quantsweep.catalogue import GRANULARITIES, INPUT_KEY, QUANT_PAIRS, WEIGHT_KEY, default_disabled_entries
from quantsweep.matrix_io import parse_matrix
from quantsweep.overlay import apply_overlay, from_jsonable, to_jsonable
from quantsweep.planning import expand
from quantsweep.quant_summary import format_bits, modelopt_violations

BUILTIN_PAIRS = sorted(n for n, p in QUANT_PAIRS.items() if p.base_builtin)
ALL_COMBOS = [(p, g) for p in sorted(QUANT_PAIRS) for g in sorted(GRANULARITIES)]

# The combinations the planner predicts ModelOpt refuses (quant_summary.modelopt_violations, pure): MXFP6 (E3M2)
# under an overlay that removes its dynamic blocks. The exhaustive test below checks the prediction is exact.
REJECTED_BY_MODELOPT: set[tuple[str, str]] = {
    (p, g)
    for p in QUANT_PAIRS
    for g in GRANULARITIES
    if modelopt_violations(apply_overlay(QUANT_PAIRS[p].config(), GRANULARITIES[g].overrides())[0])
}

ACCEPTED_COMBOS = [c for c in ALL_COMBOS if c not in REJECTED_BY_MODELOPT]


def _effective(pair: str, gran: str) -> tuple[dict, list[str]]:
    return apply_overlay(QUANT_PAIRS[pair].config(), GRANULARITIES[gran].overrides())


def _modelopt_bits(cfg: dict) -> float:
    return 16 * estimate_quant_compression(QuantizeConfig(**copy.deepcopy(cfg)))


def test_modelopt_version():
    import modelopt

    assert modelopt.__version__.startswith("0.47.")


def test_expected_builtins():
    assert {n: QUANT_PAIRS[n].base_builtin for n in BUILTIN_PAIRS} == {
        "wfp4_afp16": "W4A16_NVFP4_CFG",
        "wfp4_afp4": "NVFP4_DEFAULT_CFG",
        "wfp4_afp8": "W4A8_NVFP4_FP8_CFG",
        "wfp8_afp8": "FP8_DEFAULT_CFG",
        "wint4_afp16": "INT4_BLOCKWISE_WEIGHT_ONLY_CFG",
        "wint4_afp16_awq": "INT4_AWQ_CFG",
        "wint8_afp16": "INT8_WEIGHT_ONLY_CFG",
        "wint8_aint8": "INT8_DEFAULT_CFG",
        "wint8_aint8_sq": "INT8_SMOOTHQUANT_CFG",
        "wmxfp4_amxfp4": "MXFP4_DEFAULT_CFG",
        "wmxfp6_amxfp6": "MXFP6_DEFAULT_CFG",
        "wmxfp8_amxfp8": "MXFP8_DEFAULT_CFG",
        "wmxint8_amxint8": "MXINT8_DEFAULT_CFG",
    }


@pytest.mark.parametrize("name", BUILTIN_PAIRS)
def test_builtin_pairs_equal_modelopt_preset(name):
    p = QUANT_PAIRS[name]
    assert p.config() == getattr(mtq, p.base_builtin)


def test_default_disabled_entries_equal_modelopt_tail():
    assert default_disabled_entries() == mtq.FP8_DEFAULT_CFG["quant_cfg"][3:]


@pytest.mark.parametrize("name", sorted(QUANT_PAIRS))
def test_every_pair_carries_modelopt_tail(name):
    tail = mtq.FP8_DEFAULT_CFG["quant_cfg"][3:]
    assert QUANT_PAIRS[name].config()["quant_cfg"][-len(tail) :] == tail


@pytest.mark.parametrize("name", sorted(QUANT_PAIRS))
def test_format_bits_equals_modelopt_estimate_for_pairs(name):
    cfg = QUANT_PAIRS[name].config()
    assert format_bits(cfg) == pytest.approx(_modelopt_bits(cfg), abs=0, rel=1e-12)


@pytest.mark.parametrize("pair, gran", ACCEPTED_COMBOS)
def test_format_bits_equals_modelopt_estimate_for_overlays(pair, gran):
    cfg, _ = _effective(pair, gran)  # a no-op overlay (warning) leaves the pair's own config: still checked
    assert format_bits(cfg) == pytest.approx(_modelopt_bits(cfg), abs=0, rel=1e-12)


@pytest.mark.parametrize("pair, gran", ALL_COMBOS)
def test_effective_config_accepted_by_modelopt(pair, gran):
    cfg, _ = _effective(pair, gran)
    if (pair, gran) in REJECTED_BY_MODELOPT:
        with pytest.raises(ValueError):
            QuantizeConfig.model_validate(copy.deepcopy(cfg))
        return
    qc = QuantizeConfig.model_validate(copy.deepcopy(cfg))
    # ModelOpt keeps the entries in order, one for one
    assert [e.quantizer_name for e in qc.quant_cfg] == [e["quantizer_name"] for e in cfg["quant_cfg"]]


@pytest.mark.parametrize("pair, gran", ACCEPTED_COMBOS)
def test_effective_config_from_disk_form_accepted_by_modelopt(pair, gran):
    """What a cell writes to disk (to_jsonable) and reads back (from_jsonable) is the same ModelOpt config."""
    cfg, _ = _effective(pair, gran)
    round_tripped = from_jsonable(to_jsonable(cfg))
    assert QuantizeConfig.model_validate(round_tripped).model_dump() == QuantizeConfig.model_validate(cfg).model_dump()


def test_accepted_set_is_every_combination():
    accepted = set()
    for pair, gran in ALL_COMBOS:
        cfg, _ = _effective(pair, gran)
        try:
            QuantizeConfig.model_validate(copy.deepcopy(cfg))
        except ValueError:
            continue
        accepted.add((pair, gran))
    assert accepted == set(ALL_COMBOS) - REJECTED_BY_MODELOPT
    assert {g for p, g in REJECTED_BY_MODELOPT if p == "wmxfp6_amxfp6"} == {
        "w_per_tensor", "w_per_out_channel", "w_per_in_channel", "a_per_tensor_static", "recipe_match_channel_token",
    }
    assert {p for p, _ in REJECTED_BY_MODELOPT} == {"wmxfp6_amxfp6"}


def test_planned_cells_are_accepted_by_modelopt():
    """Through the planner (schema -> expand), including an inline granularity and inline pairs."""
    data = {
        "name": "all",
        "axes": {
            "quant_pairs": sorted(QUANT_PAIRS)
            + [
                {"name": "mine_w4", "weight": "int4", "activation": "fp16",
                 "weight_quantizer": {"num_bits": 4, "block_sizes": {"-1": 32, "type": "static"}}},
                {"name": "mine_fp4_fp8", "weight": "fp4", "activation": "fp8", "base": "wfp4_afp16",
                 "input_quantizer": {"num_bits": [4, 3], "axis": None}},
            ],
            "granularities": sorted(GRANULARITIES)
            + [{"name": "w_group32", "overrides": {"*weight_quantizer": {"block_sizes": {"-1": 32}}}}],
            "dataset_sizes": ["small"],
        },
    }  # fmt: skip
    plan = expand(parse_matrix(data, "all.yaml"))
    assert len(plan.cells) == (len(QUANT_PAIRS) + 2) * 10
    for cell in plan.cells:
        if "invalid_for_modelopt" in cell.flags:  # predicted by the planner, shown by dry-run
            with pytest.raises(ValueError):
                QuantizeConfig.model_validate(copy.deepcopy(cell.config))
            continue
        QuantizeConfig.model_validate(copy.deepcopy(cell.config))
        assert cell.format_bits == pytest.approx(_modelopt_bits(cell.config), abs=0, rel=1e-12)


def test_recipe_overlay_on_fp8_is_modelopt_per_channel_per_token():
    """recipe_match_channel_token on wfp8_afp8 is ModelOpt's FP8_PER_CHANNEL_PER_TOKEN_CFG (up to axis=None)."""
    cfg, warns = _effective("wfp8_afp8", "recipe_match_channel_token")
    assert warns == []
    ours = QuantizeConfig.model_validate(cfg).model_dump()
    theirs = QuantizeConfig.model_validate(mtq.FP8_PER_CHANNEL_PER_TOKEN_CFG).model_dump()
    assert ours == theirs


def test_modelopt_rejects_both_axis_and_block_sizes():
    """Why overlay rule 3 exists: ModelOpt refuses a quantizer with both attributes."""
    bad = copy.deepcopy(QUANT_PAIRS["wint8_afp16"].config())
    bad["quant_cfg"][1]["cfg"] = {"num_bits": 8, "axis": 0, "block_sizes": {-1: 64}}
    with pytest.raises(ValueError):
        QuantizeConfig.model_validate(bad)


def test_weight_only_pairs_have_no_enabled_input_in_modelopt():
    for name, p in QUANT_PAIRS.items():
        if p.activation != "fp16":
            continue
        qc = QuantizeConfig.model_validate(p.config())
        last_input = [e for e in qc.quant_cfg if e.quantizer_name in ("*", INPUT_KEY) and e.parent_class is None][-1]
        assert last_input.enable is False, name
        last_weight = [e for e in qc.quant_cfg if e.quantizer_name in ("*", WEIGHT_KEY) and e.parent_class is None][-1]
        assert last_weight.enable is True and last_weight.cfg is not None, name


def test_known_quantizer_attributes_match_modelopt():
    """The overlay validator's attribute list is ModelOpt's QuantizerAttributeConfig, field for field."""
    from modelopt.torch.quantization.config import QuantizerAttributeConfig

    from quantsweep.overlay import QUANTIZER_ATTRIBUTES

    assert set(QuantizerAttributeConfig.model_fields) == QUANTIZER_ATTRIBUTES
