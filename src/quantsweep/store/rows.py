"""The append-only `rows.jsonl`: one line per finished cell, flushed and fsynced before the next cell starts.

A crash can at worst leave a partial last line (the process died inside `write`). Reading ignores it and
`RowLog.open` truncates it away before appending, so an interrupted run never corrupts what was recorded.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any


def read_rows(path: str | Path) -> list[dict[str, Any]]:
    """All complete rows; a trailing partial line (from a crash) is ignored."""
    path = Path(path)
    if not path.exists():
        return []
    rows = []
    with path.open("rb") as fh:
        data = fh.read()
    for raw in data.split(b"\n"):
        if not raw.strip():
            continue
        try:
            row = json.loads(raw)
        except json.JSONDecodeError:
            continue  # only a torn last line can be invalid: complete lines are written whole
        if isinstance(row, dict):
            rows.append(row)
    return rows


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
        """Truncate a torn last line; returns the number of bytes removed."""
        if not self.path.exists():
            return 0
        size = self.path.stat().st_size
        if size == 0:
            return 0
        with self.path.open("rb+") as fh:
            fh.seek(0)
            data = fh.read()
            if data.endswith(b"\n"):
                return 0
            keep = data.rfind(b"\n") + 1
            fh.truncate(keep)
            fh.flush()
            os.fsync(fh.fileno())
            return size - keep

    def append(self, row: dict[str, Any]) -> None:
        line = json.dumps(row, sort_keys=True, default=str, allow_nan=True) + "\n"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("ab") as fh:
            fh.write(line.encode("utf-8"))
            fh.flush()
            os.fsync(fh.fileno())
