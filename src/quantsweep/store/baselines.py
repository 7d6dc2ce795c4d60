"""Baselines: sweep summaries kept as reference records, found again for a new sweep, and pruned by a retention rule.

A **record** is a copy of a sweep summary plus what identifies the sweep it can be compared with: the matrix name,
a hash of the matrix section (so a changed matrix is visible), the model, the hardware fingerprint, and the lane
and profile labels (`labels.lane` or `labels.execution_lane`, `labels.profile`). Records that agree on everything
but the hash and the date form a **group**; the baseline of a summary is the newest *pinned* record of its group,
or, when none is pinned, the newest record (the seed runbook's rule, for sweeps instead of test ids).

Layout under `--storage-root`: `records/<id>/summary.json`, the cells' manifests under `records/<id>/cells/<cell>/`
(the stored rows point there, so the record keeps its per-layer recipes when the sweep folder is re-run or
deleted; `<cell>` is the cell id, or a hash of it when the id is not a plain file name) and
`records/<id>/record.json`. A record is written into a staging folder and renamed into place whole, so a record
folder without `record.json` can only be left by an older version or by hand: it is ignored (and removed by
`prune`). `prune` renames a record away (`.removing-<id>`) before deleting it, so a failed removal never leaves a
half record that still resolves. Retention (`prune --keep-last N`, default 10): per group, the newest N unpinned
records stay; pinned records always stay. Every file is read through the reading layer (inputs/documents.py) and
`record.json` is validated (`Record`), so a damaged store fails with the file and the field. Pure: no torch.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import re
import shutil
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from ..errors import InputError
from ..inputs.documents import SMALL, read_json
from ..reports.fields import show
from .atomic import atomic_write_json, check_output_dir, dumps, staged_outputs, write_error

RECORDS = "records"
RECORD = "record.json"
SUMMARY = "summary.json"
KEEP_LAST = 10
REMOVING = ".removing-"
_PLAIN_NAME = re.compile(r"^[A-Za-z0-9_-][A-Za-z0-9._-]{0,99}$")


def pydantic_location(loc: tuple[Any, ...]) -> str:
    """A Pydantic error location as the field path other messages use: `groups[0].cells`."""
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "(top level)"


def cell_folder(cell_id: str) -> str:
    """The folder name of a cell's manifest in a record: the id itself when it is a plain file name (what `run`
    writes), else a hash of it (an id from a hand-written summary may hold `/` or `..`)."""
    if _PLAIN_NAME.match(cell_id) and cell_id not in (".", ".."):
        return cell_id
    return "cell-" + hashlib.sha256(cell_id.encode()).hexdigest()[:16]


class Record(BaseModel):
    """`record.json`: also the published schema of a baseline record (docs/schemas/baseline-record.schema.json)."""

    model_config = ConfigDict(extra="forbid", strict=True)  # "yes" is not a pin, 3.0 is not a count

    id: str
    created_at: str
    matrix_name: str | None
    matrix_hash: str
    model: str | None
    hardware_fingerprint: str | None
    lane: str | None
    profile: str | None
    source: str
    cells: int = Field(ge=0)
    pinned: bool = False
    note: str | None = None

    @field_validator("created_at")
    @classmethod
    def _dated(cls, v: str) -> str:
        """Ages and ordering are computed from it: an ISO 8601 time with its UTC offset."""
        try:
            t = datetime.fromisoformat(v)
        except ValueError:
            raise ValueError(f"expected an ISO 8601 time such as 2026-01-02T03:04:05+00:00, got {v[:40]!r}") from None
        if t.tzinfo is None:
            raise ValueError(f"expected a time with its UTC offset (e.g. +00:00), got {v[:40]!r}")
        return v

    @property
    def group(self) -> tuple[str | None, ...]:
        return (self.matrix_name, self.model, self.hardware_fingerprint, self.lane, self.profile)

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump()


def identity(doc: dict[str, Any]) -> dict[str, Any]:
    """What groups a summary with its baselines (see the module doc)."""
    labels = doc.get("labels") or {}
    matrix = doc.get("matrix") or {}
    lane = labels.get("lane", labels.get("execution_lane"))
    profile = labels.get("profile", labels.get("vram_profile"))
    return {
        "matrix_name": matrix.get("name"),
        "matrix_hash": hashlib.sha256(json.dumps(matrix, sort_keys=True, default=str).encode()).hexdigest()[:16],
        "model": (doc.get("model") or {}).get("name"),
        "hardware_fingerprint": (doc.get("hardware") or {}).get("fingerprint"),
        "lane": None if lane is None else str(lane),
        "profile": None if profile is None else str(profile),
    }


class BaselineStore:
    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        if self.root.exists() and not self.root.is_dir():
            raise InputError(f"{self.root}: --storage-root is a file, not a folder")
        if self.records_dir.is_symlink():  # add would write, and prune delete, wherever it points
            raise InputError(f"{self.records_dir}: is a symbolic link; a baseline store's records must be its own "
                             "folder (--storage-root)")
        if self.records_dir.exists() and not self.records_dir.is_dir():
            raise InputError(f"{self.records_dir}: is a file, where the store keeps its records (--storage-root)")

    @property
    def records_dir(self) -> Path:
        return self.root / RECORDS

    def check_writable(self) -> None:
        """Refuse, before anything is read or written, a store this user cannot write into."""
        check_output_dir(self.records_dir, "--storage-root")

    def _folders(self) -> list[Path]:
        """Record folders (a hidden name is a staging or removal in progress, or one a crash left)."""
        if not self.records_dir.is_dir():
            return []
        try:
            entries = sorted(self.records_dir.iterdir())
        except OSError as exc:
            raise InputError(f"{self.records_dir}: cannot list the records: {exc.strerror or exc}") from None
        folders = [p for p in entries if not p.name.startswith(".") and p.is_dir()]
        for p in folders:
            if p.is_symlink():  # prune would remove the link's target's contents, or nothing
                raise InputError(f"{p}: is a symbolic link; a baseline record is a folder of the store (remove it)")
        return folders

    def records(self) -> list[Record]:
        """Every complete record, oldest first; a record file that is not one is an input error naming it."""
        out = []
        for folder in self._folders():
            path = folder / RECORD
            if not path.exists() and not path.is_symlink():
                continue  # an interrupted write of an older version: ignored, removed by prune
            data = read_json(path, SMALL, "baseline record")
            try:
                record = Record.model_validate(data)
            except ValidationError as exc:
                e = exc.errors()[0]
                raise InputError(f"{path}: {pydantic_location(e['loc'])}: {e['msg']}") from None
            if record.id != folder.name:  # the folder is what prune removes: they must agree
                raise InputError(f"{path}: id: {show(record.id)} is not its folder's name {folder.name!r}")
            out.append(record)
        return sorted(out, key=lambda r: (datetime.fromisoformat(r.created_at), r.id))

    def get(self, record_id: str) -> Record:
        for r in self.records():
            if r.id == record_id:
                return r
        raise InputError(f"{self.root}: no baseline record {show(record_id)} (see `quantsweep baseline list`)")

    def add(self, summary_path: str | Path, doc: dict[str, Any], pinned: bool, note: str | None = None,
            now: datetime | None = None, manifests: dict[str, dict[str, Any]] | None = None) -> Record:
        """Record `doc` (a validated summary). `manifests` (cell id -> manifest) are copied into the record, and the
        stored rows point at the copies, so that a record keeps its per-layer recipes after the sweep folder is
        re-run or deleted. The record appears whole or not at all."""
        self.check_writable()
        self.records()  # a damaged store is refused before it is written to
        now = now or datetime.now(UTC)
        doc = copy.deepcopy(doc)
        manifests = manifests or {}
        for r in doc.get("rows") or []:
            cid = r.get("cell_id") or r.get("key")  # a row without an id is known by its key (summary_io)
            if cid in manifests:
                r["path"] = f"cells/{cell_folder(cid)}"
        text = dumps(doc)
        ident = identity(doc)
        rid = now.strftime("%Y%m%dT%H%M%S") + "-" + hashlib.sha256(text.encode()).hexdigest()[:8]
        record = Record(id=rid, created_at=now.isoformat(timespec="seconds"), source=str(summary_path),
                        cells=len(doc.get("rows") or []), pinned=pinned, note=note, **ident)
        folder = self.records_dir / rid
        if folder.exists() or folder.is_symlink():
            raise InputError(f"{folder}: this summary is already recorded as {rid}")
        with staged_outputs(folder) as stage:
            for cell_id, manifest in manifests.items():
                atomic_write_json(stage / "cells" / cell_folder(cell_id) / "manifest.json", manifest)
            atomic_write_json(stage / SUMMARY, doc)
            atomic_write_json(stage / RECORD, record.to_dict())
        return record

    def set_pinned(self, record_id: str, pinned: bool) -> Record:
        self.check_writable()
        record = self.get(record_id)
        record.pinned = pinned
        atomic_write_json(self.records_dir / record.id / RECORD, record.to_dict())
        return record

    def resolve(self, doc: dict[str, Any]) -> tuple[Record | None, str]:
        """The baseline of a summary and why it was chosen."""
        ident = identity(doc)
        group = (ident["matrix_name"], ident["model"], ident["hardware_fingerprint"], ident["lane"], ident["profile"])
        candidates = [r for r in self.records() if r.group == group]
        if not candidates:
            return None, "no record with the same matrix name, model, hardware fingerprint, lane and profile"
        pinned = [r for r in candidates if r.pinned]
        if pinned:
            return pinned[-1], "the newest pinned record of the group"
        return candidates[-1], "the newest record of the group (none is pinned)"

    def summary_path(self, record: Record) -> Path:
        return self.records_dir / record.id / SUMMARY

    def prune(self, keep_last: int = KEEP_LAST, dry_run: bool = False) -> list[str]:
        """Remove, per group, the unpinned records older than the newest `keep_last`, and interrupted writes."""
        if keep_last < 0:
            raise InputError(f"--keep-last must be >= 0, got {keep_last}")
        if not dry_run and self.records_dir.is_dir():
            self.check_writable()
        removed: list[str] = []
        groups: dict[tuple, list[Record]] = {}
        for r in self.records():
            groups.setdefault(r.group, []).append(r)
        for members in groups.values():
            unpinned = [r for r in members if not r.pinned]
            stale = unpinned[: max(0, len(unpinned) - keep_last)]
            removed.extend(r.id for r in stale)
        removed.extend(p.name for p in self._folders() if not (p / RECORD).exists() and not (p / RECORD).is_symlink())
        if not dry_run:
            for rid in removed:
                self._remove(self.records_dir / rid)
            for leftover in self._leftovers():
                shutil.rmtree(leftover, ignore_errors=True)  # best effort: already out of every listing
        return sorted(removed)

    def _remove(self, folder: Path) -> None:
        """Rename the record out of every listing first (atomic: it no longer resolves), then delete it."""
        gone = folder.with_name(REMOVING + folder.name)
        try:
            os.rename(folder, gone)
        except OSError as exc:
            raise write_error(exc, folder) from None
        try:
            shutil.rmtree(gone)
        except OSError as exc:
            raise write_error(exc, gone) from None

    def _leftovers(self) -> list[Path]:
        """Folders a crashed `prune` (or `add`) left behind: hidden, so never listed, removed by the next prune."""
        if not self.records_dir.is_dir():
            return []
        return [p for p in self.records_dir.iterdir()
                if p.is_dir() and not p.is_symlink() and p.name.startswith((REMOVING, ".staging-"))]

    def health(self, now: datetime | None = None) -> dict[str, Any]:
        now = now or datetime.now(UTC)
        records = self.records()
        groups: dict[tuple, list[Record]] = {}
        for r in records:
            groups.setdefault(r.group, []).append(r)

        def age_days(r: Record) -> float:
            return round((now - datetime.fromisoformat(r.created_at)).total_seconds() / 86400, 2)

        return {
            "storage_root": str(self.root),
            "records": len(records),
            "pinned": sum(r.pinned for r in records),
            "missing_hardware_fingerprint": sum(r.hardware_fingerprint is None for r in records),
            "groups": [
                {
                    "matrix_name": g[0], "model": g[1], "hardware_fingerprint": g[2], "lane": g[3], "profile": g[4],
                    "records": len(ms), "pinned": sum(m.pinned for m in ms),
                    "newest_age_days": age_days(ms[-1]), "oldest_age_days": age_days(ms[0]),
                    "matrix_hashes": len({m.matrix_hash for m in ms}),
                }
                for g, ms in groups.items()
            ],
        }
