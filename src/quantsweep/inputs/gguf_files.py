"""Cheap check of a GGUF file's header (memory-mapped), never its tensor data.

Why: the gguf reader transformers uses finds a wrong magic, a version it cannot read, a damaged count or a
truncated download only inside a load, after a sweep folder was created, and names neither the matrix field nor,
often, the file. Here the header is read to its end in milliseconds, before anything is created.

Pure Python: nothing here imports torch (the `gguf` package is imported for its tensor type sizes).
"""

from __future__ import annotations

import math
import mmap
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import InputError
from .file_checks import _err, _regular_file

# GGUF metadata value types: struct format of the fixed-size ones; 8 = string, 9 = array.
_GGUF_SCALAR = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}
_GGUF_STRING, _GGUF_ARRAY = 8, 9
_GGUF_MAX_DIMS = 4
_GGUF_MAX_STRINGS = 20_000_000  # strings in metadata arrays (a 256k-token vocabulary has ~0.8M with its merges)


@dataclass(frozen=True)
class GgufInfo:
    path: Path
    version: int
    architecture: str | None
    tensor_count: int
    kv_count: int
    data_offset: int
    data_bytes: int


class _Header:
    """A bounds-checked cursor over a GGUF file's bytes."""

    def __init__(self, buf: Any, order: str, path: Path, label: str):
        self.buf, self.order, self.path, self.label = buf, order, path, label
        self.pos = 0
        self.strings = 0

    def need(self, n: int, what: str) -> None:
        left = len(self.buf) - self.pos
        if n > left:
            raise _err(
                self.label,
                self.path,
                f"truncated in the header: {what} at byte {self.pos:,} needs {n:,} bytes, {left:,} are left",
            )

    def scalar(self, fmt: str, what: str) -> Any:
        size = struct.calcsize(fmt)
        self.need(size, what)
        (v,) = struct.unpack_from(self.order + fmt, self.buf, self.pos)
        self.pos += size
        return v

    def string(self, what: str, keep: bool = True) -> bytes:
        n = self.scalar("Q", what)
        self.need(n, what)
        start, self.pos = self.pos, self.pos + n
        return bytes(self.buf[start : self.pos]) if keep else b""

    def value(self, vtype: int, what: str, depth: int = 0) -> Any:
        if vtype in _GGUF_SCALAR:
            return self.scalar(_GGUF_SCALAR[vtype], what)
        if vtype == _GGUF_STRING:
            return self.string(what)
        if vtype != _GGUF_ARRAY:
            raise _err(self.label, self.path, f"{what}: unknown metadata value type {vtype}")
        if depth >= 3:
            raise _err(self.label, self.path, f"{what}: arrays nested more than 3 deep")
        item = self.scalar("I", what)
        count = self.scalar("Q", what)
        if item in _GGUF_SCALAR:
            n = count * struct.calcsize(_GGUF_SCALAR[item])
            self.need(n, what)
            self.pos += n
        elif item == _GGUF_STRING:
            self.need(count * 8, what)
            self.strings += count
            if self.strings > _GGUF_MAX_STRINGS:
                raise _err(
                    self.label,
                    self.path,
                    f"more than {_GGUF_MAX_STRINGS:,} strings in the metadata; refusing to read it",
                )
            for _ in range(count):
                self.string(what, keep=False)
        else:
            self.need(count * 12, what)  # each nested array has at least its type and count
            for _ in range(count):
                self.value(item, what, depth + 1)
        return None


def _gguf_types() -> dict[int, tuple[str, int, int]]:
    try:
        from gguf.constants import GGML_QUANT_SIZES
    except ImportError:
        raise InputError("reading a GGUF model needs the `gguf` package (uv sync installs it)") from None
    return {int(t): (t.name, block, size) for t, (block, size) in GGML_QUANT_SIZES.items()}


def check_gguf_file(path: str | Path, label: str) -> GgufInfo:
    """A GGUF file's header: the magic, a version the gguf reader transformers uses can read (2 or 3), counts
    that fit in the file, metadata and tensor descriptions read to the end, and the tensor data the header
    describes present in full (a truncated download). Reads the header only (memory-mapped), never the data."""
    path = Path(path)
    size = _regular_file(path, label, "GGUF file").st_size
    if size < 24:
        raise _err(label, path, f"truncated or not a GGUF file: {size} bytes, shorter than a GGUF header")
    types = _gguf_types()
    try:
        with open(path, "rb") as fh, mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as buf:
            return _gguf_header(buf, path, label, size, types)
    except OSError as exc:
        raise _err(label, path, f"cannot read: {exc.strerror or exc}") from None


def _gguf_header(buf: Any, path: Path, label: str, size: int, types: dict[int, tuple[str, int, int]]) -> GgufInfo:
    if buf[:4] != b"GGUF":
        raise _err(label, path, f"not a GGUF file (starts with {bytes(buf[:4])!r}, expected b'GGUF')")
    (version,) = struct.unpack_from("<I", buf, 4)
    order = "<"
    if version & 0xFFFF == 0:  # written on a big-endian machine
        order = ">"
        (version,) = struct.unpack_from(">I", buf, 4)
    if version not in (2, 3):
        why = "too old for" if version == 1 else "not readable by"
        raise _err(label, path, f"GGUF version {version} is {why} the gguf reader transformers uses (versions 2 and 3)")
    h = _Header(buf, order, path, label)
    h.pos = 8
    tensor_count = h.scalar("Q", "tensor count")
    kv_count = h.scalar("Q", "metadata count")
    left = size - h.pos
    if kv_count * 13 > left or tensor_count * 24 > left:
        raise _err(
            label,
            path,
            f"header claims {tensor_count:,} tensors and {kv_count:,} metadata entries, which cannot fit in "
            f"{size:,} bytes (damaged header)",
        )
    if tensor_count == 0:
        raise _err(label, path, "a GGUF file without tensors: not a model")
    alignment = 32
    architecture = None
    keys: set[bytes] = set()
    for i in range(kv_count):
        key = h.string(f"metadata entry {i} key")
        if key in keys:
            raise _err(label, path, f"metadata key {key.decode('utf-8', 'replace')!r} appears twice")
        keys.add(key)
        what = f"metadata {key.decode('utf-8', 'replace')[:80]!r}"
        vtype = h.scalar("I", what)
        value = h.value(vtype, what)
        if key == b"general.alignment":
            if vtype != 4 or value == 0 or value & (value - 1):
                raise _err(label, path, "general.alignment must be a non-zero power of two stored as uint32")
            alignment = value
        elif key == b"general.architecture" and vtype == _GGUF_STRING:
            architecture = value.decode("utf-8", "replace")
    if architecture is None:
        raise _err(
            label, path, "no general.architecture string in the metadata: transformers cannot tell what model it is"
        )
    spans: list[tuple[str, int, int]] = []
    names: set[bytes] = set()
    for i in range(tensor_count):
        raw = h.string(f"tensor {i} name")
        name = raw.decode("utf-8", "replace")[:120]
        if raw in names:
            raise _err(label, path, f"tensor {name!r} appears twice")
        names.add(raw)
        n_dims = h.scalar("I", f"tensor {name!r}")
        if n_dims > _GGUF_MAX_DIMS:
            raise _err(label, path, f"tensor {name!r}: {n_dims} dimensions, GGUF allows at most {_GGUF_MAX_DIMS}")
        dims = [h.scalar("Q", f"tensor {name!r}") for _ in range(n_dims)]
        ggml_type = h.scalar("I", f"tensor {name!r}")
        offset = h.scalar("Q", f"tensor {name!r}")
        if ggml_type not in types:
            raise _err(
                label,
                path,
                f"tensor {name!r}: unknown tensor type {ggml_type} (the installed gguf library does not know it)",
            )
        type_name, block, type_size = types[ggml_type]
        if dims and dims[0] % block:
            raise _err(
                label,
                path,
                f"tensor {name!r}: {dims[0]} elements per row is not a multiple of {type_name}'s block of {block}",
            )
        if offset % alignment:
            raise _err(
                label, path, f"tensor {name!r}: data offset {offset:,} is not a multiple of the alignment {alignment}"
            )
        spans.append((name, offset, math.prod(dims) // block * type_size))
    data_offset = -(-h.pos // alignment) * alignment
    have = max(size - data_offset, 0)
    need = max((off + n for _, off, n in spans), default=0)
    if need > have:
        raise _err(label, path, f"truncated: header says {need:,} bytes of tensor data, the file has {have:,}")
    return GgufInfo(path, version, architecture, tensor_count, kv_count, data_offset, need)
