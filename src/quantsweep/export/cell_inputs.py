"""What exporting a cell needs, found and checked before any model is loaded (pure: no torch).

A cell folder holds the cell's manifest and `recipe.json`; the matrix (model, data, batch size) is in the sweep
summary a few folders up (`<output_root>/<sweep>/<pair>/<granularity>/<size>[/bits-B]`). The summary is accepted
only if one of its rows is this cell (same id) and that row is `ok`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import InputError
from ..reports.summary_io import validate_summary

SUMMARY = "sweep-summary.json"


@dataclass
class ExportInputs:
    cell_dir: Path
    manifest: dict[str, Any]
    row: dict[str, Any]
    summary_path: Path
    summary: dict[str, Any]
    recipe_path: Path

    @property
    def cell_id(self) -> str:
        return str(self.manifest["cell"]["id"])


def _read_json(path: Path, what: str) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InputError(f"{path}: no {what} here") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputError(f"{path}: unreadable {what} ({type(exc).__name__}: {exc})") from None


def locate(cell_dir: str | Path) -> ExportInputs:
    cell_dir = Path(cell_dir)
    if not cell_dir.is_dir():
        raise InputError(f"{cell_dir}: --cell is not a folder")
    manifest = _read_json(cell_dir / "manifest.json", "cell manifest")
    cell = manifest.get("cell") if isinstance(manifest, dict) else None
    if not isinstance(cell, dict) or not isinstance(cell.get("id"), str):
        raise InputError(f"{cell_dir / 'manifest.json'}: cell.id: missing (not a cell manifest)")
    recipe = cell_dir / "recipe.json"
    if not recipe.is_file():
        raise InputError(f"{recipe}: missing: only a cell that ran to the end has a recipe to export")
    for parent in list(cell_dir.resolve().parents)[:5]:
        path = parent / SUMMARY
        if not path.is_file():
            continue
        doc = _read_json(path, "sweep summary")
        validate_summary(doc, str(path))
        for row in doc["rows"]:
            if row.get("cell_id") == cell["id"]:
                if row["status"] != "ok":
                    raise InputError(f"{path}: rows: cell {cell['id']} is {row['status']}, not ok: nothing to export")
                if not isinstance(doc.get("matrix"), dict):
                    raise InputError(f"{path}: matrix: missing (the summary does not say how the model was built)")
                return ExportInputs(cell_dir, manifest, row, path, doc, recipe)
    raise InputError(f"{cell_dir}: no {SUMMARY} in the folders above lists cell {cell['id']}")
