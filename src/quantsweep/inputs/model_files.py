"""Cheap checks of a model's files before anything is loaded: a Hugging Face folder, a GGUF file, a single
safetensors file. Headers only, never the weights.

Why: transformers, safetensors and gguf find a broken model deep inside a load that may come after a sweep folder
was created, a GGUF conversion started or a dataset was tokenised, and they report it with messages that name
neither the matrix field nor, often, the file. Some breakage is not even an error there: a checkpoint missing a
tensor (an index pointing at the wrong shard) loads with that tensor initialised at random, and the sweep would
quantize a different model without a word. Everything a header can tell is checked here, in milliseconds, before
anything is created, and reported as one InputError line `<label>: <file>: <what is wrong>`; the label is the
matrix field (`model.path`) or the flag (`--model`) the user has to fix.

What a header cannot tell (garbage tensor values, a tokenizer the tokenizers library rejects, config values of the
wrong type) is turned into the same kind of error where the libraries load the model (engine/models.py,
weights/sources.py).

Pure Python: nothing here imports torch. The architectures transformers knows are read from its source with `ast`,
because importing its config classes imports torch (seconds); when that source cannot be read (a future layout),
the architecture check is skipped and the load reports an unknown architecture instead.
"""

from __future__ import annotations

import ast
import functools
import importlib.util
import math
import mmap
import os
import re
import stat
import struct
import sys
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from ..errors import InputError
from .documents import MiB, SMALL, DocumentError, Limits, parse_json, read_bytes, read_json_object

SAFETENSORS_FILE = "model.safetensors"
SAFETENSORS_INDEX = "model.safetensors.index.json"
BIN_FILE = "pytorch_model.bin"
BIN_INDEX = "pytorch_model.bin.index.json"

# safetensors' own bound on its JSON header (MAX_HEADER_SIZE in the Rust crate); larger means damaged length bytes.
MAX_HEADER_BYTES = 100_000_000
HEADER = Limits(max_bytes=MAX_HEADER_BYTES, max_depth=8, max_nodes=20_000_000)
# tokenizer.json of a 256k-token vocabulary is ~35 MB; vocab.json and merges.txt are smaller.
TOKENIZER = Limits(max_bytes=256 * MiB, max_depth=64, max_nodes=20_000_000)

# Bits per element of every dtype safetensors 0.8 accepts (its error lists them in this order).
DTYPE_BITS = {
    "BOOL": 8, "F4": 4, "F6_E2M3": 6, "F6_E3M2": 6, "U8": 8, "I8": 8, "F8_E5M2": 8, "F8_E4M3": 8, "F8_E8M0": 8,
    "F8_E4M3FNUZ": 8, "F8_E5M2FNUZ": 8, "I16": 16, "U16": 16, "F16": 16, "BF16": 16, "I32": 32, "U32": 32, "F32": 32,
    "C64": 64, "F64": 64, "I64": 64, "U64": 64,
}  # fmt: skip

# Tokenizer files transformers' AutoTokenizer loads, and the JSON files next to them it reads when present.
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "spiece.model", "vocab.json", "vocab.txt")
SIDE_JSON = {
    "tokenizer_config.json": "tokenizer config",
    "special_tokens_map.json": "special tokens map",
    "added_tokens.json": "added tokens",
    "generation_config.json": "generation config",
}


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


# --- safetensors ------------------------------------------------------------------------------------------------
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


# --- PyTorch .bin --------------------------------------------------------------------------------------------
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


# --- GGUF -------------------------------------------------------------------------------------------------------
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


# --- what transformers knows --------------------------------------------------------------------------------------
def _mapping_keys(files: list[Path], name: str) -> set[str]:
    """String keys given to `name` in these modules: `name = OrderedDict([...])`, `name = OrderedDict(**{...})`,
    `name.update({...})`."""
    keys: set[str] = set()

    def collect(node: ast.AST) -> None:
        if isinstance(node, ast.Call):
            for arg in node.args:
                collect(arg)
            for kw in node.keywords:
                if kw.arg is None:
                    collect(kw.value)
                else:
                    keys.add(kw.arg)
        elif isinstance(node, ast.List | ast.Tuple):
            for elt in node.elts:
                if isinstance(elt, ast.Tuple) and elt.elts and isinstance(elt.elts[0], ast.Constant):
                    if isinstance(elt.elts[0].value, str):
                        keys.add(elt.elts[0].value)
        elif isinstance(node, ast.Dict):
            keys.update(k.value for k in node.keys if isinstance(k, ast.Constant) and isinstance(k.value, str))

    for f in files:
        tree = ast.parse(f.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == name for t in node.targets):
                collect(node.value)
            elif (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and node.func.attr == "update"
                and isinstance(node.func.value, ast.Name)
                and node.func.value.id == name
            ):
                collect(node)
    return keys


@functools.lru_cache(maxsize=1)
def transformers_architectures() -> tuple[frozenset[str] | None, frozenset[str] | None, str]:
    """(every model_type transformers has a config class for, those AutoModelForCausalLM can load, version), read
    from transformers' source without importing it; None where the source could not be read."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        ver = version("transformers")
    except PackageNotFoundError:
        return None, None, "?"
    spec = importlib.util.find_spec("transformers")
    if spec is None or not spec.submodule_search_locations:
        return None, None, ver
    auto = Path(next(iter(spec.submodule_search_locations))) / "models" / "auto"
    result: list[frozenset[str] | None] = []
    for files, name in (
        ([auto / "auto_mappings.py", auto / "configuration_auto.py"], "CONFIG_MAPPING_NAMES"),
        ([auto / "modeling_auto.py"], "MODEL_FOR_CAUSAL_LM_MAPPING_NAMES"),
    ):
        try:
            keys = _mapping_keys([f for f in files if f.is_file()], name)
        except (OSError, SyntaxError, ValueError):  # an unreadable or unexpected source: skip the check
            keys = set()
        result.append(frozenset(keys) if "llama" in keys and len(keys) > 20 else None)
    return result[0], result[1], ver


# --- Hugging Face folder ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class HfFolderInfo:
    folder: Path
    model_type: str
    config: dict[str, Any]
    weights: list[Path]  # the files transformers will read, in order
    weight_format: str  # safetensors | pytorch
    tensors: int | None  # tensors in the safetensors headers (None for .bin)
    tokenizer: list[str] = field(default_factory=list)  # the tokenizer files found


def read_model_config(folder: Path, label: str, required: bool = True) -> dict[str, Any] | None:
    cfg = folder / "config.json"
    if not _present(cfg):
        if not required:
            return None
        raise _err(
            label,
            folder,
            "is not a Hugging Face model folder: no config.json (a folder written by save_pretrained, or a hub "
            "download, has one)",
        )
    return _json_object(cfg, label, "model config")


def _check_remote_code(folder: Path, cfg_path: Path, auto_map: dict[str, Any], label: str) -> None:
    """Local modules an `auto_map` names (`modeling_x.Class`) must be in the folder; `repo--module.Class` entries
    point at the hub and are left to transformers."""
    for key, ref in auto_map.items():
        for r in ref if isinstance(ref, list) else [ref]:
            if r is None:
                continue
            if not isinstance(r, str) or "." not in r:
                raise _err(label, cfg_path, f"auto_map.{key}: expected 'module.Class', got {_short(r)}")
            if "--" in r:
                continue
            module = r.rsplit(".", 1)[0]
            if not (folder / f"{module.replace('.', '/')}.py").is_file():
                raise _err(label, cfg_path, f"auto_map.{key}: names {r}, but {module}.py is not in {folder}")


def _check_architecture(folder: Path, cfg: dict[str, Any], label: str, trust_remote_code: bool) -> str:
    cfg_path = folder / "config.json"
    model_type = cfg.get("model_type")
    if not isinstance(model_type, str) or not model_type:
        got = "missing" if model_type is None else f"expected a string, got {_short(model_type)}"
        raise _err(label, cfg_path, f'model_type: {got} (transformers picks the architecture by it, e.g. "llama")')
    auto_map = cfg.get("auto_map")
    if auto_map is not None and not isinstance(auto_map, dict):
        raise _err(label, cfg_path, f"auto_map: expected an object, got {_short(auto_map)}")
    if trust_remote_code and auto_map and "AutoModelForCausalLM" in auto_map:
        _check_remote_code(folder, cfg_path, auto_map, label)
        return model_type
    known, causal, ver = transformers_architectures()
    if known is not None and model_type not in known:
        if auto_map and "AutoModelForCausalLM" in auto_map:
            fix = (
                "the folder ships its own modeling code (config.json auto_map): if you trust it, set "
                "model.trust_remote_code: true"
            )
        else:
            fix = "a newer architecture needs a newer transformers (uv add -U transformers); otherwise fix model_type"
        raise _err(
            label, cfg_path, f"model_type: {model_type!r} is not an architecture transformers {ver} knows; {fix}"
        )
    if causal is not None and model_type not in causal:
        raise _err(
            label,
            cfg_path,
            f"model_type: {model_type!r} has no causal language model class in transformers {ver} "
            "(AutoModelForCausalLM cannot load it); quantsweep sweeps causal language models",
        )
    return model_type


def _hf_weights(folder: Path, cfg: dict[str, Any], label: str) -> tuple[str, list[Path], int | None]:
    """The weights transformers will load, in its order of preference, checked."""
    explicit = cfg.get("transformers_weights")
    if isinstance(explicit, str):
        target = _shard_path(folder, folder / "config.json", explicit, label, "transformers_weights")
        if explicit.endswith(".safetensors.index.json"):
            headers = check_safetensors_index(target, folder, label)
            return "safetensors", [h.path for h in headers], sum(len(h.tensors) for h in headers)
        header = check_safetensors_file(target, label)
        return "safetensors", [target], len(header.tensors)
    single, index = folder / SAFETENSORS_FILE, folder / SAFETENSORS_INDEX
    if single.is_file():
        header = check_safetensors_file(single, label)
        return "safetensors", [single], len(header.tensors)
    if index.is_file():
        headers = check_safetensors_index(index, folder, label)
        return "safetensors", [h.path for h in headers], sum(len(h.tensors) for h in headers)
    if (folder / BIN_FILE).is_file():
        check_torch_bin(folder / BIN_FILE, label)
        return "pytorch", [folder / BIN_FILE], None
    if (folder / BIN_INDEX).is_file():
        shards = sorted(set(read_index(folder / BIN_INDEX, folder, label, "PyTorch checkpoint index").values()))
        for s in shards:
            check_torch_bin(s, label)
        return "pytorch", shards, None
    for p in (single, index, folder / BIN_FILE, folder / BIN_INDEX):
        if _present(p):  # a dangling link or a folder under a weights name
            _regular_file(p, label, "weights file")
    other = sorted(p.name for p in folder.iterdir() if p.suffix in (".safetensors", ".bin", ".pt", ".pth", ".gguf"))
    hint = ""
    if any(n.endswith(".gguf") for n in other):
        hint = "; a .gguf file is loaded with `source: gguf` and `path:` the file"
    elif other:
        hint = f"; found {', '.join(other[:3])}, which transformers does not load under those names"
    raise _err(
        label,
        folder,
        f"no weights: expected {SAFETENSORS_FILE}, {SAFETENSORS_INDEX}, {BIN_FILE} or {BIN_INDEX}{hint}",
    )


def _check_tokenizer(folder: Path, label: str, trust_remote_code: bool) -> list[str]:
    for name, what in SIDE_JSON.items():
        if _present(folder / name):
            _json_object(folder / name, label, what)
    found = []
    for name in TOKENIZER_FILES:
        p = folder / name
        if not _present(p):
            continue
        if name.endswith(".json"):
            _json_object(p, label, "tokenizer file", TOKENIZER)
        elif _regular_file(p, label, "tokenizer file").st_size == 0:
            raise _err(label, p, "empty tokenizer file")
        found.append(name)
    if _present(folder / "merges.txt"):
        try:
            read_bytes(folder / "merges.txt", TOKENIZER, "tokenizer file").decode("utf-8")
        except DocumentError as exc:
            raise _relabel(label, exc) from None
        except UnicodeDecodeError as exc:
            raise _err(label, folder / "merges.txt", f"not UTF-8 text (invalid byte at offset {exc.start})") from None
        found.append("merges.txt")
    found += sorted(p.name for p in folder.glob("*.tiktoken") if p.is_file())
    if "vocab.json" in found and "merges.txt" not in found and "tokenizer.json" not in found:
        raise _err(label, folder, "vocab.json without merges.txt: a BPE tokenizer needs both (or a tokenizer.json)")
    if found:
        return found
    if trust_remote_code and _present(folder / "tokenizer_config.json"):
        tok_cfg = _json_object(folder / "tokenizer_config.json", label, "tokenizer config")
        if isinstance(tok_cfg.get("auto_map"), dict):
            return ["tokenizer_config.json"]
    raise _err(
        label,
        folder,
        "no tokenizer: expected tokenizer.json, tokenizer.model, or vocab.json with merges.txt (copy the tokenizer "
        "files of the model this folder came from, e.g. tokenizer.save_pretrained(folder))",
    )


def check_hf_folder(path: str | Path, label: str, *, trust_remote_code: bool = False) -> HfFolderInfo:
    """A Hugging Face model folder as `AutoModelForCausalLM.from_pretrained` and `AutoTokenizer.from_pretrained`
    will read it: config.json with an architecture transformers can load as a causal LM, the weights it will pick
    (every safetensors header; a .bin's zip directory), and the tokenizer files."""
    folder = Path(path)
    try:
        st = folder.stat()
    except FileNotFoundError:
        raise _err(label, folder, "is not a Hugging Face model folder: it does not exist") from None
    except OSError as exc:
        raise _err(label, folder, f"cannot read: {exc.strerror or exc}") from None
    if not stat.S_ISDIR(st.st_mode):
        raise _err(
            label, folder, "is not a Hugging Face model folder: it is a file (give the folder holding config.json)"
        )
    cfg = read_model_config(folder, label)
    assert cfg is not None
    model_type = _check_architecture(folder, cfg, label, trust_remote_code)
    fmt, weights, tensors = _hf_weights(folder, cfg, label)
    tokenizer = _check_tokenizer(folder, label, trust_remote_code)
    return HfFolderInfo(folder, model_type, cfg, weights, fmt, tensors, tokenizer)


# --- failures only a load can see ---------------------------------------------------------------------------------
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


def _out_of_memory(exc: BaseException) -> bool:
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(exc, getattr(torch, "OutOfMemoryError", ()))


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
