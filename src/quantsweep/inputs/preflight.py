"""The matrix's model and dataset files, checked before a sweep creates anything (and by `dry-run`).

Why: a sweep creates its folder, starts workers, converts a GGUF and loads the model before it first reads the
dataset; a broken model or dataset found then costs minutes and leaves a half-made sweep behind. These checks
read headers and text only (milliseconds for a model folder, one read of the dataset file), so they run first and
a bad input is one `error:` line naming the matrix field and the file (exit 2) with nothing created. What they
find suspicious but not wrong (text that does not look like natural language) is returned as warnings.

Pure: no torch. Embedded and synthetic models and Hugging Face hub datasets have no local files to check.
"""

from __future__ import annotations

from pathlib import Path

from ..schema import Matrix
from .gguf_files import check_gguf_file
from .hf_folders import check_hf_folder
from .text_files import read_jsonl_dataset, read_text_dataset, text_warnings


def preflight_inputs(matrix: Matrix) -> list[str]:
    """Check `matrix`'s model and dataset files; raise InputError on the first broken one, return warnings."""
    model = matrix.model
    if model.source == "hf":
        check_hf_folder(Path(model.path or ""), "model.path", trust_remote_code=model.trust_remote_code)
    elif model.source == "gguf":
        check_gguf_file(Path(model.path or ""), "model.path")
    ds = matrix.dataset
    if ds.source == "text":
        text = read_text_dataset(ds.path or "", "dataset.path")
    elif ds.source == "jsonl":
        text = "\n\n".join(read_jsonl_dataset(ds.path or "", ds.field, "dataset.path"))
    else:
        return []
    return [f"dataset.path: {ds.path}: {w}" for w in text_warnings(text)]
