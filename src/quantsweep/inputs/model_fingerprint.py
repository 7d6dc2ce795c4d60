"""A model's weights identified without reading them (pure: no torch), for the caches keyed by the model: the
baseline cache (engine/baseline_cache.py) and the lm-eval baseline file (execution/lm_eval_phase.py).

For a folder: every weight file's name, size and modification time, the SHA-256 of each safetensors header
(tensor names, dtypes, shapes, offsets) and of the JSON files (`config.json`, shard indexes); for a single file
(a GGUF): its resolved path, size and modification time (as engine/models.py keys the converted GGUF); for a
synthetic model: its preset (name and shape), seed and the builder's source. Why not a hash of the weights: reading 16 GB per run to skip one forward
pass costs more than it saves; a file rewritten in place changes its modification time (a miss, never a stale
hit), and a header hash catches a same-size, same-time replacement with other shapes.
"""

from __future__ import annotations

import hashlib
import struct
from pathlib import Path
from typing import Any

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf")
MAX_HEADER_BYTES = 100 << 20  # safetensors' own limit


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _safetensors_header(path: Path) -> str:
    with open(path, "rb") as fh:
        (n,) = struct.unpack("<Q", fh.read(8))
        return _sha(fh.read(min(n, MAX_HEADER_BYTES)))


def model_fingerprint(spec: Any, path: str | None) -> dict[str, Any]:
    """What identifies the model's weights (see the module doc); `path` is the folder or file loaded."""
    if spec.source == "synthetic":
        # the weights are the builder's output: its preset's shape and the code that initialises them, so a change
        # of either is a miss, never a stale hit
        from ..presets import SYNTHETIC_PRESETS

        builder = Path(__file__).resolve().parents[1] / "engine" / "synthetic.py"
        return {"synthetic": spec.preset, "seed": spec.seed, "config": SYNTHETIC_PRESETS.get(spec.preset or ""),
                "builder_sha256": _sha(builder.read_bytes())}
    p = Path(path or "")
    if p.is_file():
        st = p.stat()
        return {"file": str(p.resolve()), "size": st.st_size, "mtime_ns": st.st_mtime_ns}
    files = []
    for f in sorted(p.iterdir()):
        if not f.is_file() or not (f.name.endswith(WEIGHT_SUFFIXES) or f.name.endswith(".json")):
            continue
        if f.name.endswith(".json") and not (f.name == "config.json" or f.name.endswith(".index.json")):
            continue
        st = f.stat()
        entry: dict[str, Any] = {"name": f.name, "size": st.st_size, "mtime_ns": st.st_mtime_ns}
        if f.name.endswith(".safetensors"):
            entry["header_sha256"] = _safetensors_header(f)
        elif f.name.endswith(".json"):
            entry["sha256"] = _sha(f.read_bytes())
        files.append(entry)
    return {"folder": str(p.resolve()), "files": files}
