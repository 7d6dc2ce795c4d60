"""Resolve `--model SOURCE` to the safetensors files that `quantsweep weights` reads tensor by tensor.

Accepted forms (the model sources of a matrix, written as one string):

- ``embedded``: the embedded SmolLM2-135M-Instruct, through its cached Hugging Face folder
  (`quantsweep.engine.models.embedded_model_folder`, converted from the packaged GGUF on first use);
- ``hf:PATH`` or a plain folder path: a Hugging Face folder with ``*.safetensors`` shards (the shard list comes
  from ``model.safetensors.index.json`` when present, else every ``*.safetensors`` file in the folder);
- a plain path to one ``.safetensors`` file (``config.json`` next to it is used when present);
- ``synthetic:PRESET``: a synthetic preset (`quantsweep.presets`) is built with its fixed seed, saved to a
  temporary folder as safetensors, read, and the folder is removed afterwards (presets are small);
- ``gguf:PATH`` or a ``.gguf`` path: refused with an InputError that says how to convert it, because a GGUF file
  cannot be read tensor by tensor as float weights without dequantizing the whole model.

Every safetensors file is checked here before anything is planned or written: its header by the pure checks of
inputs/safetensors_files.py (a truncated or damaged file is named with what is wrong), then opened once by safetensors
itself, whose own refusal becomes the same kind of `--model` input error.
"""

from __future__ import annotations

import re
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import InputError
from ..inputs.hf_folders import read_model_config
from ..inputs.load_errors import model_load_errors
from ..inputs.safetensors_files import check_safetensors_file, safetensors_shards

INDEX_FILE = "model.safetensors.index.json"
LABEL = "--model"


@dataclass
class ModelSource:
    """Where the tensors are: `files` are absolute safetensors paths, shown relative to `root`."""

    spec: str  # the --model string as given
    kind: str  # embedded | hf | file | synthetic
    name: str  # display name (used for the default output folder)
    root: Path
    files: list[Path]
    config: dict[str, Any] | None = None  # config.json, when there is one
    notes: list[str] = field(default_factory=list)

    @property
    def model_type(self) -> str | None:
        cfg = self.config or {}
        return cfg.get("model_type")

    def relative(self, f: Path) -> str:
        try:
            return str(f.relative_to(self.root))
        except ValueError:
            return str(f)

    def to_dict(self) -> dict[str, Any]:
        return {
            "spec": self.spec,
            "kind": self.kind,
            "name": self.name,
            "root": str(self.root),
            "files": [self.relative(f) for f in self.files],
            "model_type": self.model_type,
            "notes": list(self.notes),
        }


def _safe_name(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("._-")[:64] or "model"


def _read_config(folder: Path) -> dict[str, Any] | None:
    """config.json when the folder has one (a JSON object, or an input error naming it)."""
    return read_model_config(folder, LABEL, required=False)


def _opened(files: list[Path]) -> list[Path]:
    """Open every file once with safetensors itself (its header only), so that what it refuses beyond the pure
    header checks is an input error here rather than a failure in the middle of the plan."""
    from safetensors import safe_open

    for f in files:
        with model_load_errors(LABEL, f, "safetensors cannot open it"), safe_open(str(f), framework="numpy") as st:
            st.keys()
    return files


def folder_shards(folder: Path) -> list[Path]:
    """The safetensors shards of a Hugging Face folder, in index order (sorted, deduplicated), headers checked:
    the index's shards (inside the folder, every tensor where the index says) or every ``*.safetensors`` file."""
    return _opened([h.path for h in safetensors_shards(folder, LABEL)])


def _gguf_error(path: str) -> InputError:
    return InputError(
        f"--model: {path} is a GGUF file; `quantsweep weights` reads safetensors tensor by tensor and does not "
        'dequantize GGUF. Convert it once to a Hugging Face folder (python -c "from transformers import '
        "AutoModelForCausalLM as M; M.from_pretrained('DIR', gguf_file='FILE.gguf').save_pretrained('OUT')\") and "
        "pass --model OUT; the embedded SmolLM2 GGUF is available as --model embedded."
    )


def _from_folder(spec: str, folder: Path, kind: str, name: str | None = None) -> ModelSource:
    if not folder.is_dir():
        raise InputError(f"{LABEL}: {folder} is not a folder")
    return ModelSource(
        spec=spec,
        kind=kind,
        name=name or _safe_name(folder.resolve().name),
        root=folder.resolve(),
        files=[f.resolve() for f in folder_shards(folder)],
        config=_read_config(folder),
    )


def _synthetic_folder(preset: str, workdir: Path) -> Path:
    """Build the synthetic preset (fixed seed 0) on the CPU and save it as a Hugging Face folder."""
    from ..presets import SYNTHETIC_PRESETS

    if preset not in SYNTHETIC_PRESETS:
        raise InputError(f"--model: unknown synthetic preset {preset!r}; known: {', '.join(sorted(SYNTHETIC_PRESETS))}")
    from ..engine.models import load_model
    from ..schema import ModelSpec

    loaded = load_model(ModelSpec(source="synthetic", preset=preset, device="cpu", dtype="float32"))
    loaded.model.save_pretrained(workdir, safe_serialization=True)
    return workdir


@contextmanager
def open_source(spec: str, progress: Any = None) -> Iterator[ModelSource]:
    """Resolve `spec`; a synthetic model's temporary folder is removed when the block ends."""
    text = (spec or "").strip()
    if not text:
        raise InputError("--model: empty model source")
    if text == "embedded":
        from ..engine.models import embedded_model_folder

        folder = embedded_model_folder(progress)
        yield _from_folder(text, folder, "embedded", "smollm2-135m-instruct")
        return
    if text.startswith("synthetic:"):
        preset = text.split(":", 1)[1]
        tmp = Path(tempfile.mkdtemp(prefix="quantsweep-weights-"))
        try:
            folder = _synthetic_folder(preset, tmp)
            src = _from_folder(text, folder, "synthetic", _safe_name(f"synthetic-{preset}"))
            src.notes.append("built from the synthetic preset with seed 0 and saved to a temporary folder")
            yield src
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return
    kind_hint = None
    if text.startswith(("hf:", "gguf:")):
        kind_hint, text = text.split(":", 1)
    path = Path(text).expanduser()
    if kind_hint == "gguf" or text.endswith(".gguf"):
        raise _gguf_error(text)
    if not path.exists():
        raise InputError(
            f"--model: {text} does not exist (give a Hugging Face folder, a .safetensors file, "
            "'embedded' or 'synthetic:PRESET')"
        )
    if path.is_dir():
        yield _from_folder(spec, path, "hf")
        return
    if kind_hint == "hf":
        raise InputError(f"--model: hf:{text} is a file, not a Hugging Face folder")
    if path.suffix != ".safetensors":
        raise InputError(f"--model: {text} is neither a folder nor a .safetensors file")
    check_safetensors_file(path, LABEL)
    _opened([path])
    root = path.resolve().parent
    stem = path.stem if path.stem not in ("model", "weights") else root.name
    yield ModelSource(
        spec=spec, kind="file", name=_safe_name(stem), root=root, files=[path.resolve()], config=_read_config(root)
    )
