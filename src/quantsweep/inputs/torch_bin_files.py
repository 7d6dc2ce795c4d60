"""Cheap check of a PyTorch `.bin` checkpoint: its zip directory (or a legacy pickle's first byte), never its
tensors.

Why: unpickling a `.bin` needs torch and takes seconds; a truncated file loses the zip directory stored at its end,
which zipfile reads back in milliseconds. Used by hf_folders when a folder holds no safetensors weights.

Pure Python: nothing here imports torch.
"""

from __future__ import annotations

import zipfile
from pathlib import Path

from .file_checks import _err, _regular_file

BIN_FILE = "pytorch_model.bin"
BIN_INDEX = "pytorch_model.bin.index.json"


def check_torch_bin(path: Path, label: str) -> None:
    """A `pytorch_model*.bin`: a zip archive (torch >= 1.6) whose directory, stored at its end, reads back (a
    truncated file loses it), or a legacy pickle."""
    size = _regular_file(path, label, "PyTorch checkpoint").st_size
    try:
        with open(path, "rb") as fh:
            magic = fh.read(4)
    except OSError as exc:
        raise _err(label, path, f"cannot read: {exc.strerror or exc}") from None
    if size == 0:
        raise _err(label, path, "empty file")
    if magic.startswith(b"PK"):
        try:
            with zipfile.ZipFile(path) as zf:
                names = zf.namelist()
        except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, ValueError, EOFError) as exc:
            raise _err(label, path, f"not a readable PyTorch checkpoint (zip: {exc}); truncated?") from None
        if not any(n.endswith("data.pkl") for n in names):
            raise _err(label, path, "a zip archive without data.pkl: not a PyTorch checkpoint")
        return
    if magic[:1] != b"\x80":
        raise _err(label, path, "neither a PyTorch zip checkpoint nor a legacy pickle")
