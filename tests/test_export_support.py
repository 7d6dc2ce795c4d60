"""Plan-time exportability (export_support.py): the rules on hand-made shapes, the plan / dry-run / row fields,
and reports that never recommend a cell that cannot be exported. Pure: no model is loaded here
(tests/test_export_support_run.py checks the flags against the real exporter)."""

from __future__ import annotations

import copy

import pytest

from quantsweep.catalogue import GRANULARITIES, QUANT_PAIRS
from quantsweep.errors import InputError
from quantsweep.export_support import config_exportability, shared_input_layers
from quantsweep.model_shapes import Linear, ModelShapes, decoder_linears
from quantsweep.overlay import apply_overlay
from quantsweep.reports.frontier import build_frontier
from quantsweep.reports.summary_io import validate_row

# SmolLM2-135M's shapes (its config.json): 576-wide inputs, MLP 1536, 30 layers, 9 heads of 64, 3 KV heads
SMOLLM2 = ModelShapes(decoder_linears({
    "model_type": "llama", "hidden_size": 576, "intermediate_size": 1536, "num_hidden_layers": 30,
    "num_attention_heads": 9, "num_key_value_heads": 3, "head_dim": 64, "vocab_size": 49152}), "config.json")


def verdict(pair: str, gran: str, shapes: ModelShapes | None = SMOLLM2, **kw):
    config, _ = apply_overlay(QUANT_PAIRS[pair].config(), GRANULARITIES[gran].overrides())
    return config_exportability(config, shapes, **kw)


def test_int4_group128_does_not_pack_smollm2_but_group64_does():
    v = verdict("wint4_afp16", "default")
    # q/k/v/o/gate/up and lm_head read 576 inputs (not a multiple of 128); only down_proj's 1536 is
    assert v.exportable is False and v.quant_algo == "W4A16_AWQ"
    assert v.reason == ("W4A16_AWQ: 181 of 211 layers cannot be packed (model.layers.0.self_attn.q_proj: input width "
                        "576 is not a multiple of the weight block 128)")
    assert verdict("wint4_afp16", "w_group64").exportable is True
    assert verdict("wint4_afp16", "w_group128").exportable is False
    # a recipe that quantizes only down_proj layers packs: export's own check narrows to the chosen layers
    downs = [x.name for x in SMOLLM2.linears if x.name.endswith("down_proj")]
    assert verdict("wint4_afp16", "default", quantized=downs).exportable is True
    # disabled_layers keeps the 576-wide layers at 16 bits: nothing left that cannot pack
    assert verdict("wint4_afp16", "default", disabled=["*proj", "lm_head"]).exportable is True
    assert verdict("wint4_afp16", "default", disabled=["*attn*", "lm_head"]).exportable is False


def test_int4_needs_an_even_number_of_output_rows():
    odd = ModelShapes((Linear("model.layers.0.mlp.down_proj", 63, 128),), "hand-made")
    v = verdict("wint4_afp16", "w_group64", odd)
    assert v.exportable is False and "63 output rows (INT4 packs two rows per byte" in v.reason
    even = ModelShapes((Linear("model.layers.0.mlp.down_proj", 64, 128),), "hand-made")
    assert verdict("wint4_afp16", "w_group64", even).exportable is True


def test_shape_free_rules_do_not_need_shapes_and_shape_rules_say_unknown():
    assert verdict("wint8_afp16", "default", None).exportable is True  # per-channel INT8: any shape
    assert verdict("wint8_afp16", "w_group64", None).exportable is False  # never, whatever the shapes
    unknown = verdict("wint4_afp16", "w_group64", None)
    assert unknown.exportable is None and unknown.reason == "the model's layer shapes could not be read at plan time"


@pytest.mark.parametrize("pair,gran,algo,fragment", [
    ("wint8_afp16", "default", "W8A16", None),
    ("wint8_aint8", "default", "W8A8_SQ_PER_CHANNEL", None),
    ("wfp8_afp8", "default", "FP8", None),
    ("wfp8_afp8", "recipe_match_channel_token", "FP8_PER_CHANNEL_PER_TOKEN", None),
    ("wfp4_afp16", "default", "W4A16_NVFP4", None),
    ("wfp4_afp8", "default", "W4A8_NVFP4_FP8", None),
    ("wfp4_afp4", "default", "NVFP4", None),
    ("wint8_afp16", "w_group64", None, "INT8 weights (int8 group64 static) export only with one scale per output"),
    ("wint8_afp16", "w_per_in_channel", None, "INT8 weights (int8 per-in-channel static)"),
    ("wmxint8_amxint8", "default", None, "INT8 weights (int8 group32 dynamic scale=fp-e8m0)"),
    ("wfp8_afp16", "default", None, "labels this weight format FP8, which means static per-tensor FP8 activations, "
                                    "but the cell's activations are unquantized"),
    ("wfp8_afp8", "w_per_out_channel", None, "FP8_PER_CHANNEL_PER_TOKEN, which means per-token dynamic FP8"),
    ("wfp8_afp8", "w_group64", None, "block-wise FP8 weights"),
    ("wfp8_afp8", "w_per_in_channel", None, "per tensor or per output channel"),
    ("wint8_aint8", "a_per_token_dynamic", None, "W8A8_SQ_PER_CHANNEL, which means static per-tensor INT8"),
    ("wint8_afp8", "default", None, "W8A8_SQ_PER_CHANNEL"),
    ("wint4_afp8", "w_group64", None, "W4A16_AWQ, which means unquantized (16-bit) activations"),
    ("wint4_afp16", "w_per_out_channel", None, "INT4 weights (int4 per-out-channel static) export only in blocks"),
    ("wfp4_afp4", "w_group64", None, "NVFP4 weight blocks (64) must equal the input blocks (16)"),
    ("wfp4_afp16", "w_per_tensor", None, "FP4 weights (fp4-e2m1 per-tensor static) export only in blocks"),
    ("wfp4_aint8", "default", None, "NVFP4, which means NVFP4 (blocks of 16)"),
    ("wmxfp8_amxfp8", "default", None, "MXFP8 weights with MX activations"),
    ("wmxfp6_amxfp6", "default", None, "no format with num_bits [3, 2]"),
])
def test_format_rules(pair, gran, algo, fragment):
    v = verdict(pair, gran)
    assert v.exportable is (fragment is None), v
    if fragment is None:
        assert v.quant_algo == algo and v.reason is None
    else:
        assert fragment in v.reason and "\n" not in v.reason


def test_awq_and_smoothquant_on_shared_input_layers_are_left_to_the_export_check():
    # the exporter re-smooths q/k/v and gate/up with one averaged scale; export judges the reloaded checkpoint
    assert verdict("wint8_aint8_sq", "default").exportable is True
    assert verdict("wint4_afp16_awq", "w_group64").exportable is True
    assert [x.name for x in shared_input_layers([x for x in SMOLLM2.linears if x.name.startswith("model.layers.0.")])
            ] == ["model.layers.0.self_attn.q_proj", "model.layers.0.self_attn.k_proj",
                  "model.layers.0.self_attn.v_proj", "model.layers.0.mlp.gate_proj", "model.layers.0.mlp.up_proj"]


def test_the_plan_carries_the_flag_into_dry_run(tmp_path):
    from pipeline_helpers import TINY_MATRIX, write_matrix

    from quantsweep.dry_run import build_dry_run, export_notes

    data = copy.deepcopy(TINY_MATRIX)
    data["axes"] = {"quant_pairs": ["wint8_afp16", "wint4_afp16"], "granularities": ["default", "w_group64"],
                    "dataset_sizes": ["a"]}
    doc = build_dry_run(write_matrix(tmp_path, data))
    cells = {(c["pair"], c["granularity"]): c for c in doc["cells"]}
    assert {k: c["exportable"] for k, c in cells.items()} == {
        ("wint8_afp16", "default"): True, ("wint8_afp16", "w_group64"): False,
        ("wint4_afp16", "default"): False, ("wint4_afp16", "w_group64"): True}
    assert cells[("wint4_afp16", "default")]["export_reason"] == (
        "W4A16_AWQ: 13 of 15 layers cannot be packed (model.layers.0.self_attn.q_proj: input width 64 is not a "
        "multiple of the weight block 128)")
    assert cells[("wint8_afp16", "default")]["export_format"] == "W8A16"
    notes = export_notes(doc["cells"])
    assert len(notes) == 2 and notes[0].startswith("not exportable: wint8_afp16/w_group64: INT8 weights")


def _row(**kw):
    row = {"key": "a/b/c", "status": "ok"}
    row.update(kw)
    return row


def test_row_validation_of_the_flag():
    validate_row(_row(), "s.json", "rows[0]")  # a summary written before the flag: readable, unknown
    validate_row(_row(exportable=True, export_reason=None, export_format="W8A16"), "s.json", "rows[0]")
    with pytest.raises(InputError, match=r"^s.json: rows\[0\].exportable: expected true, false or null, got str 'yes'"):
        validate_row(_row(exportable="yes"), "s.json", "rows[0]")
    with pytest.raises(InputError, match=r"^s.json: rows\[0\].export_reason: missing: a row that is not exportable"):
        validate_row(_row(exportable=False), "s.json", "rows[0]")
    with pytest.raises(InputError, match=r"rows\[0\].export_reason"):
        validate_row(_row(exportable=False, export_reason=["x"]), "s.json", "rows[0]")


def _cell(key, bits, kl, exportable=None, reason=None):
    pair, gran, size = key.split("/")
    return {"key": key, "cell_id": key, "status": "ok", "valid": True, "pair": pair, "granularity": "g",
            "dataset_size": "s", "model": "m", "achieved_bits": bits, "quality": {"kl_mean": kl},
            "exportable": exportable, "export_reason": reason}


def test_reports_never_recommend_a_cell_that_cannot_be_exported():
    rows = [_cell("a/g/s", 16.0, 0.0, True), _cell("b/g/s", 8.0, 0.01, True),
            _cell("c/g/s", 4.0, 0.02, False, "W4A16_AWQ: 13 of 15 layers cannot be packed"),
            _cell("d/g/s", 5.0, 0.03, None)]  # unknown (an older summary): may be recommended
    view = build_frontier(rows, "kl_mean", 0.05)
    g = view["groups"][0]
    assert (g["minimum_viable"], g["best_value"]) == ("d/g/s", "b/g/s")
    assert g["skipped_not_exportable"] == [{"key": "c/g/s", "reason": "W4A16_AWQ: 13 of 15 layers cannot be packed"}]
    assert g["reason"] == "fewest achieved bits among exportable cells with kl_mean <= 0.05"
    assert g["recommendation"] == (
        "Smallest that meets quality: d/g/s (5.000 bits, kl_mean 0.03). Best value: b/g/s (8.000 bits, kl_mean 0.01). "
        "Not recommended although it meets quality: c/g/s (4.000 bits, kl_mean 0.02): not exportable (W4A16_AWQ: 13 "
        "of 15 layers cannot be packed).")
    points = {p["key"]: p for p in view["points"]}
    assert points["c/g/s"]["roles"] == [] and points["c/g/s"]["on_frontier"] is True
    assert points["c/g/s"]["exportable"] is False
    # the same rows without the flag (a summary from before it): c is recommended, nothing is skipped
    plain = build_frontier([{**r, "exportable": None} for r in rows], "kl_mean", 0.05)["groups"][0]
    assert plain["minimum_viable"] == "c/g/s" and plain["skipped_not_exportable"] == []
    assert plain["reason"] == "fewest achieved bits with kl_mean <= 0.05"
    # when only non-exportable cells meet quality: no recommendation, and the report says why
    both = build_frontier([_cell("a/g/s", 16.0, 0.2, True), rows[2]], "kl_mean", 0.05)["groups"][0]
    assert both["minimum_viable"] is None and both["reason"] == "no exportable shown cell met kl_mean <= 0.05"
    assert both["recommendation"].startswith("No exportable cell met the limit. No cell met kl_mean <= 0.05; closest: "
                                             "a/g/s (16.000 bits, kl_mean 0.2)")
    assert "Not recommended although it meets quality: c/g/s (4.000 bits, kl_mean 0.02): not exportable" in \
        both["recommendation"]
