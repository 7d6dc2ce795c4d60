"""store/summary_text.py and store/rows.py `RowTail`: the summary written after every cell is the text of the
document encoder (store/atomic.py `dumps`), character for character, while only new or changed rows are encoded
and only appended lines are parsed."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

from quantsweep.store import summary_text
from quantsweep.store.atomic import dumps
from quantsweep.store.rows import RowLog, RowTail, read_rows
from quantsweep.store.validity import finalize_rows


def _row(i: int, fingerprint: str) -> dict:
    """A row of a real row's shape: nested objects, lists of floats, NaN and infinities, unicode, a newline."""
    return {
        "cell_id": f"c{i:03d}",
        "status": "ok",
        "reasons": [],
        "valid": True,
        "result_fingerprint": fingerprint,
        "key": f"wint4_afp16/w_group64/n{i}",
        "quality": {"kl_mean": 0.01 * i, "kl_p99": math.nan, "per_sequence": {"kl": [0.1, 0.2 * i, -0.0]}},
        "telemetry": {"phases": {"calibrate": 1.5, "score": math.inf}, "device": "cuda:0", "tokens": {"score": i}},
        "note": "état\nsecond line \u00e9 \u2603",
        "layers": [{"name": f"model.layers.{j}.mlp", "bits": [16.0, 4.25], "chosen": "none"} for j in range(3)],
    }


def _doc(rows: list[dict]) -> dict:
    return {"kind": "quantsweep.sweep_summary", "matrix": {"name": "m", "axes": {"pairs": ["a", "b"]}},
            "plan": {"cells": 9, "cell_ids": [f"c{i:03d}" for i in range(9)]}, "path": Path("/tmp/x"),
            "rows": rows, "stability_kpis": {"rate": {"value": math.nan}}}


def test_summary_text_equals_the_document_encoder_and_encodes_only_new_or_changed_rows(tmp_path, monkeypatch):
    encoded: list[str] = []
    real = summary_text._encode
    monkeypatch.setattr(summary_text, "_encode", lambda row: encoded.append(row["cell_id"]) or real(row))
    log = RowLog(tmp_path / "rows.jsonl")
    tail, text = RowTail(log.path), summary_text.SummaryText()
    assert text.dumps(_doc([]), []) == dumps(_doc([]))  # no row yet: "rows": []
    for i in range(6):
        # the fifth row repeats the second's result: finalize_rows marks both DUPLICATE_RESULT (the second changes)
        log.append(_row(i, "fp1" if i in (1, 4) else f"fp-{i}"))
        log_rows = tail.read()
        doc = _doc(finalize_rows(log_rows))
        encoded.clear()
        assert text.dumps(doc, log_rows) == dumps(doc), i
        expected = ["c001", "c004"] if i == 4 else [f"c{i:03d}"]
        assert encoded == expected, (i, encoded)  # the new row, and a row whose reasons changed; no other
    assert "DUPLICATE_RESULT" in dumps(doc) and json.loads(dumps(doc))["rows"][1]["valid"] is False
    # a document the token could be mistaken in is encoded whole
    odd = {**_doc(finalize_rows(log_rows)), "label": "\x00quantsweep-rows\x00"}
    assert text.dumps(odd, log_rows) == dumps(odd)


def test_row_tail_reads_what_read_rows_reads_parsing_only_appended_lines(tmp_path):
    path = tmp_path / "rows.jsonl"
    tail = RowTail(path)
    assert tail.read() == [] == read_rows(path)  # no log yet
    log = RowLog(path)
    log.append(_row(0, "a"))
    log.append(_row(1, "b"))
    first = tail.read()
    assert first == read_rows(path) and len(first) == 2
    with path.open("ab") as fh:
        fh.write(b'{"cell_id": "torn')  # a partial last line: not a row yet
    assert tail.read() == read_rows(path) == first
    with path.open("ab") as fh:
        fh.write(b'", "status": "ok"}')  # now a complete row without its newline: a row for read_rows too
    got = tail.read()
    assert got == read_rows(path) and got[-1]["cell_id"] == "torn" and len(got) == 3
    with path.open("ab") as fh:
        fh.write(b"\n")
    log.append(_row(2, "c"))
    again = tail.read()
    assert again == read_rows(path) and len(again) == 4
    assert again[0] is first[0] and again[1] is first[1]  # the rows read before are not parsed again
    path.write_bytes(path.read_bytes()[: len(json.dumps(_row(0, "a"), sort_keys=True)) + 1])  # shorter: read again
    assert tail.read() == read_rows(path) and len(read_rows(path)) == 1
    replaced = tmp_path / "other.jsonl"
    RowLog(replaced).append(_row(7, "z"))
    RowLog(replaced).append(_row(8, "y"))
    os.replace(replaced, path)  # another file in its place (another inode), longer than what was read
    assert [r["cell_id"] for r in tail.read()] == ["c007", "c008"] == [r["cell_id"] for r in read_rows(path)]
    # deleted and made again (the inode may come back), then rewritten in place, each time longer than before
    for rows in ([_row(5, "q"), _row(6, "r"), _row(9, "s")], [_row(3, "t"), _row(4, "u"), _row(2, "v"), _row(1, "w")]):
        path.unlink()
        for r in rows:
            RowLog(path).append(r)
        assert [r["cell_id"] for r in tail.read()] == [r["cell_id"] for r in rows] == [
            r["cell_id"] for r in read_rows(path)]
        with path.open("r+b") as fh:  # same file, other bytes: an editor saving in place
            fh.write(b"\n" * 40)
        assert tail.read() == read_rows(path)
