"""The append-only `rows.jsonl`: one line per finished cell, flushed and fsynced before the next cell starts.

A crash can at worst leave a partial last line (the process died inside `write`). Reading ignores it and
`RowLog.repair` truncates it away before appending, so an interrupted run never corrupts what was recorded. A last
line that is a complete row and lacks only its newline (a crash between the two, or an editor that strips it) is a
row, not a torn line: repair adds the newline instead. The log is opened without following links
(store/atomic.py).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from ..errors import InputError
from .atomic import append_bytes, open_no_follow, write_error


def read_rows(path: str | Path, strict: bool = False) -> list[dict[str, Any]]:
    """All complete rows; a trailing partial line (from a crash) is ignored. `strict` (the run that is about to
    append): any other line that is not a row is an InputError naming the file and line, instead of being skipped
    (skipping would silently re-run that cell and hide a damaged log)."""
    path = Path(path)
    if not path.exists() and not path.is_symlink():
        return []
    rows = []
    if strict:  # the log the run appends to: never read (or later write) through a planted link
        fd = open_no_follow(path, os.O_RDONLY)
        with os.fdopen(fd, "rb") as fh:
            data = fh.read()
    else:
        with path.open("rb") as fh:
            data = fh.read()
    lines = data.split(b"\n")
    for lineno, raw in enumerate(lines, 1):
        if not raw.strip():
            continue
        row = parse_row(raw)
        if row is not None:
            if strict:
                problem = row_problem(row)
                if problem:
                    raise InputError(f"{path}: line {lineno}: {problem} (the log is damaged; move the line aside)")
            rows.append(row)
        elif strict and lineno < len(lines):  # not the torn last line (which has no newline after it)
            raise InputError(f"{path}: line {lineno}: not a row (a JSON object with a string cell_id); the log is "
                             "damaged; move the line aside")
    return rows


class RowTail:
    """`read_rows(path)` (not strict) for a log that only grows, parsing only what was appended since the last call.

    Why: the sweep rewrites its summary after every cell from every row of the log; parsing the whole log each time
    (the reading layer's strict JSON parser, ~0.5 ms a row) makes a sweep of n cells parse O(n^2) rows (a 324-row
    log: ~170 ms a read on a 2-core box). The file is still read whole at every call (a few MB at most, compared
    byte for byte with what was parsed before, which is cheap next to parsing): when those bytes changed (the log
    deleted and made again, or edited in place) it is parsed again from the start, so the result is always what
    `read_rows` returns. The rows returned are the same objects from call to call (the caller must not change
    them). A last line without its newline is parsed each time and kept only once its newline is there, as
    `read_rows` would count it."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._rows: list[dict[str, Any]] = []
        self._parsed = b""  # the bytes whose complete lines gave self._rows

    def read(self) -> list[dict[str, Any]]:
        try:
            with self.path.open("rb") as fh:
                data = fh.read()
        except FileNotFoundError:
            self._rows, self._parsed = [], b""
            return []
        if not data.startswith(self._parsed):  # not the log parsed before: parse it whole
            self._rows, self._parsed = [], b""
        new = data[len(self._parsed):]
        end = new.rfind(b"\n") + 1  # what ends in a newline is final
        for raw in new[:end].split(b"\n"):
            if raw.strip():
                row = parse_row(raw)
                if row is not None:
                    self._rows.append(row)
        if end:
            self._parsed = data[: len(self._parsed) + end]
        tail = new[end:]
        last = parse_row(tail) if tail.strip() else None
        return self._rows if last is None else [*self._rows, last]


def row_problem(row: dict[str, Any]) -> str | None:
    """Why a parsed row cannot be used, or None (the fields a resumed run reads; reports validate the rest)."""
    from ..reports.summary_io import validate_row

    try:
        validate_row(row, "", "row")
    except InputError as exc:
        return str(exc).lstrip(": ")
    return None


def parse_row(raw: bytes) -> dict[str, Any] | None:
    """A complete row (a JSON object with a string `cell_id`), or None for a torn or foreign line."""
    from ..inputs.documents import DATA, DocumentError, parse_json

    try:  # the reading layer: no duplicate keys, lone surrogates or overflowing numbers slip into a summary
        row = parse_json(raw.decode("utf-8", errors="strict"), "row", DATA)
    except (DocumentError, UnicodeDecodeError):  # a torn last line (or, read strictly, a damaged one)
        return None
    return row if isinstance(row, dict) and isinstance(row.get("cell_id"), str) else None


def latest_by_cell(rows: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The newest row per cell id (a retried error cell appends a newer row)."""
    out: dict[str, dict[str, Any]] = {}
    for row in rows:
        out[row["cell_id"]] = row
    return out


class RowLog:
    def __init__(self, path: str | Path):
        self.path = Path(path)

    def repair(self) -> int:
        """Make the log end with a newline: a complete last row gets its newline (returns 0), a torn last line is
        truncated away (returns the number of bytes removed)."""
        if not self.path.exists() and not self.path.is_symlink():
            return 0
        fd = open_no_follow(self.path, os.O_RDWR)
        try:
            size = os.fstat(fd).st_size
            if size == 0:
                return 0
            data = b""
            while chunk := os.read(fd, 8 << 20):
                data += chunk
            if data.endswith(b"\n"):
                return 0
            last = data[data.rfind(b"\n") + 1 :]
            if parse_row(last) is not None:
                os.lseek(fd, 0, os.SEEK_END)
                os.write(fd, b"\n")
                os.fsync(fd)
                return 0
            keep = size - len(last)
            os.ftruncate(fd, keep)
            os.fsync(fd)
            return size - keep
        except OSError as exc:
            raise write_error(exc, self.path) from None
        finally:
            os.close(fd)

    def append(self, row: dict[str, Any]) -> None:
        line = json.dumps(row, sort_keys=True, default=str, allow_nan=True) + "\n"
        append_bytes(self.path, line.encode("utf-8"))
