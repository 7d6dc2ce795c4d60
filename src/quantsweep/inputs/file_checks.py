"""What the cheap checks of a model's files share: the one error shape, and reading a file that must be a regular
file or a small JSON object.

Why: transformers, safetensors and gguf find a broken model deep inside a load that may come after a sweep folder
was created, a GGUF conversion started or a dataset was tokenised, and they report it with messages that name
neither the matrix field nor, often, the file. Everything a header can tell is checked before anything is created
(safetensors_files, torch_bin_files, gguf_files, hf_folders), in milliseconds, and reported as one InputError line
`<label>: <file>: <what is wrong>`; the label is the matrix field (`model.path`) or the flag (`--model`) the user
has to fix. These helpers keep that shape the same in every one of them.

Pure Python: nothing here imports torch.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Any

from ..errors import InputError
from .documents import SMALL, DocumentError, Limits, read_json_object


def _err(label: str, path: str | Path, detail: str) -> InputError:
    return InputError(f"{label}: {path}: {detail}")


def _relabel(label: str, exc: DocumentError) -> InputError:
    return InputError(f"{label}: {exc}")


def _present(path: Path) -> bool:
    """A name in the folder, even a dangling link (which the readers then report as not found)."""
    return os.path.lexists(path)


def _regular_file(path: Path, label: str, what: str) -> os.stat_result:
    try:
        st = path.stat()
    except FileNotFoundError:
        raise _err(label, path, "not found") from None
    except OSError as exc:
        raise _err(label, path, f"cannot read: {exc.strerror or exc}") from None
    if stat.S_ISDIR(st.st_mode):
        raise _err(label, path, f"is a folder, not a {what}")
    if not stat.S_ISREG(st.st_mode):
        raise _err(label, path, f"is not a regular file (a device, pipe or socket cannot be a {what})")
    return st


def _json_object(path: Path, label: str, what: str, limits: Limits = SMALL) -> dict[str, Any]:
    try:
        return read_json_object(path, limits, what)
    except DocumentError as exc:
        raise _relabel(label, exc) from None


def _short(value: Any, n: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= n else text[: n - 3] + "..."


def _is_count(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 0
