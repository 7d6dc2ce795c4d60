"""The unquantized model's outputs on the held-out samples, cached across sweeps (llama-perplexity's
`--kl-divergence-base` idea; docs/running.md, "The baseline cache").

Every sweep measures its cells against the baseline's outputs (engine/quality.py `BaselineOutputs`): one forward
pass of the unquantized model over the held-out samples. Sweeps of the same model and data (another matrix, a
`--rerun`, every Ray worker) compute exactly the same tensors again, so they are stored once in the user's cache
folder (`$QUANTSWEEP_CACHE_DIR/baselines/`, see engine/models.py `cache_dir`) and read back bit for bit: the
quality numbers are identical with and without the cache.

**What is stored** is what the metrics read, nothing more: per held-out batch either the full log-probabilities
(when they fit `quality.DEFAULT_MAX_CACHE_BYTES` in memory: exact KL) or the top-256 log-probs and their token ids
(KL over 257 buckets), plus each predicted token's NLL and the argmax. For SmolLM2 (vocabulary 49,152) that is
196,608 bytes per predicted token with full log-probs (float32), i.e. 25 MB per 128-token sample; a model whose
full log-probs exceed 1 GiB stores top-256 (3 KB per token).

**The key** is everything that changes those tensors:
- the model: for a folder, every weight file's name, size and modification time plus the SHA-256 of each
  safetensors header (tensor names, dtypes, shapes, offsets) and of `config.json`; for a GGUF file, its path,
  size and modification time (as the converted-GGUF cache is keyed); for a synthetic model, its preset, seed and
  the builder's source.
  Why not a hash of the weights: reading 16 GB per run to skip a forward pass would cost more than it saves. A
  file rewritten in place changes its modification time (a miss, never a stale hit); a header hash catches a
  same-size, same-time replacement with other shapes.
- the held-out token ids (SHA-256 of every batch, so the samples, their order, `seq_len` and the batch size),
- the dtype, the device type, the model's placement over devices, and the torch, transformers and ModelOpt
  versions (their kernels change the float results).

A file that cannot be read, is truncated, or holds other tensors than its key promises is ignored (and replaced
by the freshly computed outputs): never a crash, never a wrong number. Files are written atomically
(store/atomic.py). A file larger than `QUANTSWEEP_BASELINE_CACHE_MAX_MB` (default 1024) is not written, with a log
line. `quantsweep run --no-baseline-cache` neither reads nor writes the cache.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..inputs.model_fingerprint import model_fingerprint
from .quality import DEFAULT_MAX_CACHE_BYTES, TOPK, BaselineOutputs, baseline_outputs

FORMAT = 1  # bump when the stored layout or the way BaselineOutputs is computed changes
DEFAULT_MAX_MB = 1024
MAX_MB_ENV = "QUANTSWEEP_BASELINE_CACHE_MAX_MB"


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def cache_key(spec: Any, info: dict[str, Any], batches: list[dict[str, torch.Tensor]], device: torch.device,
              dtype: torch.dtype, max_bytes: int) -> dict[str, Any]:
    """Everything the baseline's outputs depend on (JSON-ready); the file name is its hash."""
    from importlib import metadata

    def version(dist: str) -> str | None:
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            return None

    ids = hashlib.sha256()
    for b in batches:
        t = b["input_ids"].detach().cpu().contiguous()
        ids.update(json.dumps(list(t.shape)).encode())
        ids.update(t.numpy().tobytes())
    return {
        "format": FORMAT,
        "model": model_fingerprint(spec, info.get("path")),
        "trust_remote_code": bool(spec.trust_remote_code),
        "architecture": info.get("architecture"),
        "eval_ids_sha256": ids.hexdigest(),
        "batch_shapes": [list(b["input_ids"].shape) for b in batches],
        "dtype": str(dtype),
        "device_type": device.type,
        "placement": {k: v for k, v in (info.get("placement") or {}).items() if k in ("device_map", "devices", "modules_per_device",
                                                                                  "offloaded_to_cpu")},
        "versions": {d: version(d) for d in ("torch", "transformers", "nvidia-modelopt")},
        "max_cache_bytes": max_bytes,
        "topk": TOPK,
    }


def _max_bytes() -> int:
    try:
        return int(float(os.environ.get(MAX_MB_ENV, DEFAULT_MAX_MB)) * (1 << 20))
    except ValueError:
        return DEFAULT_MAX_MB << 20


def _check(outputs: BaselineOutputs, batches: list[dict[str, torch.Tensor]]) -> str | None:
    """Why stored outputs do not fit these batches (None: they do)."""
    positions = [(b["input_ids"].shape[0], b["input_ids"].shape[1] - 1) for b in batches]
    if len(outputs.argmax) != len(batches):
        return "another number of batches"
    if outputs.nll.dtype != torch.float32 or outputs.nll.numel() != sum(r * c for r, c in positions):
        return "another number of predicted tokens"
    for i, (rows, cols) in enumerate(positions):
        if tuple(outputs.argmax[i].shape) != (rows, cols):
            return f"batch {i}: argmax of another shape"
        if outputs.full is not None:
            t = outputs.full[i]
            if t.dtype != torch.float32 or t.dim() != 3 or tuple(t.shape[:2]) != (rows, cols):
                return f"batch {i}: log-probs of another shape"
        else:
            lp, idx = (outputs.topk_logp or [])[i], (outputs.topk_idx or [])[i]
            if tuple(lp.shape) != (rows, cols, TOPK) or tuple(idx.shape) != (rows, cols, TOPK):
                return f"batch {i}: top-k of another shape"
    return None


def _load(path: Path, key: dict[str, Any], batches: list[dict[str, torch.Tensor]]) -> tuple[BaselineOutputs | None, str]:
    if not path.is_file():
        return None, "absent"
    try:
        doc = torch.load(io.BytesIO(path.read_bytes()), map_location="cpu", weights_only=True)
        if not isinstance(doc, dict) or doc.get("key") != json.dumps(key, sort_keys=True):
            return None, "written for another key"
        full, lp, idx = doc.get("full"), doc.get("topk_logp"), doc.get("topk_idx")
        out = BaselineOutputs(full=full, topk_logp=lp, topk_idx=idx, nll=doc["nll"], argmax=list(doc["argmax"]),
                              method=str(doc["method"]))
        if (full is None) == (lp is None) or (lp is None) != (idx is None):
            return None, "unreadable (neither full log-probs nor top-k)"
        problem = _check(out, batches)
        if problem:
            return None, f"unreadable ({problem})"
        return out, "hit"
    except Exception as exc:  # torch.load raises many types on a damaged file: all mean "recompute"
        return None, f"unreadable ({type(exc).__name__})"


def cached_baseline_outputs(
    model: nn.Module, spec: Any, info: dict[str, Any], batches: list[dict[str, torch.Tensor]], device: torch.device,
    dtype: torch.dtype, enabled: bool = True, message: Callable[[str], None] = lambda _m: None,
    cache_root: Path | None = None,
) -> tuple[BaselineOutputs, dict[str, Any]]:
    """The baseline's outputs, read from the cache or computed (and then stored); with what happened
    (`{"enabled", "hit", "reason", "file", "bytes"}`, recorded in the summary's `setup.baseline_cache`)."""
    if not enabled:
        return baseline_outputs(model, batches), {"enabled": False, "hit": False, "reason": "--no-baseline-cache",
                                                  "file": None, "bytes": None}
    from ..store.atomic import atomic_write_bytes
    from .models import cache_dir

    key = cache_key(spec, info, batches, device, dtype, DEFAULT_MAX_CACHE_BYTES)
    digest = _sha(json.dumps(key, sort_keys=True).encode())[:32]
    path = (cache_root or cache_dir() / "baselines") / f"{digest}.pt"
    found, reason = _load(path, key, batches)
    if found is not None:
        return found, {"enabled": True, "hit": True, "reason": "hit", "file": str(path), "bytes": path.stat().st_size}
    out = baseline_outputs(model, batches)
    buf = io.BytesIO()
    torch.save({"key": json.dumps(key, sort_keys=True), "full": out.full, "topk_logp": out.topk_logp,
                "topk_idx": out.topk_idx, "nll": out.nll, "argmax": out.argmax, "method": out.method}, buf)
    size, cap = buf.tell(), _max_bytes()
    info_out = {"enabled": True, "hit": False, "reason": reason, "file": str(path), "bytes": size}
    if size > cap:
        message(f"baseline cache: not stored: {size / (1 << 20):.0f} MiB of baseline outputs is more than "
                f"{MAX_MB_ENV}={cap / (1 << 20):.0f}")
        return out, {**info_out, "file": None, "reason": f"{reason}; too large to store"}
    try:
        atomic_write_bytes(path, buf.getvalue())
    except Exception as exc:  # a cache that cannot be written (read-only home, full disk) never fails a sweep
        message(f"baseline cache: not stored: {exc}")
        return out, {**info_out, "file": None, "reason": f"{reason}; not writable"}
    return out, info_out
