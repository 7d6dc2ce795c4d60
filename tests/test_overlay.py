"""The granularity overlay engine (quantsweep.overlay): the rules of its module docstring, one test each."""

from __future__ import annotations

import copy

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from quantsweep.catalogue import GRANULARITIES, INPUT_KEY, QUANT_PAIRS, WEIGHT_KEY
from quantsweep.overlay import (
    ALLOWED_KEYS,
    OverlayError,
    apply_overlay,
    canonical_json,
    from_jsonable,
    normalize_block_sizes,
    normalize_overlay,
    to_jsonable,
)

# --- seed fixtures ------------------------------------------------------------------------------------------
SEED_WEIGHT_ATTRS = {
    "axis": 0,
    "block_sizes": {"-1": 128, "type": "static", "scale_block_sizes": {"-1": 32}},
    "enable": True,
}
SEED_INPUT_BLOCK_SIZES = {
    "-1": None,
    "-2": 128,
    "type": "dynamic",
    "scale_bits": (4, 3),
    "scale_block_sizes": {"-1": 16},
}


def seed_base() -> dict:
    return {"quant_cfg": [{"quantizer_name": WEIGHT_KEY, "cfg": copy.deepcopy(SEED_WEIGHT_ATTRS)}]}


def _cfg_of(config: dict, key: str) -> object:
    """The `cfg` of the last entry named `key` (no parent_class)."""
    found = [e for e in config["quant_cfg"] if e.get("quantizer_name") == key and "parent_class" not in e]
    return found[-1].get("cfg") if found else None


def test_seed_weight_override_merges_block_sizes_and_removes_axis():
    base = seed_base()
    before = copy.deepcopy(base)
    out, warnings = apply_overlay(base, {WEIGHT_KEY: {"block_sizes": {"-1": 64}}})
    assert warnings == []
    cfg = _cfg_of(out, WEIGHT_KEY)
    assert "axis" not in cfg
    assert cfg["block_sizes"] == {-1: 64, "type": "static", "scale_block_sizes": {-1: 32}}
    assert cfg["enable"] is True
    assert base == before


def test_seed_input_block_sizes_normalise_to_int_keys_keeping_special_keys():
    expected = {-1: None, -2: 128, "type": "dynamic", "scale_bits": (4, 3), "scale_block_sizes": {-1: 16}}
    assert normalize_block_sizes(SEED_INPUT_BLOCK_SIZES) == expected
    # the same through the overlay engine, onto an enabled input quantizer
    base = {
        "quant_cfg": [
            {"quantizer_name": "*", "enable": False},
            {"quantizer_name": INPUT_KEY, "cfg": {"num_bits": 8, "axis": None}},
        ]
    }
    out, warnings = apply_overlay(base, {INPUT_KEY: {"block_sizes": SEED_INPUT_BLOCK_SIZES}})
    assert warnings == []
    assert _cfg_of(out, INPUT_KEY) == {"num_bits": 8, "block_sizes": expected}
    # every axis key is an int, every string key is a special key
    for key in _cfg_of(out, INPUT_KEY)["block_sizes"]:
        assert isinstance(key, int) or key in {"type", "scale_bits", "scale_block_sizes"}


def test_scale_bits_list_becomes_tuple():
    assert normalize_block_sizes({"-1": 16, "scale_bits": [4, 3]})["scale_bits"] == (4, 3)


def test_num_bits_list_becomes_tuple():
    base = QUANT_PAIRS["wint8_afp16"].config()
    out, _ = apply_overlay(base, {WEIGHT_KEY: {"num_bits": [4, 3]}})
    assert _cfg_of(out, WEIGHT_KEY)["num_bits"] == (4, 3)


# --- rule 1: the base is never mutated ----------------------------------------------------------------------
@pytest.mark.parametrize("gran", sorted(GRANULARITIES))
@pytest.mark.parametrize("pair", sorted(QUANT_PAIRS))
def test_base_never_mutated(pair, gran):
    base = QUANT_PAIRS[pair].config()
    before = copy.deepcopy(base)
    overlay = GRANULARITIES[gran].overrides()
    overlay_before = copy.deepcopy(overlay)
    out, _ = apply_overlay(base, overlay)
    assert base == before
    assert overlay == overlay_before
    # the result shares no mutable state with the base
    for entry in out["quant_cfg"]:
        entry["mutated"] = True
        if isinstance(entry.get("cfg"), dict):
            entry["cfg"]["mutated"] = True
            if isinstance(entry["cfg"].get("block_sizes"), dict):
                entry["cfg"]["block_sizes"]["mutated"] = True
    assert base == before


def test_empty_overlay_returns_equal_copy():
    base = QUANT_PAIRS["wint4_afp16"].config()
    for empty in (None, {}):
        out, warnings = apply_overlay(base, empty)
        assert out == base
        assert out is not base
        assert out["quant_cfg"] is not base["quant_cfg"]
        assert warnings == []


# --- rule 3: axis and block_sizes are exclusive -------------------------------------------------------------
def test_axis_override_removes_block_sizes():
    base = QUANT_PAIRS["wint4_afp16"].config()  # INT4 groups of 128
    out, warnings = apply_overlay(base, {WEIGHT_KEY: {"axis": 0}})
    assert warnings == []
    cfg = _cfg_of(out, WEIGHT_KEY)
    assert cfg == {"num_bits": 4, "axis": 0}
    assert "block_sizes" not in cfg


def test_axis_none_override_removes_block_sizes():
    out, _ = apply_overlay(QUANT_PAIRS["wint4_afp16"].config(), {WEIGHT_KEY: {"axis": None}})
    assert _cfg_of(out, WEIGHT_KEY) == {"num_bits": 4, "axis": None}


def test_block_sizes_override_removes_axis():
    out, _ = apply_overlay(QUANT_PAIRS["wint8_afp16"].config(), {WEIGHT_KEY: {"block_sizes": {-1: 64}}})
    assert _cfg_of(out, WEIGHT_KEY) == {"num_bits": 8, "block_sizes": {-1: 64}}


def test_both_axis_and_block_sizes_in_one_override_raises():
    base = QUANT_PAIRS["wint8_afp16"].config()
    before = copy.deepcopy(base)
    with pytest.raises(OverlayError) as excinfo:
        apply_overlay(base, {WEIGHT_KEY: {"axis": 0, "block_sizes": {-1: 64}}})
    msg = str(excinfo.value)
    assert "axis" in msg and "block_sizes" in msg
    assert WEIGHT_KEY in msg
    assert base == before


# --- rule 2: keys and values ---------------------------------------------------------------------------------
def test_unknown_key_raises():
    with pytest.raises(OverlayError, match="Unsupported quant_cfg override key"):
        apply_overlay(QUANT_PAIRS["wint8_afp16"].config(), {"*output_quantizer": {"axis": 0}})


def test_allowed_keys():
    assert set(ALLOWED_KEYS) == {WEIGHT_KEY, INPUT_KEY, "default"}


@pytest.mark.parametrize("value", [5, "axis=0", [("axis", 0)], None, 1.5])
def test_non_mapping_value_raises(value):
    with pytest.raises(OverlayError, match=r"\*weight_quantizer"):
        apply_overlay(QUANT_PAIRS["wint8_afp16"].config(), {WEIGHT_KEY: value})


def test_non_mapping_overlay_raises():
    with pytest.raises(OverlayError, match="overlay must be a mapping"):
        normalize_overlay([(WEIGHT_KEY, {"axis": 0})])


def test_non_mapping_block_sizes_raises():
    with pytest.raises(OverlayError, match="block_sizes"):
        apply_overlay(QUANT_PAIRS["wint8_afp16"].config(), {WEIGHT_KEY: {"block_sizes": 64}})


@pytest.mark.parametrize("key", ["last", "1.5", True, -1.0])
def test_bad_block_size_key_raises(key):
    with pytest.raises(OverlayError):
        normalize_block_sizes({key: 64})


def test_base_without_quant_cfg_list_raises():
    with pytest.raises(OverlayError, match="quant_cfg"):
        apply_overlay({"quant_cfg": {"*": {"enable": False}}}, {WEIGHT_KEY: {"axis": 0}})


# --- rule 4: block_sizes merged, other attributes replaced ---------------------------------------------------
def test_block_sizes_merge_keeps_nvfp4_special_keys():
    out, _ = apply_overlay(QUANT_PAIRS["wfp4_afp16"].config(), GRANULARITIES["w_group64"].overrides())
    cfg = _cfg_of(out, WEIGHT_KEY)
    assert cfg["block_sizes"] == {-1: 64, "type": "dynamic", "scale_bits": (4, 3)}
    assert cfg["num_bits"] == (2, 1)
    assert cfg["effective_bits"] == 4.5


def test_other_attributes_replaced_key_by_key():
    out, _ = apply_overlay(QUANT_PAIRS["wint8_aint8"].config(), {INPUT_KEY: {"type": "dynamic"}})
    assert _cfg_of(out, INPUT_KEY) == {"num_bits": 8, "axis": None, "type": "dynamic"}


def test_per_token_dynamic_overlay_on_int8_input():
    out, warnings = apply_overlay(QUANT_PAIRS["wint8_aint8"].config(), GRANULARITIES["a_per_token_dynamic"].overrides())
    assert warnings == []
    assert _cfg_of(out, INPUT_KEY) == {"num_bits": 8, "type": "dynamic", "block_sizes": {-1: None}}
    assert _cfg_of(out, WEIGHT_KEY) == {"num_bits": 8, "axis": 0}  # untouched


def test_block_sizes_none_override_clears_blocks():
    out, _ = apply_overlay(QUANT_PAIRS["wint4_afp16"].config(), {WEIGHT_KEY: {"block_sizes": None}})
    assert _cfg_of(out, WEIGHT_KEY) == {"num_bits": 4, "block_sizes": None}


# --- rule 5: YAML/JSON string keys ---------------------------------------------------------------------------
def test_string_and_int_block_keys_give_identical_results():
    base = QUANT_PAIRS["wint4_afp16"].config()
    a, _ = apply_overlay(base, {WEIGHT_KEY: {"block_sizes": {"-1": 64}}})
    b, _ = apply_overlay(base, {WEIGHT_KEY: {"block_sizes": {-1: 64}}})
    c, _ = apply_overlay(base, {WEIGHT_KEY: {"block_sizes": {" -1 ": 64}}})
    assert a == b == c
    assert canonical_json(a) == canonical_json(b) == canonical_json(c)
    assert list(_cfg_of(a, WEIGHT_KEY)["block_sizes"]) == [-1, "type"]


# --- rule 6: SequentialQuantizer (list-valued cfg) -----------------------------------------------------------
def _sequential_base() -> dict:
    return {
        "quant_cfg": [
            {"quantizer_name": "*", "enable": False},
            {
                "quantizer_name": WEIGHT_KEY,
                "cfg": [
                    {"num_bits": 4, "block_sizes": {-1: 128, "type": "static"}, "enable": True},
                    {"num_bits": (4, 3), "axis": None, "enable": True},
                ],
            },
            {"quantizer_name": INPUT_KEY, "cfg": {"num_bits": (4, 3), "axis": None}},
        ],
        "algorithm": "awq_lite",
    }


def test_list_cfg_gets_overlay_on_each_element():
    base = _sequential_base()
    before = copy.deepcopy(base)
    out, warnings = apply_overlay(base, {WEIGHT_KEY: {"block_sizes": {-1: 64}}})
    assert warnings == []
    assert _cfg_of(out, WEIGHT_KEY) == [
        {"num_bits": 4, "block_sizes": {-1: 64, "type": "static"}, "enable": True},
        {"num_bits": (4, 3), "block_sizes": {-1: 64}, "enable": True},
    ]
    out, _ = apply_overlay(base, {WEIGHT_KEY: {"axis": 0}})
    assert _cfg_of(out, WEIGHT_KEY) == [
        {"num_bits": 4, "axis": 0, "enable": True},
        {"num_bits": (4, 3), "axis": 0, "enable": True},
    ]
    assert base == before


def test_empty_list_cfg_raises():
    base = {"quant_cfg": [{"quantizer_name": WEIGHT_KEY, "cfg": []}]}
    # an empty list is falsy but not None: the engine treats the entry as enabled and refuses it
    with pytest.raises(OverlayError, match="empty list"):
        apply_overlay(base, {WEIGHT_KEY: {"axis": 0}})


# --- rule 7: overlays on disabled quantizers -----------------------------------------------------------------
@pytest.mark.parametrize(
    "pair, gran",
    [
        ("wint8_afp16", "a_per_token_dynamic"),  # explicit `*input_quantizer: enable False`
        ("wfp4_afp16", "a_per_token_dynamic"),  # no input entry at all (the leading "*" disables it)
        ("wfp4_afp16", "a_per_tensor_static"),
        ("wint4_afp16", "a_per_tensor_static"),
    ],
)
def test_overlay_on_disabled_input_warns_and_changes_nothing(pair, gran):
    base = QUANT_PAIRS[pair].config()
    out, warnings = apply_overlay(base, GRANULARITIES[gran].overrides())
    assert out == base
    assert len(warnings) == 1
    assert INPUT_KEY in warnings[0]
    assert "does nothing" in warnings[0]


def test_wfp4_afp16_has_no_input_entry():
    cfg = QUANT_PAIRS["wfp4_afp16"].config()
    assert not any(e.get("quantizer_name") == INPUT_KEY for e in cfg["quant_cfg"])


def test_recipe_overlay_on_weight_only_pair_applies_weight_part_and_warns_for_input():
    base = QUANT_PAIRS["wint4_afp16"].config()
    out, warnings = apply_overlay(base, GRANULARITIES["recipe_match_channel_token"].overrides())
    assert _cfg_of(out, WEIGHT_KEY) == {"num_bits": 4, "axis": 0}
    assert _cfg_of(out, INPUT_KEY) is None  # still the disabled entry
    assert [w for w in warnings if INPUT_KEY in w] == warnings and len(warnings) == 1


def test_overlay_on_default_entry_warns_for_catalogue_pairs():
    base = QUANT_PAIRS["wint8_aint8"].config()
    out, warnings = apply_overlay(base, {"default": {"num_bits": 4}})
    assert out == base
    assert len(warnings) == 1 and "default" in warnings[0]


def test_overlay_on_enabled_default_entry_applies():
    base = {"quant_cfg": [{"quantizer_name": "*", "cfg": {"num_bits": 8, "axis": None}}]}
    out, warnings = apply_overlay(base, {"default": {"num_bits": 4}})
    assert warnings == []
    assert out["quant_cfg"][0]["cfg"] == {"num_bits": 4, "axis": None}


def test_parent_class_entries_are_not_touched():
    base = QUANT_PAIRS["wint8_aint8"].config()
    base["quant_cfg"].append({"quantizer_name": WEIGHT_KEY, "parent_class": "nn.Linear", "cfg": {"num_bits": 8}})
    out, _ = apply_overlay(base, {WEIGHT_KEY: {"num_bits": 4}})
    assert out["quant_cfg"][-1] == {"quantizer_name": WEIGHT_KEY, "parent_class": "nn.Linear", "cfg": {"num_bits": 8}}


# --- determinism ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("gran", sorted(GRANULARITIES))
@pytest.mark.parametrize("pair", sorted(QUANT_PAIRS))
def test_same_inputs_give_byte_identical_canonical_json(pair, gran):
    a, wa = apply_overlay(QUANT_PAIRS[pair].config(), GRANULARITIES[gran].overrides())
    b, wb = apply_overlay(QUANT_PAIRS[pair].config(), GRANULARITIES[gran].overrides())
    assert canonical_json(a) == canonical_json(b)
    assert canonical_json(a).encode() == canonical_json(b).encode()
    assert wa == wb


def test_canonical_json_ignores_key_order():
    a = {"quant_cfg": [{"quantizer_name": WEIGHT_KEY, "cfg": {"num_bits": 8, "axis": 0}}], "algorithm": "max"}
    b = {"algorithm": "max", "quant_cfg": [{"cfg": {"axis": 0, "num_bits": 8}, "quantizer_name": WEIGHT_KEY}]}
    assert canonical_json(a) == canonical_json(b)
    assert " " not in canonical_json(a)


@pytest.mark.parametrize("gran", sorted(GRANULARITIES))
@pytest.mark.parametrize("pair", sorted(QUANT_PAIRS))
def test_jsonable_round_trip(pair, gran):
    import json

    cfg, _ = apply_overlay(QUANT_PAIRS[pair].config(), GRANULARITIES[gran].overrides())
    assert from_jsonable(json.loads(json.dumps(to_jsonable(cfg)))) == cfg


# --- property test -------------------------------------------------------------------------------------------
_block_key = st.sampled_from([-1, -2, 0, 1, "-1", "-2", "0"])
_block_value = st.one_of(st.none(), st.sampled_from([16, 32, 64, 128]))
_block_sizes = st.one_of(
    st.none(),
    st.dictionaries(_block_key, _block_value, max_size=2).flatmap(
        lambda d: st.fixed_dictionaries(
            {},
            optional={
                "type": st.sampled_from(["static", "dynamic"]),
                "scale_bits": st.sampled_from([(4, 3), [4, 3], (8, 0)]),
                "scale_block_sizes": st.dictionaries(_block_key, st.sampled_from([16, 32]), max_size=1),
            },
        ).map(lambda special: {**d, **special})
    ),
)
_attrs = st.fixed_dictionaries(
    {},
    optional={
        "axis": st.sampled_from([None, 0, 1, -1]),
        "block_sizes": _block_sizes,
        "num_bits": st.sampled_from([4, 8, (4, 3), [2, 1], (2, 1)]),
        "type": st.sampled_from(["static", "dynamic"]),
        "effective_bits": st.sampled_from([4.5, 8.0]),
        "enable": st.booleans(),
        "fake_quant": st.booleans(),
    },
)
_overlays = st.dictionaries(st.sampled_from(list(ALLOWED_KEYS)), _attrs, max_size=3)


def _all_attrs(config: dict):
    for entry in config["quant_cfg"]:
        cfg = entry.get("cfg")
        for attrs in cfg if isinstance(cfg, list) else [cfg] if cfg is not None else []:
            yield attrs


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(pair=st.sampled_from(sorted(QUANT_PAIRS) + ["<sequential>"]), overlay=_overlays)
def test_property_never_mutates_and_never_sets_axis_with_block_sizes(pair, overlay):
    base = _sequential_base() if pair == "<sequential>" else QUANT_PAIRS[pair].config()
    base_before = copy.deepcopy(base)
    overlay_before = copy.deepcopy(overlay)
    try:
        out, warnings = apply_overlay(base, overlay)
    except OverlayError as exc:
        # the only way a valid base fails: one override sets both exclusive attributes
        assert any("axis" in a and "block_sizes" in a for a in overlay.values()), str(exc)
    else:
        for attrs in _all_attrs(out):
            assert not (attrs.get("axis") is not None and attrs.get("block_sizes") is not None), attrs
        assert isinstance(warnings, list)
        assert canonical_json(out) == canonical_json(apply_overlay(base, overlay)[0])
    assert base == base_before
    assert overlay == overlay_before
