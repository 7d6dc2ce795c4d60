"""Cheap check of a Hugging Face model folder as `from_pretrained` will read it: config.json and its architecture,
the weights transformers will pick, the tokenizer files. Headers only, never the weights.

Why: a folder without a tokenizer, with a model_type transformers does not know, or with weights it will not find
fails only inside a load that may come after a sweep folder was created, with a message that names neither
`model.path` nor, often, the file. The weights are checked by the module of their format (safetensors_files,
torch_bin_files). What a header cannot tell (garbage tensor values, a tokenizer the tokenizers library rejects,
config values of the wrong type) is turned into the same kind of error where the libraries load the model
(load_errors, used by engine/models.py and weights/sources.py).

Pure Python: nothing here imports torch.
"""

from __future__ import annotations

import re
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .documents import MiB, DocumentError, Limits, read_bytes
from .file_checks import _err, _json_object, _present, _regular_file, _relabel, _short
from .safetensors_files import (
    SafetensorsHeader,
    SAFETENSORS_FILE,
    SAFETENSORS_INDEX,
    _shard_path,
    check_safetensors_file,
    check_safetensors_index,
    read_index,
)
from .torch_bin_files import BIN_FILE, BIN_INDEX, check_torch_bin
from .transformers_names import transformers_architectures

# tokenizer.json of a 256k-token vocabulary is ~35 MB; vocab.json and merges.txt are smaller.
TOKENIZER = Limits(max_bytes=256 * MiB, max_depth=64, max_nodes=20_000_000)

# Tokenizer files transformers' AutoTokenizer loads, and the JSON files next to them it reads when present.
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "spiece.model", "vocab.json", "vocab.txt")
SIDE_JSON = {
    "tokenizer_config.json": "tokenizer config",
    "special_tokens_map.json": "special tokens map",
    "added_tokens.json": "added tokens",
    "generation_config.json": "generation config",
}


@dataclass(frozen=True)
class HfFolderInfo:
    folder: Path
    model_type: str
    config: dict[str, Any]
    weights: list[Path]  # the files transformers will read, in order
    weight_format: str  # safetensors | pytorch
    tensors: int | None  # tensors in the safetensors headers (None for .bin)
    tokenizer: list[str] = field(default_factory=list)  # the tokenizer files found


def read_model_config(folder: Path, label: str, required: bool = True) -> dict[str, Any] | None:
    cfg = folder / "config.json"
    if not _present(cfg):
        if not required:
            return None
        raise _err(
            label,
            folder,
            "is not a Hugging Face model folder: no config.json (a folder written by save_pretrained, or a hub "
            "download, has one)",
        )
    return _json_object(cfg, label, "model config")


def _check_remote_code(folder: Path, cfg_path: Path, auto_map: dict[str, Any], label: str) -> None:
    """Local modules an `auto_map` names (`modeling_x.Class`) must be in the folder; `repo--module.Class` entries
    point at the hub and are left to transformers."""
    for key, ref in auto_map.items():
        for r in ref if isinstance(ref, list) else [ref]:
            if r is None:
                continue
            if not isinstance(r, str) or "." not in r:
                raise _err(label, cfg_path, f"auto_map.{key}: expected 'module.Class', got {_short(r)}")
            if "--" in r:
                continue
            module = r.rsplit(".", 1)[0]
            if not (folder / f"{module.replace('.', '/')}.py").is_file():
                raise _err(label, cfg_path, f"auto_map.{key}: names {r}, but {module}.py is not in {folder}")


def _check_architecture(folder: Path, cfg: dict[str, Any], label: str, trust_remote_code: bool) -> str:
    cfg_path = folder / "config.json"
    model_type = cfg.get("model_type")
    if not isinstance(model_type, str) or not model_type:
        got = "missing" if model_type is None else f"expected a string, got {_short(model_type)}"
        raise _err(label, cfg_path, f'model_type: {got} (transformers picks the architecture by it, e.g. "llama")')
    auto_map = cfg.get("auto_map")
    if auto_map is not None and not isinstance(auto_map, dict):
        raise _err(label, cfg_path, f"auto_map: expected an object, got {_short(auto_map)}")
    if trust_remote_code and auto_map and "AutoModelForCausalLM" in auto_map:
        _check_remote_code(folder, cfg_path, auto_map, label)
        return model_type
    known, causal, ver = transformers_architectures()
    if known is not None and model_type not in known:
        if auto_map and "AutoModelForCausalLM" in auto_map:
            fix = (
                "the folder ships its own modeling code (config.json auto_map): if you trust it, set "
                "model.trust_remote_code: true"
            )
        else:
            fix = "a newer architecture needs a newer transformers (uv add -U transformers); otherwise fix model_type"
        raise _err(
            label, cfg_path, f"model_type: {model_type!r} is not an architecture transformers {ver} knows; {fix}"
        )
    if causal is not None and model_type not in causal:
        raise _err(
            label,
            cfg_path,
            f"model_type: {model_type!r} has no causal language model class in transformers {ver} "
            "(AutoModelForCausalLM cannot load it); quantsweep sweeps causal language models",
        )
    return model_type


def _hf_weights(folder: Path, cfg: dict[str, Any], label: str) -> tuple[str, list[Path], list[SafetensorsHeader]]:
    """The weights transformers will load, in its order of preference, checked: (format, files, their safetensors
    headers — empty for .bin)."""
    explicit = cfg.get("transformers_weights")
    if isinstance(explicit, str):
        target = _shard_path(folder, folder / "config.json", explicit, label, "transformers_weights")
        if explicit.endswith(".safetensors.index.json"):
            headers = check_safetensors_index(target, folder, label)
            return "safetensors", [h.path for h in headers], headers
        return "safetensors", [target], [check_safetensors_file(target, label)]
    single, index = folder / SAFETENSORS_FILE, folder / SAFETENSORS_INDEX
    if single.is_file():
        return "safetensors", [single], [check_safetensors_file(single, label)]
    if index.is_file():
        headers = check_safetensors_index(index, folder, label)
        return "safetensors", [h.path for h in headers], headers
    if (folder / BIN_FILE).is_file():
        check_torch_bin(folder / BIN_FILE, label)
        return "pytorch", [folder / BIN_FILE], []
    if (folder / BIN_INDEX).is_file():
        shards = sorted(set(read_index(folder / BIN_INDEX, folder, label, "PyTorch checkpoint index").values()))
        for s in shards:
            check_torch_bin(s, label)
        return "pytorch", shards, None
    for p in (single, index, folder / BIN_FILE, folder / BIN_INDEX):
        if _present(p):  # a dangling link or a folder under a weights name
            _regular_file(p, label, "weights file")
    other = sorted(p.name for p in folder.iterdir() if p.suffix in (".safetensors", ".bin", ".pt", ".pth", ".gguf"))
    hint = ""
    if any(n.endswith(".gguf") for n in other):
        hint = "; a .gguf file is loaded with `source: gguf` and `path:` the file"
    elif other:
        hint = f"; found {', '.join(other[:3])}, which transformers does not load under those names"
    raise _err(
        label,
        folder,
        f"no weights: expected {SAFETENSORS_FILE}, {SAFETENSORS_INDEX}, {BIN_FILE} or {BIN_INDEX}{hint}",
    )


_LAYER_INDEX = re.compile(r"(?:^|\.)(?:layers|h|blocks|layer)\.(\d+)\.")
_EMBEDDING = re.compile(r"(?:^|\.)(?:embed_tokens|wte|word_embeddings|embed_in)\.weight$")


def _config_int(cfg: dict[str, Any], key: str) -> int | None:
    for scope in (cfg.get("text_config") if isinstance(cfg.get("text_config"), dict) else None, cfg):
        v = (scope or {}).get(key)
        if isinstance(v, int) and not isinstance(v, bool):
            return v
    return None


def _check_config_against_weights(folder: Path, cfg: dict[str, Any], headers: list[SafetensorsHeader],
                                  label: str) -> None:
    """A config that claims far more than the weights hold makes transformers build (and randomly initialise) a
    model of the config's size before noticing the missing tensors: 100,000 layers never finish loading, a
    50M-token vocabulary allocates gigabytes. Compare the two from the headers first."""
    names = {n: shape for h in headers for n, (_dtype, shape) in h.tensors.items()}
    layers = {int(m.group(1)) for n in names if (m := _LAYER_INDEX.search(n))}
    claimed = _config_int(cfg, "num_hidden_layers")
    if layers and claimed is not None and claimed > max(layers) + 1:
        raise _err(label, folder / "config.json", f"num_hidden_layers is {claimed:,}, but the weights hold "
                   f"{max(layers) + 1} layers (0..{max(layers)})")
    vocab = _config_int(cfg, "vocab_size")
    rows = [shape[0] for n, shape in names.items() if _EMBEDDING.search(n) and shape]
    if rows and vocab is not None and vocab > max(rows):
        raise _err(label, folder / "config.json", f"vocab_size is {vocab:,}, but the embedding in the weights has "
                   f"{max(rows):,} rows")


def _check_tokenizer(folder: Path, label: str, trust_remote_code: bool) -> list[str]:
    for name, what in SIDE_JSON.items():
        if _present(folder / name):
            _json_object(folder / name, label, what)
    found = []
    for name in TOKENIZER_FILES:
        p = folder / name
        if not _present(p):
            continue
        if name.endswith(".json"):
            _json_object(p, label, "tokenizer file", TOKENIZER)
        elif _regular_file(p, label, "tokenizer file").st_size == 0:
            raise _err(label, p, "empty tokenizer file")
        found.append(name)
    if _present(folder / "merges.txt"):
        try:
            read_bytes(folder / "merges.txt", TOKENIZER, "tokenizer file").decode("utf-8")
        except DocumentError as exc:
            raise _relabel(label, exc) from None
        except UnicodeDecodeError as exc:
            raise _err(label, folder / "merges.txt", f"not UTF-8 text (invalid byte at offset {exc.start})") from None
        found.append("merges.txt")
    found += sorted(p.name for p in folder.glob("*.tiktoken") if p.is_file())
    if "vocab.json" in found and "merges.txt" not in found and "tokenizer.json" not in found:
        raise _err(label, folder, "vocab.json without merges.txt: a BPE tokenizer needs both (or a tokenizer.json)")
    if found:
        return found
    if trust_remote_code and _present(folder / "tokenizer_config.json"):
        tok_cfg = _json_object(folder / "tokenizer_config.json", label, "tokenizer config")
        if isinstance(tok_cfg.get("auto_map"), dict):
            return ["tokenizer_config.json"]
    raise _err(
        label,
        folder,
        "no tokenizer: expected tokenizer.json, tokenizer.model, or vocab.json with merges.txt (copy the tokenizer "
        "files of the model this folder came from, e.g. tokenizer.save_pretrained(folder))",
    )


def check_hf_folder(path: str | Path, label: str, *, trust_remote_code: bool = False) -> HfFolderInfo:
    """A Hugging Face model folder as `AutoModelForCausalLM.from_pretrained` and `AutoTokenizer.from_pretrained`
    will read it: config.json with an architecture transformers can load as a causal LM, the weights it will pick
    (every safetensors header; a .bin's zip directory), and the tokenizer files."""
    folder = Path(path)
    try:
        st = folder.stat()
    except FileNotFoundError:
        raise _err(label, folder, "is not a Hugging Face model folder: it does not exist") from None
    except OSError as exc:
        raise _err(label, folder, f"cannot read: {exc.strerror or exc}") from None
    if not stat.S_ISDIR(st.st_mode):
        raise _err(
            label, folder, "is not a Hugging Face model folder: it is a file (give the folder holding config.json)"
        )
    cfg = read_model_config(folder, label)
    assert cfg is not None
    model_type = _check_architecture(folder, cfg, label, trust_remote_code)
    fmt, weights, headers = _hf_weights(folder, cfg, label)
    _check_config_against_weights(folder, cfg, headers, label)
    tensors = sum(len(h.tensors) for h in headers) if fmt == "safetensors" else None
    tokenizer = _check_tokenizer(folder, label, trust_remote_code)
    return HfFolderInfo(folder, model_type, cfg, weights, fmt, tensors, tokenizer)
