"""What exporting a cell needs, found and checked before any model is loaded (pure: no torch).

A cell folder holds the cell's manifest and `recipe.json`; the matrix (model, data, batch size) is in the sweep
summary a few folders up (`<output_root>/<sweep>/<pair>/<granularity>/<size>[/bits-B]`). The summary is accepted
only if one of its rows is this cell (same id) and that row is `ok`.

Every file is read through the reading layer and checked for what export uses (reports/manifest_io.py at the
`EXPORT` level, reports/summary_io.py, recipe.read_recipe), so a damaged cell is refused with the file and the
field before a model is loaded.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import InputError
from ..recipe import read_recipe
from ..reports.manifest_io import EXPORT, read_manifest_file
from ..reports.summary_io import MANIFEST, read_summary_document

SUMMARY = "sweep-summary.json"
REPRODUCED = ("kl_mean", "ppl_ratio", "top1_agreement")  # export/checkpoint.py's quality check


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


def locate(cell_dir: str | Path) -> ExportInputs:
    cell_dir = Path(cell_dir)
    if not cell_dir.is_dir():
        raise InputError(f"{cell_dir}: --cell is not a folder")
    manifest_path = cell_dir / MANIFEST
    if not manifest_path.exists() and not manifest_path.is_symlink():
        raise InputError(f"{manifest_path}: no cell manifest here")
    manifest = read_manifest_file(manifest_path, EXPORT)
    cell_id = manifest["cell"]["id"]
    recipe = cell_dir / "recipe.json"
    if not recipe.exists() and not recipe.is_symlink():
        raise InputError(f"{recipe}: missing: only a cell that ran to the end has a recipe to export")
    read_recipe(recipe)  # checked now, before the model is loaded; export reads it again to quantize
    for parent in list(cell_dir.resolve().parents)[:5]:
        path = parent / SUMMARY
        if not path.is_file():
            continue
        doc, _sha = read_summary_document(path)
        for i, row in enumerate(doc["rows"]):
            if row.get("cell_id") == cell_id:
                if row["status"] != "ok":
                    raise InputError(f"{path}: rows[{i}].status: cell {cell_id!r} is {row['status']}, not ok: "
                                     "nothing to export")
                if not isinstance(doc.get("matrix"), dict):
                    raise InputError(f"{path}: matrix: missing (the summary does not say how the model was built)")
                quality = row.get("quality") or {}
                for metric in REPRODUCED:  # what the rebuilt model is checked against before it is exported
                    v = quality.get(metric)
                    if v is not None and not math.isfinite(v):
                        raise InputError(f"{path}: rows[{i}].quality.{metric}: {v} (the cell diverged): there is no "
                                         "measured quality to check an export against")
                return ExportInputs(cell_dir, manifest, row, path, doc, recipe)
    raise InputError(f"{cell_dir}: no {SUMMARY} in the folders above lists cell {cell_id!r}")
