"""Text sources and fixed-length token samples.

The text is tokenised as one stream, cut into `seq_len` windows, and the windows are shuffled with the matrix
seed. The first `eval_samples` windows are the held-out evaluation set; the rest form the calibration pool, and a
dataset size of N samples is the first N windows of that pool. So:
  * calibration/scoring and evaluation samples never overlap;
  * smaller sizes are prefixes of larger ones (what prefix-sharing of scores across sizes needs);
  * the same seed gives the same samples.

The embedded default text is what ships with Python itself: the module, class and function docstrings of the
standard library's top-level modules (read with `ast`, nothing is imported) and its LICENSE.txt. It is real
English prose and code, deterministic for a given Python version, and needs no network.
"""

from __future__ import annotations

import ast
import hashlib
import random
import sysconfig
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..errors import InputError
from ..inputs.text_files import read_jsonl_dataset, read_text_dataset
from ..schema import DatasetSpec

_MIN_DOC_CHARS = 200


def embedded_documents() -> list[str]:
    """Standard-library docstrings and licence text, in a fixed order."""
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    docs: list[str] = []
    for path in sorted(stdlib.glob("*.py")):
        try:
            tree = ast.parse(path.read_text(encoding="utf-8"))
        except (SyntaxError, UnicodeDecodeError, OSError):
            continue
        for node in ast.walk(tree):
            if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
                doc = ast.get_docstring(node, clean=True)
                if doc and len(doc) >= _MIN_DOC_CHARS:
                    docs.append(doc)
    licence = stdlib / "LICENSE.txt"
    if licence.is_file():
        docs.append(licence.read_text(encoding="utf-8", errors="replace"))
    return docs


def _hf_documents(spec: DatasetSpec) -> list[str]:
    try:
        import datasets  # type: ignore[import-not-found]
    except ImportError:
        raise InputError("dataset.source 'hf' needs the `datasets` package (uv add datasets) and network") from None
    try:
        ds = datasets.load_dataset(spec.hf_name, spec.hf_config, split=spec.hf_split)
    except Exception as exc:  # network, missing dataset, ...
        raise InputError(f"dataset.hf_name: cannot load {spec.hf_name!r}: {exc}") from None
    if spec.field not in ds.column_names:
        raise InputError(f"dataset.field: {spec.field!r} not in {ds.column_names}")
    return [t for t in ds[spec.field] if isinstance(t, str) and t.strip()]


def load_documents(spec: DatasetSpec) -> list[str]:
    if spec.source == "embedded":
        docs = embedded_documents()
    elif spec.source == "text":  # strict UTF-8, size-bounded, not empty (inputs/text_files.py)
        docs = [read_text_dataset(spec.path or "", "dataset.path")]
    elif spec.source == "jsonl":
        docs = read_jsonl_dataset(spec.path or "", spec.field, "dataset.path")
    else:
        docs = _hf_documents(spec)
    docs = [d for d in docs if d.strip()]
    if not docs:
        raise InputError(f"dataset ({spec.source}): no text found")
    return docs


@dataclass
class TokenSamples:
    """Held-out evaluation windows and the ordered calibration pool, each a [n, seq_len] LongTensor on CPU."""

    eval_ids: torch.Tensor
    pool_ids: torch.Tensor
    seq_len: int
    fingerprint: str
    total_tokens: int
    # the whole token stream and the windows (of `seq_len`, in stream order) the calibration pool took: what
    # long-context evaluation needs to cut longer held-out samples (engine/long_context.py)
    stream: torch.Tensor | None = None
    pool_windows: tuple[int, ...] = ()

    def pool(self, n: int) -> torch.Tensor:
        if n > self.pool_ids.shape[0]:
            raise InputError(
                f"the dataset yields {self.pool_ids.shape[0]} calibration samples of {self.seq_len} tokens "
                f"(after {self.eval_ids.shape[0]} held-out), but {n} are needed; use smaller sizes, a shorter "
                "dataset.seq_len, or more text"
            )
        return self.pool_ids[:n]

    def describe(self) -> dict[str, Any]:
        return {
            "seq_len": self.seq_len,
            "eval_samples": int(self.eval_ids.shape[0]),
            "pool_samples": int(self.pool_ids.shape[0]),
            "total_tokens": self.total_tokens,
            "fingerprint": self.fingerprint,
        }


def build_samples(spec: DatasetSpec, tokenizer: Any, needed_pool: int) -> TokenSamples:
    docs = load_documents(spec)
    sep = tokenizer.eos_token or "\n\n"
    ids: list[int] = []
    for doc in docs:
        ids.extend(tokenizer(doc, add_special_tokens=False)["input_ids"])
        ids.extend(tokenizer(sep, add_special_tokens=False)["input_ids"])
    n_windows = len(ids) // spec.seq_len
    needed = spec.eval_samples + needed_pool
    if n_windows < needed:
        raise InputError(
            f"dataset ({spec.source}) has {len(ids)} tokens = {n_windows} samples of {spec.seq_len} tokens, but "
            f"{spec.eval_samples} held-out + {needed_pool} calibration samples are needed; use smaller sizes, a "
            "shorter dataset.seq_len, or more text"
        )
    windows = torch.tensor(ids[: n_windows * spec.seq_len], dtype=torch.long).view(n_windows, spec.seq_len)
    order = list(range(n_windows))
    random.Random(spec.seed).shuffle(order)
    windows = windows[torch.tensor(order)]
    eval_ids = windows[: spec.eval_samples].clone()
    pool_ids = windows[spec.eval_samples : spec.eval_samples + needed_pool].clone()
    digest = hashlib.sha256(eval_ids.numpy().tobytes() + pool_ids.numpy().tobytes()).hexdigest()[:16]
    return TokenSamples(
        eval_ids=eval_ids, pool_ids=pool_ids, seq_len=spec.seq_len, fingerprint=digest, total_tokens=len(ids),
        stream=torch.tensor(ids, dtype=torch.long),
        pool_windows=tuple(order[spec.eval_samples : spec.eval_samples + needed_pool]),
    )


def make_batches(ids: torch.Tensor, batch_size: int, device: torch.device, labels: bool) -> list[dict[str, torch.Tensor]]:
    """A list (never a generator: AutoQuantize iterates it once per phase) of {input_ids[, labels]} batches."""
    batches = []
    for start in range(0, ids.shape[0], batch_size):
        chunk = ids[start : start + batch_size].to(device)
        batch = {"input_ids": chunk}
        if labels:
            batch["labels"] = chunk
        batches.append(batch)
    return batches
