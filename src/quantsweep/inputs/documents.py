"""The one reading layer for every JSON and YAML file quantsweep opens (matrices, summaries, manifests, records,
artifacts, naming rules, model configs and indexes).

Why one layer: a hostile or broken document must fail the same way whichever command reads it, with one line
naming the file, and must never take unbounded time or memory. What is bounded here:

- **size**: the file is read up to its kind's limit (a matrix is small; a summary or manifest may be large) and
  must be a regular file (a FIFO or a device would block or never end);
- **depth** (`[[[[...` or a YAML alias chain) and **expanded size** (YAML "billion laughs": aliases that repeat a
  node whose expansion grows exponentially, which every consumer walking the tree would pay for);
- **recursive aliases** (a node containing itself) are refused;
- **duplicate keys** (YAML and JSON alike silently keep the last one) are refused, naming the line (YAML) or key;
- **encoding**: UTF-8 only, with the offset of the first bad byte.

The YAML loader is PyYAML's safe loader (no object construction), composed in pure Python so that its depth can
be bounded; parsing a document within the size limit takes well under a second. Nothing here imports torch.
"""

from __future__ import annotations

import json
import math
import os
import re
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from yaml.composer import Composer
from yaml.constructor import SafeConstructor
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode
from yaml.resolver import Resolver

try:  # libyaml's event parser (C) under our own composer: 4x faster than PyYAML's pure-Python parser
    from yaml._yaml import CParser as _EventParser

    _C_PARSER = True
except ImportError:  # pragma: no cover - PyYAML built without libyaml
    from yaml.parser import Parser as _EventParser
    from yaml.reader import Reader
    from yaml.scanner import Scanner

    _C_PARSER = False

from ..errors import InputError

MiB = 1 << 20


@dataclass(frozen=True)
class Limits:
    """What a document of one kind may be. `max_nodes` counts the tree as a consumer sees it (aliases expanded)."""

    max_bytes: int
    max_depth: int = 64
    max_nodes: int = 1_000_000


# A matrix is a few KB; 1 MiB leaves room for generated matrices with long free-form overlays.
MATRIX = Limits(max_bytes=1 * MiB, max_depth=48, max_nodes=200_000)
# Summaries, manifests and records of hundreds of cells on 70B models (per-layer, per-format, per-batch scores).
DATA = Limits(max_bytes=512 * MiB, max_depth=64, max_nodes=50_000_000)
# config.json, tokenizer_config.json, safetensors indexes, naming rules.
SMALL = Limits(max_bytes=64 * MiB, max_depth=64, max_nodes=5_000_000)


class DocumentError(InputError):
    """A file that cannot be read as the document it should be; the message starts with the file's path."""

    def __init__(self, source: str, detail: str):
        super().__init__(f"{source}: {detail}")
        self.source = source
        self.detail = detail


def _fail(source: str, msg: str) -> DocumentError:
    return DocumentError(source, msg)


def _human(n: int) -> str:
    return f"{n / MiB:.1f} MiB" if n >= MiB else f"{n} bytes"


def read_bytes(path: str | Path, limits: Limits, what: str = "file") -> bytes:
    """The bytes of a regular file no larger than `limits.max_bytes` (read at most one byte past the limit, so a
    file that grows while being read cannot exhaust memory either)."""
    path = Path(path)
    source = str(path)
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except FileNotFoundError:
        raise _fail(source, "file not found") from None
    except IsADirectoryError:
        raise _fail(source, f"is a folder, not a {what}") from None
    except OSError as exc:
        raise _fail(source, f"cannot read: {exc.strerror or exc}") from None
    try:
        st = os.fstat(fd)
        if stat.S_ISDIR(st.st_mode):
            raise _fail(source, f"is a folder, not a {what}")
        if not stat.S_ISREG(st.st_mode):
            raise _fail(source, f"is not a regular file (a device, pipe or socket cannot be a {what})")
        if st.st_size > limits.max_bytes:
            raise _fail(source, f"{_human(st.st_size)} is larger than the {_human(limits.max_bytes)} a {what} may be")
        chunks = []
        remaining = limits.max_bytes + 1
        while remaining > 0:
            try:
                chunk = os.read(fd, min(remaining, 8 * MiB))
            except OSError as exc:
                raise _fail(source, f"cannot read: {exc.strerror or exc}") from None
            if not chunk:
                break
            chunks.append(chunk)
            remaining -= len(chunk)
        data = b"".join(chunks)
        if len(data) > limits.max_bytes:
            raise _fail(source, f"larger than the {_human(limits.max_bytes)} a {what} may be")
        return data
    finally:
        os.close(fd)


def decode_utf8(data: bytes, source: str) -> str:
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise _fail(source, f"not UTF-8 text (invalid byte 0x{data[exc.start]:02x} at offset {exc.start})") from None
    return text[1:] if text.startswith("\ufeff") else text  # a byte-order mark is not part of the document


def read_text(path: str | Path, limits: Limits, what: str = "file") -> str:
    return decode_utf8(read_bytes(path, limits, what), str(path))


# --- shape of a parsed tree ----------------------------------------------------------------------------------------
# A JSON `\ud800` escape decodes to a lone surrogate: a str Python holds but cannot encode, so printing or writing it
# later (a report, a tokenizer) would fail far from the file that carried it.
_SURROGATE = re.compile("[\ud800-\udfff]")


def check_tree(doc: Any, source: str, limits: Limits) -> None:
    """Depth and node count of a parsed JSON tree, and no lone surrogates in its strings (iterative: the check itself
    must not recurse)."""
    stack: list[tuple[Any, int]] = [(doc, 1)]
    nodes = 0
    while stack:
        obj, depth = stack.pop()
        nodes += 1
        if nodes > limits.max_nodes:
            raise _fail(source, f"more than {limits.max_nodes:,} values; refusing to read it")
        if isinstance(obj, str):
            if _SURROGATE.search(obj):
                raise _fail(source, f"a string holds an unpaired UTF-16 surrogate escape (\\u{ord(_SURROGATE.search(obj)[0]):04x}), "
                                    "which is not text")
        elif isinstance(obj, dict | list):
            if depth > limits.max_depth:
                raise _fail(source, f"nested more than {limits.max_depth} levels deep")
            if isinstance(obj, dict):
                stack.extend((k, depth + 1) for k in obj)
                stack.extend((c, depth + 1) for c in obj.values())
            else:
                stack.extend((c, depth + 1) for c in obj)


# --- JSON ----------------------------------------------------------------------------------------------------
def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in pairs:
        if k in out:
            raise _DuplicateKey(k)
        out[k] = v
    return out


class _DuplicateKey(ValueError):
    def __init__(self, key: str):
        super().__init__(key)
        self.key = key


def _finite_literal(literal: str) -> float:
    """A number literal like 1e400 would silently become infinity; `Infinity`/`NaN` (written on purpose, as
    quantsweep itself writes a diverged value) go through `parse_constant` and stay allowed."""
    value = float(literal)
    if math.isinf(value):
        raise _Overflow(literal)
    return value


class _Overflow(ValueError):
    def __init__(self, literal: str):
        super().__init__(literal)
        self.literal = literal


def parse_json(text: str, source: str, limits: Limits) -> Any:
    try:
        doc = json.loads(text, object_pairs_hook=_no_duplicate_keys, parse_float=_finite_literal)
    except _Overflow as exc:
        shown = exc.literal if len(exc.literal) <= 40 else exc.literal[:37] + "..."
        raise _fail(source, f"invalid JSON: the number {shown} is too large for a float") from None
    except _DuplicateKey as exc:
        raise _fail(source, f"invalid JSON: duplicate key {exc.key!r} (JSON keeps only the last one)") from None
    except json.JSONDecodeError as exc:
        raise _fail(source, f"invalid JSON: line {exc.lineno}, column {exc.colno}: {exc.msg}") from None
    except RecursionError:
        raise _fail(source, f"nested more than {limits.max_depth} levels deep") from None
    except ValueError as exc:  # e.g. an integer literal longer than Python's 4300-digit limit
        why = "an integer has more than 4300 digits" if "digits" in str(exc) else str(exc).splitlines()[0]
        raise _fail(source, f"invalid JSON: {why}") from None
    check_tree(doc, source, limits)
    return doc


def read_json(path: str | Path, limits: Limits = DATA, what: str = "JSON file") -> Any:
    return parse_json(read_text(path, limits, what), str(path), limits)


def read_json_object(path: str | Path, limits: Limits = DATA, what: str = "JSON file") -> dict[str, Any]:
    doc = read_json(path, limits, what)
    if not isinstance(doc, dict):
        raise _fail(str(path), f"expected a JSON object at the top level, got {_type_name(doc)}")
    return doc


def _type_name(v: Any) -> str:
    return {dict: "an object", list: "a list", str: "a string", bool: "a boolean", type(None): "null"}.get(
        type(v), "a number"
    )


# --- YAML ----------------------------------------------------------------------------------------------------
class _YamlLimit(Exception):
    def __init__(self, msg: str):
        super().__init__(msg)
        self.msg = msg


def _line(node: Node) -> str:
    return f"line {node.start_mark.line + 1}: " if node.start_mark is not None else ""


class _BoundedLoader(Composer, SafeConstructor, Resolver, _EventParser):  # type: ignore[misc]
    """PyYAML's safe loader (events from libyaml when available), composed in Python with bounded depth and
    node count, refusing duplicate keys."""

    def __init__(self, stream: str, limits: Limits):
        if _C_PARSER:
            _EventParser.__init__(self, stream)
        else:  # pragma: no cover
            Reader.__init__(self, stream)
            Scanner.__init__(self)
            _EventParser.__init__(self)
        Composer.__init__(self)
        SafeConstructor.__init__(self)
        Resolver.__init__(self)
        self.max_depth = limits.max_depth
        self.max_nodes = limits.max_nodes
        self._depth = 0
        self._nodes = 0

    def compose_node(self, parent: Node | None, index: Any) -> Node:  # type: ignore[override]
        self._depth += 1
        self._nodes += 1
        try:
            if self._nodes > self.max_nodes:
                raise _YamlLimit(f"more than {self.max_nodes:,} values; refusing to read it")
            if self._depth > self.max_depth:
                event = self.peek_event()
                mark = getattr(event, "start_mark", None)
                where = f"line {mark.line + 1}: " if mark is not None else ""
                raise _YamlLimit(f"{where}nested more than {self.max_depth} levels deep")
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def construct_yaml_float(self, node: ScalarNode) -> float:  # type: ignore[override]
        value = super().construct_yaml_float(node)
        if math.isinf(value) and "inf" not in str(node.value).lower():  # 1e400, not `.inf` written on purpose
            raise _YamlLimit(f"{_line(node)}the number {str(node.value)[:40]} is too large for a float")
        return value

    def construct_mapping(self, node: MappingNode, deep: bool = False) -> dict[Any, Any]:  # type: ignore[override]
        seen: dict[Any, Node] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue  # `<<: *base` merges are allowed to be overridden by the mapping's own keys
            if not isinstance(key_node, ScalarNode):
                raise _YamlLimit(f"{_line(key_node)}a mapping key must be a plain value, not a list or mapping")
            key = self.construct_object(key_node, deep=True)
            if key in seen:
                raise _YamlLimit(
                    f"{_line(key_node)}duplicate key {key!r} (also on line {seen[key].start_mark.line + 1}; "
                    "YAML would keep only the last one)"
                )
            seen[key] = key_node
        return super().construct_mapping(node, deep=deep)


_BoundedLoader.add_constructor("tag:yaml.org,2002:float", _BoundedLoader.construct_yaml_float)


def _expanded_shape(root: Node, limits: Limits) -> None:
    """Depth and node count of the tree as a consumer walks it (every alias expanded), computed on the node graph
    with memoisation (linear in the graph, whatever the expansion), refusing recursive aliases."""
    size: dict[int, int] = {}
    depth: dict[int, int] = {}
    on_path: set[int] = set()
    stack: list[tuple[Node, bool]] = [(root, False)]
    while stack:
        node, done = stack.pop()
        nid = id(node)
        children: list[Node] = []
        if isinstance(node, SequenceNode):
            children = list(node.value)
        elif isinstance(node, MappingNode):
            children = [x for kv in node.value for x in kv]
        if done:
            on_path.discard(nid)
            size[nid] = 1 + sum(size[id(c)] for c in children)
            depth[nid] = 1 + max((depth[id(c)] for c in children), default=0)
            if size[nid] > limits.max_nodes:
                raise _YamlLimit(
                    f"{_line(node)}expands to more than {limits.max_nodes:,} values (aliases repeating aliases); "
                    "refusing to read it"
                )
            if depth[nid] > limits.max_depth:
                raise _YamlLimit(f"{_line(node)}nested more than {limits.max_depth} levels deep once aliases are expanded")
            continue
        if nid in size:
            continue
        if nid in on_path:
            raise _YamlLimit(f"{_line(node)}an alias refers to a node that contains it (a recursive alias)")
        on_path.add(nid)
        stack.append((node, True))
        stack.extend((c, False) for c in children if id(c) not in size)


def parse_yaml(text: str, source: str, limits: Limits) -> Any:
    loader = _BoundedLoader(text, limits)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        _expanded_shape(node, limits)
        doc = loader.construct_document(node)
        check_tree(doc, source, limits)  # bounded by the expanded shape just checked; finds lone surrogates
        return doc
    except _YamlLimit as exc:
        raise _fail(source, f"invalid YAML: {exc.msg}") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise _fail(source, f"invalid YAML: {where}{problem}") from None
    except (RecursionError, MemoryError):
        raise _fail(source, "invalid YAML: too deeply nested or too large to read") from None
    except ValueError as exc:  # a constructor refusing a scalar (e.g. an out-of-range timestamp)
        raise _fail(source, f"invalid YAML: {str(exc).splitlines()[0]}") from None
    finally:
        if hasattr(loader, "dispose"):
            loader.dispose()


def read_structured(path: str | Path, limits: Limits, what: str) -> Any:
    """A `.yaml`/`.yml` or `.json` file by its suffix (matrices, naming rules)."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in (".yaml", ".yml", ".json"):
        raise _fail(str(path), f"unsupported file type {suffix!r}; use .yaml, .yml or .json")
    text = read_text(path, limits, what)
    if suffix == ".json":
        return parse_json(text, str(path), limits)
    return parse_yaml(text, str(path), limits)
