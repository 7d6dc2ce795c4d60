"""Baselines: sweep summaries kept as reference records, found again for a new sweep, and pruned by a retention rule.

A **record** is a copy of a sweep summary plus what identifies the sweep it can be compared with: the matrix name,
a hash of the matrix section (so a changed matrix is visible), the model, the hardware fingerprint, and the lane
and profile labels (`labels.lane` or `labels.execution_lane`, `labels.profile`). Records that agree on everything
but the hash and the date form a **group**; the baseline of a summary is the newest *pinned* record of its group,
or, when none is pinned, the newest record (the seed runbook's rule, for sweeps instead of test ids).

Layout under `--storage-root`: `records/<id>/summary.json`, the cells' manifests under `records/<id>/cells/<cell id>/`
(the stored rows point there, so the record keeps its per-layer recipes when the sweep folder is re-run or
deleted) and `records/<id>/record.json`, each written atomically; `record.json` last, so a record without it is an interrupted write and is ignored (and removed by
`prune`). Retention (`prune --keep-last N`, default 10): per group, the newest N unpinned records stay; pinned
records always stay. Pure: no torch.
"""

from __future__ import annotations

import copy
import hashlib
import json
import shutil
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ..errors import InputError
from .atomic import atomic_write_json, dumps

RECORDS = "records"
RECORD = "record.json"
SUMMARY = "summary.json"
KEEP_LAST = 10


class Record(BaseModel):
    """`record.json`: also the published schema of a baseline record (docs/schemas/baseline-record.schema.json)."""

    model_config = ConfigDict(extra="forbid")

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

    @property
    def records_dir(self) -> Path:
        return self.root / RECORDS

    def records(self) -> list[Record]:
        """Every complete record, oldest first; a record file that is not one is an input error naming it."""
        out = []
        if not self.records_dir.is_dir():
            return out
        for folder in sorted(p for p in self.records_dir.iterdir() if p.is_dir()):
            path = folder / RECORD
            if not path.exists():
                continue  # an interrupted write: ignored, removed by prune
            if not path.is_file():
                raise InputError(f"{path}: not a file (a baseline record is a JSON file)")
            try:
                data = json.loads(path.read_text(encoding="utf-8"))
                record = Record.model_validate(data)
            except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
                raise InputError(f"{path}: not a baseline record ({type(exc).__name__}: {exc})") from None
            except ValidationError as exc:
                e = exc.errors()[0]
                loc = ".".join(str(x) for x in e["loc"]) or "(top level)"
                raise InputError(f"{path}: {loc}: {e['msg']}") from None
            if record.id != folder.name:  # the folder is what prune removes: they must agree
                raise InputError(f"{path}: id: {record.id!r} is not its folder's name {folder.name!r}")
            out.append(record)
        return sorted(out, key=lambda r: (r.created_at, r.id))

    def get(self, record_id: str) -> Record:
        for r in self.records():
            if r.id == record_id:
                return r
        raise InputError(f"{self.root}: no baseline record {record_id!r} (see `quantsweep baseline list`)")

    def add(self, summary_path: str | Path, doc: dict[str, Any], pinned: bool, note: str | None = None,
            now: datetime | None = None, manifests: dict[str, dict[str, Any]] | None = None) -> Record:
        """Record `doc`. `manifests` (cell id -> manifest) are copied into the record, and the stored rows point at
        the copies, so that a record keeps its per-layer recipes after the sweep folder is re-run or deleted."""
        now = now or datetime.now(UTC)
        doc = copy.deepcopy(doc)
        manifests = manifests or {}
        for r in doc.get("rows") or []:
            if isinstance(r, dict) and r.get("cell_id") in manifests:
                r["path"] = f"cells/{r['cell_id']}"
        text = dumps(doc)
        ident = identity(doc)
        rid = now.strftime("%Y%m%dT%H%M%S") + "-" + hashlib.sha256(text.encode()).hexdigest()[:8]
        record = Record(id=rid, created_at=now.isoformat(timespec="seconds"), source=str(summary_path),
                        cells=len(doc.get("rows") or []), pinned=pinned, note=note, **ident)
        folder = self.records_dir / rid
        if (folder / RECORD).exists():
            raise InputError(f"{folder}: this summary is already recorded as {rid}")
        try:
            folder.mkdir(parents=True, exist_ok=True)
            for cell_id, manifest in manifests.items():
                atomic_write_json(folder / "cells" / str(cell_id) / "manifest.json", manifest)
            atomic_write_json(folder / SUMMARY, doc)
            atomic_write_json(folder / RECORD, record.to_dict())  # last: its presence makes the record complete
        except OSError as exc:
            raise InputError(f"{folder}: cannot write the baseline record: {exc.strerror or exc}") from None
        return record

    def set_pinned(self, record_id: str, pinned: bool) -> Record:
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
        removed: list[str] = []
        groups: dict[tuple, list[Record]] = {}
        for r in self.records():
            groups.setdefault(r.group, []).append(r)
        for members in groups.values():
            unpinned = [r for r in members if not r.pinned]
            stale = unpinned[: max(0, len(unpinned) - keep_last)]
            removed.extend(r.id for r in stale)
        if self.records_dir.is_dir():
            removed.extend(p.name for p in self.records_dir.iterdir() if p.is_dir() and not (p / RECORD).exists())
        if not dry_run:
            for rid in removed:
                shutil.rmtree(self.records_dir / rid, ignore_errors=True)
        return sorted(removed)

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
