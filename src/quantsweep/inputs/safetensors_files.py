"""Cheap checks of safetensors files and of a sharded checkpoint's index: headers only, never the weights.

Why: a truncated download or a damaged header otherwise fails inside safetensors, late and without the matrix
field. Some breakage is not even an error there: a checkpoint missing a tensor (an index pointing at the wrong
shard) loads with that tensor initialised at random, and the sweep would quantize a different model without a
word. So every header is checked as safetensors will check it, and every tensor an index names must be in the
shard it says. Used by hf_folders and by `quantsweep weights` (weights/sources.py).

Pure Python: nothing here imports torch.
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from .documents import DocumentError, Limits, parse_json
from .file_checks import _err, _is_count, _json_object, _present, _regular_file, _short

SAFETENSORS_FILE = "model.safetensors"
SAFETENSORS_INDEX = "model.safetensors.index.json"

# safetensors' own bound on its JSON header (MAX_HEADER_SIZE in the Rust crate); larger means damaged length bytes.
MAX_HEADER_BYTES = 100_000_000
HEADER = Limits(max_bytes=MAX_HEADER_BYTES, max_depth=8, max_nodes=20_000_000)

# Bits per element of every dtype safetensors 0.8 accepts (its error lists them in this order).
DTYPE_BITS = {
    "BOOL": 8, "F4": 4, "F6_E2M3": 6, "F6_E3M2": 6, "U8": 8, "I8": 8, "F8_E5M2": 8, "F8_E4M3": 8, "F8_E8M0": 8,
    "F8_E4M3FNUZ": 8, "F8_E5M2FNUZ": 8, "I16": 16, "U16": 16, "F16": 16, "BF16": 16, "I32": 32, "U32": 32, "F32": 32,
    "C64": 64, "F64": 64, "I64": 64, "U64": 64,
}  # fmt: skip
MAX_DIMS = 64  # no framework uses more; bounds the header check's own arithmetic


@dataclass(frozen=True)
class SafetensorsHeader:
    """What a safetensors header says: tensor name -> (dtype, shape), and the size of the data it describes."""

    path: Path
    tensors: dict[str, tuple[str, tuple[int, ...]]]
    metadata: dict[str, str]
    data_bytes: int


def check_safetensors_file(path: str | Path, label: str) -> SafetensorsHeader:
    """The header of one safetensors file, checked as safetensors will check it when the file is opened: the
    8-byte little-endian header length, a UTF-8 JSON object, every tensor's dtype, shape and data offsets, tensors
    packed back to back, and the file exactly as long as the data the header describes (a truncated download is
    the common case)."""
    path = Path(path)
    size = _regular_file(path, label, "safetensors file").st_size
    if size < 8:
        raise _err(
            label, path, f"truncated: {size} bytes, fewer than the 8-byte header length a safetensors file starts with"
        )
    try:
        with open(path, "rb") as fh:
            (n,) = struct.unpack("<Q", fh.read(8))
            if n > MAX_HEADER_BYTES:
                raise _err(
                    label,
                    path,
                    f"not a safetensors file: its first 8 bytes give a header length of {n:,} bytes, more than "
                    f"safetensors' limit of {MAX_HEADER_BYTES:,} (damaged, or another format)",
                )
            if n < 2:
                raise _err(label, path, f"not a safetensors file: header length {n} is too short for a JSON header")
            if 8 + n > size:
                raise _err(
                    label,
                    path,
                    f"truncated: the header length says {n:,} bytes of header, the file has {size - 8:,} after it",
                )
            raw = fh.read(n)
    except OSError as exc:
        raise _err(label, path, f"cannot read: {exc.strerror or exc}") from None
    if len(raw) < n:
        raise _err(label, path, "truncated while reading the header (is the file being written?)")
    if raw[:1] != b"{":
        raise _err(
            label, path, f"not a safetensors file: the header does not start with '{{' (byte 8 is 0x{raw[0]:02x})"
        )
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise _err(
            label, path, f"header is not UTF-8 (invalid byte 0x{raw[exc.start]:02x} at offset {8 + exc.start})"
        ) from None
    try:
        header = parse_json(text, str(path), HEADER)
    except DocumentError as exc:
        raise _err(label, path, f"header: {exc.detail}") from None
    if not isinstance(header, dict):
        raise _err(label, path, "header: expected a JSON object of tensors")
    metadata = header.pop("__metadata__", None) or {}
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise _err(label, path, "header: __metadata__ must be an object of strings")
    tensors: dict[str, tuple[str, tuple[int, ...]]] = {}
    spans: list[tuple[int, int, str]] = []
    for name, info in header.items():
        where = f"header: tensor {_short(name)}"
        if not isinstance(info, dict):
            raise _err(label, path, f"{where}: expected an object with dtype, shape and data_offsets")
        missing = [k for k in ("dtype", "shape", "data_offsets") if k not in info]
        if missing:
            raise _err(label, path, f"{where}: no {missing[0]}")
        dtype, shape, offsets = info["dtype"], info["shape"], info["data_offsets"]
        if dtype not in DTYPE_BITS:
            raise _err(
                label, path, f"{where}: unknown dtype {_short(dtype)} (safetensors knows {', '.join(DTYPE_BITS)})"
            )
        if not isinstance(shape, list) or not all(_is_count(d) for d in shape):
            raise _err(label, path, f"{where}: shape must be a list of non-negative integers, got {_short(shape)}")
        if len(shape) > MAX_DIMS:  # math.prod over millions of dimensions would take minutes
            raise _err(label, path, f"{where}: shape has {len(shape):,} dimensions; at most {MAX_DIMS} are supported")
        if not (isinstance(offsets, list) and len(offsets) == 2 and all(_is_count(o) for o in offsets)):
            raise _err(label, path, f"{where}: data_offsets must be [begin, end] byte offsets, got {_short(offsets)}")
        begin, end = offsets
        if end < begin:
            raise _err(label, path, f"{where}: data_offsets [{begin}, {end}] end before they begin")
        bits = math.prod(shape) * DTYPE_BITS[dtype]
        if bits % 8:
            raise _err(label, path, f"{where}: shape {shape} of {dtype} does not fill whole bytes")
        if end - begin != bits // 8:
            raise _err(
                label,
                path,
                f"{where}: data_offsets [{begin:,}, {end:,}] hold {end - begin:,} bytes, but shape {shape} of {dtype} "
                f"needs {bits // 8:,}",
            )
        tensors[name] = (dtype, tuple(shape))
        spans.append((begin, end, name))
    spans.sort()
    pos = 0
    for begin, end, name in spans:
        if begin != pos:
            how = "overlaps the tensor before it" if begin < pos else f"leaves a gap of {begin - pos:,} bytes before it"
            raise _err(label, path, f"header: tensor {_short(name)} at data offset {begin:,} {how}")
        pos = end
    have = size - 8 - n
    if pos > have:
        raise _err(label, path, f"truncated: header says {pos:,} bytes of tensor data, the file has {have:,}")
    if pos < have:
        raise _err(
            label,
            path,
            f"{have - pos:,} bytes after the last tensor that the header does not describe (safetensors refuses such "
            "a file: damaged, or two files joined?)",
        )
    return SafetensorsHeader(path, tensors, dict(metadata), pos)


def _shard_path(folder: Path, index: Path, name: Any, label: str, tensor: str) -> Path:
    if not isinstance(name, str) or not name:
        raise _err(label, index, f"weight_map: tensor {_short(tensor)}: expected a shard file name, got {_short(name)}")
    parts = PurePosixPath(name).parts
    if name.startswith(("/", "\\")) or "\\" in name or ".." in parts or (len(name) > 1 and name[1] == ":"):
        raise _err(
            label,
            index,
            f"weight_map: shard {_short(name)} is outside the folder (an index may only name files inside {folder})",
        )
    shard = folder / name
    if not shard.is_file():
        raise _err(label, index, f"weight_map: shard {_short(name)} is missing from {folder}")
    return shard


def read_index(index: Path, folder: Path, label: str, what: str = "safetensors index") -> dict[str, Path]:
    """`weight_map` of a sharded checkpoint's index: tensor name -> shard file, every shard inside `folder`."""
    doc = _json_object(index, label, what)
    weight_map = doc.get("weight_map")
    if not isinstance(weight_map, dict) or not weight_map:
        got = "nothing" if weight_map is None else _short(weight_map, 40)
        raise _err(label, index, f"weight_map: expected a non-empty object of tensor name -> shard file, got {got}")
    shards: dict[str, Path] = {}
    out: dict[str, Path] = {}
    for tensor, name in weight_map.items():
        if name not in shards:
            shards[name] = _shard_path(folder, index, name, label, tensor)
        out[tensor] = shards[name]
    return out


def check_safetensors_index(index: Path, folder: Path, label: str) -> list[SafetensorsHeader]:
    """An index and its shards: every shard's header valid, and every tensor the index names in the shard the
    index says (transformers would initialise a tensor it cannot find at random, with only a log line)."""
    weight_map = read_index(index, folder, label)
    headers = {p: check_safetensors_file(p, label) for p in sorted(set(weight_map.values()))}
    wrong = [(t, p) for t, p in weight_map.items() if t not in headers[p].tensors]
    if wrong:
        t, p = wrong[0]
        more = f" (and {len(wrong) - 1} more)" if len(wrong) > 1 else ""
        raise _err(label, index, f"weight_map puts tensor {_short(t)} in {p.name}, which has no such tensor{more}")
    return list(headers.values())


def safetensors_shards(folder: Path, label: str) -> list[SafetensorsHeader]:
    """Every safetensors file of a folder (the index's shards when there is an index), headers checked: what
    `quantsweep weights` reads. Not every `*.safetensors` name is one transformers would load; that is
    `check_hf_folder`'s business."""
    index = folder / SAFETENSORS_INDEX
    if _present(index):
        return check_safetensors_index(index, folder, label)
    files = sorted(p for p in folder.glob("*.safetensors") if p.is_file())
    if not files:
        other = sorted(p.name for p in folder.iterdir() if p.suffix in (".bin", ".pt", ".pth", ".gguf"))[:3]
        hint = f" (found {', '.join(other)}: convert to safetensors first)" if other else ""
        raise _err(label, folder, f"no .safetensors files in the folder{hint}")
    return [check_safetensors_file(p, label) for p in files]
