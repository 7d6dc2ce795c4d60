"""The sweep summary's JSON text, rewritten after every cell without encoding every row again each time.

`sweep-summary.json` is written in the form of every quantsweep document (store/atomic.py `dumps`: indented,
sorted keys), whose encoder is CPython's pure-Python one (the C encoder does no indentation). Re-encoding every
row after every cell makes a sweep of n cells pay O(n^2): ~150 ms a write at 324 rows on a 2-core box, against the
seconds a cell takes. A row's text is the same from write to write unless the row changed, so `SummaryText` keeps
each row's text and encodes only the new ones and the rest of the document. The result is the text `dumps` gives,
character for character (tests/test_summary_text.py checks it write after write on rows of a real row's shape;
tests/test_run_pipeline.py on a real sweep's summary).

A row's text is reused only while the row is the same object as when it was encoded and its two fields that
`finalize_rows` recomputes across rows (`reasons`, `valid`) are unchanged; the caller hands over the log's rows
(store/rows.py `RowTail`: the same objects from call to call) beside the finalized copies that go into the file.
Those copies are shallow: a logged row must never be changed in place (nothing in quantsweep does; a change is a
new row appended to the log).
"""

from __future__ import annotations

import json
from typing import Any

from .atomic import dumps
from .json_text import indented_json

_TOKEN = "\x00quantsweep-rows\x00"  # stands for the rows in the rest of the document (JSON-escaped: unique)
_INDENT = "    "  # a row is an item of a list inside the top-level object: two levels of two spaces


def _encode(row: dict[str, Any]) -> str:
    return indented_json(row, level=2)  # = dumps(row) without its newline, every further line indented by _INDENT


class SummaryText:
    def __init__(self) -> None:
        self._rows: dict[int, tuple[dict[str, Any], Any, Any, str]] = {}  # id(log row) -> (it, reasons, valid, text)

    def dumps(self, doc: dict[str, Any], log_rows: list[dict[str, Any]]) -> str:
        """`dumps(doc)`, where `doc["rows"]` are the finalized copies of `log_rows`, in the same order."""
        rows = doc.get("rows")
        if not isinstance(rows, list) or len(rows) != len(log_rows):
            return dumps(doc)
        head = dumps({**doc, "rows": _TOKEN})
        token = json.dumps(_TOKEN)
        if head.count(token) != 1:  # the token cannot be told from the document's own text
            return dumps(doc)
        kept: dict[int, tuple[dict[str, Any], Any, Any, str]] = {}
        texts = []
        for log_row, row in zip(log_rows, rows, strict=True):
            reasons, valid = row.get("reasons"), row.get("valid")
            cached = self._rows.get(id(log_row))
            if cached is not None and cached[0] is log_row and cached[1] == reasons and cached[2] == valid:
                text = cached[3]
            else:
                text = _encode(row)
            kept[id(log_row)] = (log_row, reasons, valid, text)
            texts.append(text)
        self._rows = kept  # rows no longer in the summary are forgotten
        block = "[]" if not texts else "[\n" + ",\n".join(_INDENT + t for t in texts) + "\n  ]"
        return head.replace(token, block, 1)
