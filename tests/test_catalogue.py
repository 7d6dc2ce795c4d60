"""The catalogue (quantsweep.catalogue) as plain data; tests/test_catalogue_modelopt.py checks it against ModelOpt."""

from __future__ import annotations

import itertools
import subprocess
import sys

import pytest

from quantsweep.catalogue import (
    CORE_PAIR_NAMES,
    GRANULARITIES,
    INPUT_KEY,
    QUANT_PAIRS,
    WEIGHT_KEY,
    compose_config,
    default_disabled_entries,
)
from quantsweep.quant_summary import calibration_method, describe_quantizer, format_bits, quantizer_summary

EXPECTED_CORE = {f"w{w}_a{a}" for w, a in itertools.product(("fp4", "fp8", "int4", "int8"), ("fp16", "fp8", "int4", "int8"))}
EXPECTED_EXTRAS = {
    "wfp4_afp4", "wint4_afp16_awq", "wint8_aint8_sq", "wmxfp8_amxfp8", "wmxfp6_amxfp6", "wmxfp4_amxfp4", "wmxint8_amxint8",
}
EXPECTED_GRANULARITIES = {
    "default",
    "w_per_tensor",
    "w_per_out_channel",
    "w_per_in_channel",
    "w_group64",
    "w_group128",
    "a_per_token_dynamic",
    "a_per_tensor_static",
    "recipe_match_channel_token",
}


def test_exactly_16_core_pairs():
    assert len(EXPECTED_CORE) == 16
    assert len(CORE_PAIR_NAMES) == 16
    assert set(CORE_PAIR_NAMES) == EXPECTED_CORE
    assert EXPECTED_CORE <= set(QUANT_PAIRS)


def test_catalogue_is_core_plus_extras():
    assert set(QUANT_PAIRS) == EXPECTED_CORE | EXPECTED_EXTRAS
    assert {n for n, p in QUANT_PAIRS.items() if p.extra} == EXPECTED_EXTRAS
    assert not any(QUANT_PAIRS[n].extra for n in CORE_PAIR_NAMES)


@pytest.mark.parametrize("name", sorted(QUANT_PAIRS))
def test_pair_name_matches_its_formats(name):
    p = QUANT_PAIRS[name]
    assert p.name == name
    assert name.startswith(f"w{p.weight}_a{p.activation}")
    assert p.to_dict()["name"] == name


@pytest.mark.parametrize("name", sorted(QUANT_PAIRS))
def test_needs_gpu_exactly_for_nvfp4_and_mx(name):
    assert QUANT_PAIRS[name].needs_gpu is (QUANT_PAIRS[name].weight == "fp4" or name.startswith("wmx"))


@pytest.mark.parametrize("name", sorted(n for n, p in QUANT_PAIRS.items() if p.activation == "fp16"))
def test_weight_only_pairs_have_no_enabled_input_quantizer(name):
    summary = quantizer_summary(QUANT_PAIRS[name].config())
    assert summary[INPUT_KEY]["enabled"] is False
    assert summary[INPUT_KEY]["attributes"] == []
    assert summary[INPUT_KEY]["description"] == "disabled"
    assert summary[WEIGHT_KEY]["enabled"] is True


@pytest.mark.parametrize("name", sorted(n for n, p in QUANT_PAIRS.items() if p.activation != "fp16"))
def test_weight_activation_pairs_enable_both_quantizers(name):
    summary = quantizer_summary(QUANT_PAIRS[name].config())
    assert summary[INPUT_KEY]["enabled"] is True
    assert summary[WEIGHT_KEY]["enabled"] is True


@pytest.mark.parametrize("name", sorted(QUANT_PAIRS))
def test_config_returns_fresh_copies(name):
    p = QUANT_PAIRS[name]
    first = p.config()
    pristine = p.config()
    first["quant_cfg"][1]["cfg"]["num_bits"] = 99
    first["quant_cfg"].append({"quantizer_name": "*junk*", "enable": False})
    first["algorithm"] = "junk"
    assert p.config() == pristine
    assert p.config() is not p.config()


def test_granularity_overrides_return_fresh_copies():
    g = GRANULARITIES["a_per_token_dynamic"]
    first = g.overrides()
    first[INPUT_KEY]["block_sizes"][-1] = 7
    assert g.overrides() == {INPUT_KEY: {"type": "dynamic", "block_sizes": {-1: None}}}
    # the recipe overlay shares its input part with a_per_token_dynamic in the source: still independent
    rec = GRANULARITIES["recipe_match_channel_token"].overrides()
    rec[INPUT_KEY]["type"] = "static"
    assert GRANULARITIES["a_per_token_dynamic"].overrides()[INPUT_KEY]["type"] == "dynamic"


def test_default_disabled_entries_fresh():
    a = default_disabled_entries()
    a[0]["enable"] = True
    assert default_disabled_entries()[0]["enable"] is False


def test_the_nine_granularities():
    assert set(GRANULARITIES) == EXPECTED_GRANULARITIES
    for name, g in GRANULARITIES.items():
        assert g.name == name
        assert g.description
        assert set(g.overrides()) <= {WEIGHT_KEY, INPUT_KEY}
    assert GRANULARITIES["default"].overrides() == {}


@pytest.mark.parametrize(
    "pair, bits",
    [
        ("wint8_afp16", 8),
        ("wint4_afp16", 4),
        ("wfp8_afp8", 8),
        ("wfp4_afp16", 4.5),
        ("wint8_aint4", 4),  # min over enabled quantizers (ModelOpt's rule)
        ("wfp8_afp16", 8),
        ("wint8_aint8", 8),
        ("wfp4_afp8", 4),  # W4A8_NVFP4_FP8_CFG's 32-block NVFP4 has no effective_bits: E2M1 counts 2+1+1
        ("wfp4_afp4", 4.5),
        ("wint4_aint8", 4),
        ("wint4_afp16_awq", 4),
        ("wint8_aint8_sq", 8),
    ],
)
def test_format_bits(pair, bits):
    assert format_bits(QUANT_PAIRS[pair].config()) == bits


def test_format_bits_rules():
    assert format_bits({"quant_cfg": [{"quantizer_name": "*", "enable": False}]}) == 16.0
    assert format_bits({"quant_cfg": [], "effective_bits": 6.0}) == 6.0
    disabled_cfg = compose_config({"num_bits": 4, "enable": False}, {"num_bits": 8, "axis": None})
    assert format_bits(disabled_cfg) == 8
    seq = {"quant_cfg": [{"quantizer_name": WEIGHT_KEY, "cfg": [{"num_bits": 4}, {"num_bits": (4, 3)}]}]}
    assert format_bits(seq) == 4


@pytest.mark.parametrize(
    "pair, weight, activation",
    [
        ("wint8_afp16", "int8 per-out-channel static", "disabled"),
        ("wint4_afp16", "int4 group128 static", "disabled"),
        ("wfp8_afp8", "fp8-e4m3 per-tensor static", "fp8-e4m3 per-tensor static"),
        ("wfp4_afp16", "fp4-e2m1 group16 dynamic scale=fp8-e4m3", "disabled"),
        ("wint8_aint8", "int8 per-out-channel static", "int8 per-tensor static"),
    ],
)
def test_describe_quantizer(pair, weight, activation):
    cfg = QUANT_PAIRS[pair].config()
    assert describe_quantizer(cfg, WEIGHT_KEY) == weight
    assert describe_quantizer(cfg, INPUT_KEY) == activation


def test_describe_per_token():
    from quantsweep.overlay import apply_overlay

    cfg, _ = apply_overlay(QUANT_PAIRS["wint8_aint8"].config(), GRANULARITIES["a_per_token_dynamic"].overrides())
    assert describe_quantizer(cfg, INPUT_KEY) == "int8 per-token dynamic"


def test_calibration_methods():
    assert calibration_method(QUANT_PAIRS["wint8_afp16"].config()) == "max"
    assert calibration_method(QUANT_PAIRS["wint4_afp16_awq"].config()) == "awq_lite"
    assert calibration_method(QUANT_PAIRS["wint8_aint8_sq"].config()) == "smoothquant"


def test_experimental_flags():
    builtin = {n for n, p in QUANT_PAIRS.items() if p.base_builtin}
    experimental = {n for n, p in QUANT_PAIRS.items() if p.experimental}
    assert not builtin & experimental
    assert "wfp8_afp16" not in experimental  # derived but deployable (FP8 weight-only)
    assert experimental == {
        "wfp4_aint4", "wfp4_aint8", "wfp8_aint4", "wfp8_aint8",
        "wint4_afp8", "wint4_aint4", "wint4_aint8", "wint8_afp8", "wint8_aint4",
    }  # fmt: skip


def test_catalogue_module_imports_no_torch():
    code = (
        "import sys; import quantsweep.catalogue, quantsweep.overlay, quantsweep.quant_summary, "
        "quantsweep.schema, quantsweep.matrix_io, quantsweep.planning, quantsweep.dry_run, quantsweep.cli; "
        "bad = [m for m in ('torch', 'modelopt', 'transformers') if m in sys.modules]; "
        "print(bad); sys.exit(1 if bad else 0)"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
