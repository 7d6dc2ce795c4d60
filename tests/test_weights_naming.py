"""Naming rules: default coverage of common architectures, split arithmetic, the rules file format."""

from __future__ import annotations

import json

import pytest

from quantsweep.errors import InputError
from quantsweep.weights.naming import (
    Split,
    SplitError,
    default_rules,
    load_rules,
    plan_split,
    resolve_size,
    rules_from_mapping,
)

R = default_rules()

# name -> (rule, proj, role, layer, expert, kind); `model_type` None unless the case says otherwise
CASES = [
    ("model.layers.3.self_attn.q_proj.weight", "q_proj", "linear", 3, None, "dense"),
    ("model.layers.3.self_attn.k_proj.weight", "k_proj", "linear", 3, None, "dense"),
    ("model.layers.3.self_attn.v_proj.weight", "v_proj", "linear", 3, None, "dense"),
    ("model.layers.3.self_attn.o_proj.weight", "o_proj", "linear", 3, None, "dense"),
    ("model.layers.12.mlp.gate_proj.weight", "gate_proj", "linear", 12, None, "dense"),
    ("model.layers.12.mlp.up_proj.weight", "up_proj", "linear", 12, None, "dense"),
    ("model.layers.12.mlp.down_proj.weight", "down_proj", "linear", 12, None, "dense"),
    ("model.embed_tokens.weight", "embed_tokens", "embedding", None, None, "dense"),
    ("lm_head.weight", "lm_head", "lm_head", None, None, "dense"),
    # Mixtral (w1 = gate, w3 = up, w2 = down) and its router
    ("model.layers.0.block_sparse_moe.experts.7.w1.weight", "gate_proj", "linear", 0, 7, "routed"),
    ("model.layers.0.block_sparse_moe.experts.7.w3.weight", "up_proj", "linear", 0, 7, "routed"),
    ("model.layers.0.block_sparse_moe.experts.7.w2.weight", "down_proj", "linear", 0, 7, "routed"),
    ("model.layers.0.block_sparse_moe.gate.weight", "router", "router", 0, None, "dense"),
    # Qwen-MoE: routed experts, shared expert, its gate, the router
    ("model.layers.5.mlp.experts.63.down_proj.weight", "down_proj", "linear", 5, 63, "routed"),
    ("model.layers.5.mlp.shared_expert.gate_proj.weight", "gate_proj", "linear", 5, None, "shared"),
    ("model.layers.5.mlp.shared_expert_gate.weight", "shared_expert_gate", "router", 5, None, "dense"),
    ("model.layers.5.mlp.gate.weight", "router", "router", 5, None, "dense"),
    # DeepSeek V2/V3: MLA projections, shared experts
    ("model.layers.4.self_attn.q_a_proj.weight", "q_a_proj", "linear", 4, None, "dense"),
    ("model.layers.4.self_attn.q_b_proj.weight", "q_b_proj", "linear", 4, None, "dense"),
    ("model.layers.4.self_attn.kv_a_proj_with_mqa.weight", "kv_a_proj_with_mqa", "linear", 4, None, "dense"),
    ("model.layers.4.self_attn.kv_b_proj.weight", "kv_b_proj", "linear", 4, None, "dense"),
    ("model.layers.4.mlp.shared_experts.up_proj.weight", "up_proj", "linear", 4, None, "shared"),
    ("model.layers.4.mlp.experts.255.gate_proj.weight", "gate_proj", "linear", 4, 255, "routed"),
    # transformers >= 5 stacked banks (Qwen3-MoE, Mixtral, DeepSeek): gate_up is fused
    ("model.layers.2.mlp.experts.gate_up_proj", "gate_up_proj", "linear", 2, None, "dense"),
    ("model.layers.2.mlp.experts.down_proj", "down_proj", "linear", 2, None, "dense"),
]


@pytest.mark.parametrize("name,proj,role,layer,expert,kind", CASES)
def test_default_rules_identify_common_architectures(name, proj, role, layer, expert, kind):
    rule = R.match(name)
    assert rule is not None, name
    assert (rule.proj, rule.role) == (proj, role)
    assert R.layer_of(name) == layer
    assert R.expert_of(name) == (expert, kind)


def test_unknown_and_ignored_names():
    assert R.match("model.layers.0.mlp.weird_proj.weight") is None
    assert R.ignored("model.layers.0.self_attn.q_proj.bias")
    assert R.ignored("model.layers.0.mlp.experts.gate_up_proj_bias")  # GPT-OSS: 2-D but a bias
    assert R.ignored("model.layers.0.mlp.down_proj.weight_scale_inv")  # DeepSeek FP8 block scales
    assert not R.ignored("model.layers.0.mlp.down_proj.weight")


def test_model_type_specific_rules_transpose_stored_in_x_out_banks():
    gpt = R.match("model.layers.0.mlp.experts.gate_up_proj", "gpt_oss")
    assert gpt.name == "gpt_oss_gate_up" and gpt.layout == "in_out" and gpt.split.interleaved
    assert R.match("model.layers.0.mlp.experts.down_proj", "gpt_oss").layout == "in_out"
    assert R.match("model.layers.0.feed_forward.experts.gate_up_proj", "llama4").layout == "in_out"
    generic = R.match("model.layers.0.mlp.experts.gate_up_proj", "qwen3_moe")
    assert generic.name == "fused_gate_up" and generic.layout == "out_in"


def test_equal_split_and_the_seed_fixture_splits():
    parts = plan_split(Split("rows", ("gate_proj", "up_proj"), None), 6, 4)
    assert [(p.proj, p.start, p.stop, p.length) for p in parts] == [("gate_proj", 0, 3, 3), ("up_proj", 3, 6, 3)]
    seed = Split("rows", ("gate_proj", "down_proj"), (3, 3))
    assert [p.length for p in plan_split(seed, 6, 4)] == [3, 3]
    with pytest.raises(SplitError, match=r"sizes \[3, 3\] sum to 6 but rows has length 4"):
        plan_split(seed, 4, 4)
    with pytest.raises(SplitError, match="not divisible into 2 equal parts"):
        plan_split(Split("rows", ("gate_proj", "up_proj"), None), 5, 4)


def test_cols_and_interleaved_splits():
    parts = plan_split(Split("cols", ("a", "b", "c"), (1, 2, 3)), 4, 6)
    assert [(p.axis, p.start, p.stop) for p in parts] == [(1, 0, 1), (1, 1, 3), (1, 3, 6)]
    inter = plan_split(Split("rows", ("gate_proj", "up_proj"), None, interleaved=True), 6, 4)
    assert [(p.start, p.step, p.length) for p in inter] == [(0, 2, 3), (1, 2, 3)]
    assert inter[1].describe() == "rows[1:6:2]"


def test_config_expression_sizes():
    cfg = {"num_attention_heads": 8, "num_key_value_heads": 2, "hidden_size": 256}
    assert resolve_size("num_key_value_heads*head_dim", cfg) == 64  # head_dim derived: 256 / 8
    assert resolve_size("2*num_key_value_heads", cfg) == 4
    qkv = R.match("model.layers.0.self_attn.qkv_proj.weight")
    assert [p.length for p in plan_split(qkv.split, 256 + 64 + 64, 256, cfg)] == [256, 64, 64]
    with pytest.raises(SplitError, match="needs config.json"):
        plan_split(qkv.split, 384, 256, None)
    with pytest.raises(SplitError, match="sum to 384 but rows has length 300"):
        plan_split(qkv.split, 300, 256, cfg)
    vlm = {"text_config": {"num_attention_heads": 4, "num_key_value_heads": 4, "head_dim": 16}, "head_dim": 99}
    assert resolve_size("num_key_value_heads*head_dim", vlm) == 64  # text_config wins


def test_rules_file_yaml_prepends_rules_and_overrides_patterns(tmp_path):
    f = tmp_path / "rules.yaml"
    f.write_text(
        "layer_pattern: '(?:^|\\.)blk\\.(\\d+)\\.'\n"
        "ignore: ['\\.lora_']\n"
        "rules:\n"
        "  - name: packed\n"
        "    pattern: 'w13$'\n"
        "    proj: gate_proj\n"
        "    split: {axis: rows, parts: [gate_proj, down_proj], sizes: [3, 3]}\n"
        "  - name: weird\n"
        "    pattern: 'weird_proj\\.weight$'\n"
        "    proj: weird_proj\n"
    )
    rules = load_rules(f)
    assert rules.source == str(f)
    assert rules.match("blk.3.w13").name == "packed"  # before the default fused_gate_up (which also knows w13)
    assert rules.match("model.layers.0.mlp.weird_proj.weight").proj == "weird_proj"
    assert rules.match("model.layers.0.mlp.down_proj.weight").name == "down_proj"  # defaults still there
    assert rules.layer_of("blk.3.w13") == 3 and rules.layer_of("model.layers.3.x") is None
    assert rules.ignored("a.lora_A.weight") and rules.ignored("x.bias")


def test_rules_file_json_extends_none_uses_only_its_rules(tmp_path):
    f = tmp_path / "rules.json"
    f.write_text(json.dumps({"extends": "none", "rules": [{"name": "only", "pattern": "q_proj", "proj": "q"}]}))
    rules = load_rules(f)
    assert [r.name for r in rules.rules] == ["only"]
    assert rules.match("model.layers.0.mlp.down_proj.weight") is None
    assert rules.ignore == ()


@pytest.mark.parametrize(
    "doc,message",
    [
        ({"rules": [{"name": "x", "pattern": "(", "proj": "p"}]}, r"rules\[0\]\.pattern: .*invalid regular expression"),
        ({"rules": [{"name": "x", "pattern": "a", "proj": "p", "rol": "linear"}]}, r"rules\[0\]\.rol: Extra inputs"),
        ({"rules": [{"name": "x", "pattern": "a", "proj": "p", "role": "head"}]}, r"rules\[0\]\.role"),
        (
            {"rules": [{"name": "x", "pattern": "a", "proj": "p", "split": {"parts": ["a", "b"], "sizes": [1]}}]},
            r"rules\[0\]\.split: 2 parts but 1 sizes",
        ),
        (
            {"rules": [{"name": "x", "pattern": "a", "proj": "p", "split": {"parts": ["a", "b"], "sizes": [0, 1]}}]},
            r"positive integers",
        ),
        (
            {
                "rules": [
                    {"name": "x", "pattern": "a", "proj": "p", "split": {"parts": ["a", "b"], "sizes": ["a+b", 1]}}
                ]
            },
            r"product of integers and config keys",
        ),
        ({"layer_pattern": "(["}, r"layer_pattern: .*invalid regular expression"),
        ({"version": 2}, r"version"),
    ],
)
def test_rules_file_errors_name_the_field(doc, message):
    with pytest.raises(InputError, match=message) as exc:
        rules_from_mapping(doc, "r.yaml")
    assert str(exc.value).startswith("r.yaml: ")


def test_missing_rules_file(tmp_path):
    with pytest.raises(InputError, match="not found"):
        load_rules(tmp_path / "nope.yaml")
