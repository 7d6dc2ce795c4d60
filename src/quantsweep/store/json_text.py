"""The indented JSON text of quantsweep's documents, the same characters as `json.dumps` gives, in ~60 % of its time.

Why: every quantsweep document is written as `json.dumps(doc, indent=2, sort_keys=True, allow_nan=True,
default=str)` (store/atomic.py `dumps`), and CPython's C encoder does no indentation, so those calls run the
pure-Python generator encoder (`json.encoder._make_iterencode`): one generator frame per container and one `yield`
per token. A cell's manifest holds every decision group's scores, costs and per-batch scores (~117 KB on a
Qwen3-0.6B-deep shape); encoding the three files a cell writes took ~17 ms a cell on an H200 host, ~3 % of the
shared engine's 27-cell reference sweep (a GPU sampling profile, docs/performance.md).

`indented_json(doc, level)` builds the same text with one plain recursive call per container and `str.join`, and
answers strings with the C `encode_basestring_ascii` that `json.dumps` uses itself. It follows `_make_iterencode`'s
order of tests (str, None, True, False, int, float, list/tuple, dict, else `default`), so subclasses of those types
and objects answered by `default=str` give what `json.dumps` gives. Anything it does not reproduce exactly — a dict
key that is not a string (json converts it and sorts the originals), a reference cycle — is handed to `json.dumps`
itself, which gives the text or the error it always gave. tests/test_json_text.py compares both on generated
documents; the summary's tests (tests/test_summary_text.py, tests/test_run_pipeline.py) read real sweeps' files.
On the 109 documents of a `cpu-deep` sweep: 0.13 s against json's 0.23 s (2-core box, best of 7).
"""

from __future__ import annotations

import json
from json.encoder import encode_basestring_ascii
from typing import Any

_INDENT = "  "
_FLOAT_REPR = float.__repr__
_INT_REPR = int.__repr__
_INF = float("inf")


class _NotMine(Exception):
    """Raised inside the fast encoder for what only `json.dumps` answers exactly."""


def reference_dumps(doc: Any) -> str:
    """The definition: what `indented_json` must equal (without its trailing newline)."""
    return json.dumps(doc, indent=2, sort_keys=True, allow_nan=True, default=str)


def indented_json(doc: Any, level: int = 0) -> str:
    """`reference_dumps(doc)`, with every line after the first indented by `level` more steps of two spaces (what
    `reference_dumps(doc).replace("\\n", "\\n" + "  " * level)` gives: JSON strings hold no raw newline)."""
    try:
        return _encode(doc, "\n" + _INDENT * level)
    except (_NotMine, RecursionError):
        text = reference_dumps(doc)  # raises json's own error for a cycle or a key it cannot take
        return text.replace("\n", "\n" + _INDENT * level) if level else text


def _float(o: float) -> str:
    if o != o:
        return "NaN"
    if o == _INF:
        return "Infinity"
    if o == -_INF:
        return "-Infinity"
    return _FLOAT_REPR(o)


def _encode(o: Any, nl: str) -> str:
    """`o` at the indentation `nl` (a newline and the current indentation); exact types first (the common case)."""
    t = type(o)
    if t is float:
        return _FLOAT_REPR(o) if o - o == 0.0 else _float(o)  # NaN and the infinities fail o - o == 0
    if t is str:
        return encode_basestring_ascii(o)
    if t is int:
        return _INT_REPR(o)
    if t is dict:
        return _dict(o, nl)
    if t is list or t is tuple:
        return _list(o, nl)
    if o is None:
        return "null"
    if o is True:
        return "true"
    if o is False:
        return "false"
    return _other(o, nl)


def _other(o: Any, nl: str) -> str:
    """Subclasses and everything else, in `_make_iterencode`'s order of tests."""
    if isinstance(o, str):
        return encode_basestring_ascii(o)
    if isinstance(o, int):  # bool was answered by identity before
        return _INT_REPR(o)
    if isinstance(o, float):
        return _float(o)
    if isinstance(o, (list, tuple)):
        return _list(o, nl)
    if isinstance(o, dict):
        return _dict(o, nl)
    return _encode(str(o), nl)  # default=str: the object's text, encoded as a string


def _list(o: Any, nl: str) -> str:
    if not o:
        return "[]"
    inner = nl + _INDENT
    return "[" + inner + ("," + inner).join([_encode(v, inner) for v in o]) + nl + "]"


def _dict(o: Any, nl: str) -> str:
    if not o:
        return "{}"
    if not _STR.issuperset(map(type, o)):
        raise _NotMine  # json converts such keys after sorting the originals: its own answer
    inner = nl + _INDENT
    return (
        "{" + inner
        + ("," + inner).join([encode_basestring_ascii(k) + ": " + _encode(v, inner) for k, v in sorted(o.items())])
        + nl + "}"
    )


_STR = frozenset({str})
