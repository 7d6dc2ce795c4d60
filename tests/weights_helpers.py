"""Tiny safetensors models written by the `quantsweep weights` tests (dense Llama-shaped and MoE-shaped)."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import save_file

# The seed-003 expert bank (seed-systems.md §2.15): 2 experts of 2x2.
SEED_BANK = [[[-1.0, 0.0], [2.0, 3.0]], [[-1.0, -2.0], [4.0, 0.0]]]

DENSE_LAYERS = 2
DENSE_PROJS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
HIDDEN, KV, INTER, VOCAB = 64, 32, 128, 16


def _randn(gen: torch.Generator, *shape: int) -> torch.Tensor:
    return torch.randn(*shape, generator=gen) * 0.05


def write_dense(folder: Path, *, extra: dict[str, torch.Tensor] | None = None, tied: bool = True) -> Path:
    """A 2-layer Llama-shaped folder: 14 linear weights, an embedding, norms, an int tensor, an unmatched 2-D."""
    folder.mkdir(parents=True, exist_ok=True)
    gen = torch.Generator().manual_seed(0)
    t: dict[str, torch.Tensor] = {"model.embed_tokens.weight": _randn(gen, VOCAB, HIDDEN)}
    shapes = {
        "self_attn.q_proj": (HIDDEN, HIDDEN),
        "self_attn.k_proj": (KV, HIDDEN),
        "self_attn.v_proj": (KV, HIDDEN),
        "self_attn.o_proj": (HIDDEN, HIDDEN),
        "mlp.gate_proj": (INTER, HIDDEN),
        "mlp.up_proj": (INTER, HIDDEN),
        "mlp.down_proj": (HIDDEN, INTER),
    }
    for layer in range(DENSE_LAYERS):
        for name, shape in shapes.items():
            t[f"model.layers.{layer}.{name}.weight"] = _randn(gen, *shape)
        t[f"model.layers.{layer}.input_layernorm.weight"] = torch.ones(HIDDEN)
    t["model.layers.1.mlp.down_proj.weight"] = t["model.layers.1.mlp.down_proj.weight"].to(torch.bfloat16)
    t["model.norm.weight"] = torch.ones(HIDDEN)
    t["model.layers.0.mlp.weird_proj.weight"] = _randn(gen, 4, 8)  # matches no rule: listed, not analysed
    t["model.position_ids"] = torch.arange(8, dtype=torch.int64).reshape(2, 4)  # not a float tensor
    if not tied:
        t["lm_head.weight"] = _randn(gen, VOCAB, HIDDEN)
    t.update(extra or {})
    save_file(t, str(folder / "model.safetensors"), metadata={"format": "pt"})
    (folder / "config.json").write_text(
        json.dumps(
            {
                "model_type": "llama",
                "hidden_size": HIDDEN,
                "num_attention_heads": 4,
                "num_key_value_heads": 2,
                "num_hidden_layers": DENSE_LAYERS,
                "tie_word_embeddings": tied,
            }
        )
    )
    return folder


def write_moe(folder: Path, *, bad_split: bool = False) -> Path:
    """A Qwen-MoE-shaped folder in two shards with an index.

    layer 0: transformers-5 stacked banks (`experts.gate_up_proj` (2, 6, 4) -> gate/up 3x4 each;
             `experts.down_proj` = SEED_BANK (2, 2, 2)); router `mlp.gate.weight` (2, 4).
    layer 1: per-expert 2-D tensors (experts 0 and 1, gate/up/down) and a shared expert (gate/up/down).
    bad_split: layer 2 gets `experts.gate_up_proj` (2, 5, 4), which cannot be cut into two equal halves.
    """
    folder.mkdir(parents=True, exist_ok=True)
    gen = torch.Generator().manual_seed(1)
    a: dict[str, torch.Tensor] = {
        "model.embed_tokens.weight": _randn(gen, 8, 4),
        "model.layers.0.mlp.experts.gate_up_proj": torch.arange(48, dtype=torch.float32).reshape(2, 6, 4) - 20.0,
        "model.layers.0.mlp.experts.down_proj": torch.tensor(SEED_BANK),
        "model.layers.0.mlp.gate.weight": _randn(gen, 2, 4),
        "model.layers.0.post_attention_layernorm.weight": torch.ones(4),
    }
    b: dict[str, torch.Tensor] = {}
    for e in range(2):
        b[f"model.layers.1.mlp.experts.{e}.gate_proj.weight"] = _randn(gen, 3, 4)
        b[f"model.layers.1.mlp.experts.{e}.up_proj.weight"] = _randn(gen, 3, 4)
        b[f"model.layers.1.mlp.experts.{e}.down_proj.weight"] = _randn(gen, 4, 3)
    for p, shape in (("gate_proj", (3, 4)), ("up_proj", (3, 4)), ("down_proj", (4, 3))):
        b[f"model.layers.1.mlp.shared_expert.{p}.weight"] = _randn(gen, *shape)
    b["model.layers.1.mlp.shared_expert_gate.weight"] = _randn(gen, 1, 4)
    if bad_split:
        b["model.layers.2.mlp.experts.gate_up_proj"] = _randn(gen, 2, 5, 4)
    save_file(a, str(folder / "model-00001-of-00002.safetensors"))
    save_file(b, str(folder / "model-00002-of-00002.safetensors"))
    weight_map = {k: "model-00001-of-00002.safetensors" for k in a} | {k: "model-00002-of-00002.safetensors" for k in b}
    (folder / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    (folder / "config.json").write_text(json.dumps({"model_type": "qwen3_moe", "hidden_size": 4, "num_experts": 2}))
    return folder


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def header(path: Path) -> list[str]:
    with open(path, newline="", encoding="utf-8") as fh:
        return next(csv.reader(fh))


def exact_stats(arr: Any) -> dict[str, float]:
    """The reference values of the seed fixture, straight from numpy in float64 over the whole matrix."""
    w = np.asarray(arr, dtype=np.float64)
    a = np.abs(w)
    return {
        "mean": w.mean(),
        "std": w.std(),
        "mean_abs": a.mean(),
        "rms": np.sqrt((w**2).mean()),
        "max_abs": a.max(),
        "p50_abs": np.percentile(a, 50),
        "p99_abs": np.percentile(a, 99),
        "p999_abs": np.percentile(a, 99.9),
    }
