"""Failures only a load can see, turned into the same one-line InputError as the header checks.

Why: what a header cannot tell (garbage tensor values, a tokenizer the tokenizers library rejects, config values
of the wrong type) surfaces where the libraries load the model (engine/models.py, weights/sources.py), as their own
exceptions that name neither the matrix field nor, often, the file; and a tensor the checkpoint lacks is not even
an error there, only a log line while it is initialised at random. `model_load_errors` and `check_loading_info`
make both `<label>: <path>: <what is wrong>`.

Pure Python: nothing here imports torch (it is only looked up in sys.modules, to let running out of memory pass).
"""

from __future__ import annotations

import errno
import re
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from ..errors import InputError


def _load_error_types() -> tuple[type[BaseException], ...]:
    """What transformers, tokenizers, safetensors and gguf were seen to raise on broken model files (config values
    of the wrong type, a tokenizer.json that is JSON but not a tokenizer, a GGUF of an unsupported architecture,
    shapes that disagree with the config, ...). Not a bare `Exception`: an error of our own must still surface as
    the bug it is."""
    types: list[type[BaseException]] = [
        OSError,
        ValueError,
        KeyError,
        IndexError,
        TypeError,
        AttributeError,
        ZeroDivisionError,
        RuntimeError,
    ]
    try:
        from huggingface_hub.errors import StrictDataclassError  # a config value of the wrong type

        types.append(StrictDataclassError)
    except ImportError:  # pragma: no cover - older huggingface_hub
        pass
    try:
        from safetensors import SafetensorError

        types.append(SafetensorError)
    except ImportError:  # pragma: no cover - safetensors is a transformers dependency
        pass
    return tuple(types)


_NOT_INPUT = re.compile(r"out of memory|DefaultCPUAllocator|CUDA|cuDNN|NCCL|device-side", re.IGNORECASE)


def _out_of_memory(exc: BaseException) -> bool:
    """Not the files' fault: running out of (host or device) memory, a device error, or a failed write (an offload
    folder on a full disk). These keep their own exit code."""
    torch = sys.modules.get("torch")
    if torch is not None and isinstance(exc, getattr(torch, "OutOfMemoryError", ())):
        return True
    if isinstance(exc, MemoryError) or (isinstance(exc, RuntimeError) and _NOT_INPUT.search(str(exc))):
        return True
    return isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS, errno.EIO)


def one_line(exc: BaseException, limit: int = 300) -> str:
    """A library's exception as one line: its type and its message with ANSI codes and line breaks removed."""
    text = " ".join(re.sub(r"\x1b\[[0-9;]*m", "", str(exc)).split())
    if len(text) > limit:
        text = text[: limit - 3] + "..."
    name = type(exc).__name__
    return text if name == "Exception" else f"{name}: {text}" if text else name


@contextmanager
def model_load_errors(label: str, path: str | Path, what: str) -> Iterator[None]:
    """Around a library call that loads a model, tokenizer or GGUF from the user's files: the failures those
    libraries raise on broken files become `<label>: <path>: <what>: <reason>` (exit 2). Running out of memory is
    not an input error and passes through, as does anything else (a bug must keep its traceback).

    The tokenizers library raises a plain `Exception` (for a tokenizer.json that parses but is not a tokenizer);
    exactly that class is caught, never its subclasses."""
    errors = _load_error_types()
    try:
        yield
    except InputError:
        raise
    except errors as exc:
        if _out_of_memory(exc):
            raise
        raise InputError(f"{label}: {path}: {what}: {one_line(exc)}") from exc
    except Exception as exc:
        if type(exc) is not Exception:
            raise
        raise InputError(f"{label}: {path}: {what}: {one_line(exc)}") from exc


def check_loading_info(info: dict[str, Any], label: str, path: str | Path) -> None:
    """What `from_pretrained(..., output_loading_info=True)` reports: a tensor the architecture needs but the
    checkpoint lacks is initialised at random, and one whose shape disagrees with the config is too (with
    `ignore_mismatched_sizes`); either way the model is not the one on disk, so it is refused."""
    mismatched = sorted(info.get("mismatched_keys") or [], key=str)
    if mismatched:
        first = mismatched[0]
        if isinstance(first, tuple | list) and len(first) == 3:
            key, have, need = first
            shapes = f" has shape {list(have)} in the checkpoint, the config needs {list(need)}"
        else:
            key, shapes = first, ""
        more = f" (and {len(mismatched) - 1} more)" if len(mismatched) > 1 else ""
        raise InputError(
            f"{label}: {path}: the weights do not match config.json: {key}{shapes}{more}; the config and the "
            "weights come from different models?"
        )
    missing = sorted(info.get("missing_keys") or [])
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise InputError(
            f"{label}: {path}: the checkpoint lacks {len(missing)} tensor(s) the architecture in config.json needs, "
            f"e.g. {missing[0]}{more}; transformers would initialise them at random (an incomplete download, or a "
            "config from another model?)"
        )
