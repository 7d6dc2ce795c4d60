"""The lm-eval post-phase of `quantsweep run`: what is left to evaluate once the last cell finished, and how its
results are recorded (docs/trust.md, "Downstream accuracy").

Two things happen after the cells, in the process that holds the model (execution/downstream_runs.py):

- **the baseline, once per sweep**: the unquantized model through lm-eval, stored in `<sweep>/lm-eval-baseline.json`
  (written atomically, with the settings it was computed under). Every later run of the sweep, and every Ray
  worker, reads it instead of evaluating again; the summary's `baseline.lm_eval` is this file's block.
- **`cells: frontier`**: the cells on the quality-vs-bits frontier of their group, as the report draws it
  (`reports/frontier.py` through `trust/downstream.frontier_cell_ids`, never a second definition), that have no
  lm-eval result yet, each rebuilt from its recipe.

How a later result attaches to a committed row: `rows.jsonl` is append-only, so the cell's row is appended again
with `trust.lm_eval` set and `revision` one higher; readers keep the newest row per cell id (store/rows.py
`latest_by_cell`), so it supersedes the earlier one. Order per cell, as for a cell's first row: the manifest's
`trust.lm_eval` is written atomically, then the row is appended (the commit point). A run killed during the phase
loses at most the cell being evaluated: the next run recomputes the frontier from the rows, finds which frontier
cells still lack `trust.lm_eval` and whether the baseline file exists, and does only that.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import InputError
from ..inputs.documents import DATA, DocumentError, read_json_object
from ..planning import Plan
from ..reports.fields import Fields
from ..reports.trust_io import check_lm_eval
from ..schema import LmEvalSpec, Matrix
from ..store.atomic import atomic_write_json
from ..store.validity import finalize_rows
from ..trust.downstream import cell_selected, frontier_cell_ids, wants_baseline

BASELINE_FILE = "lm-eval-baseline.json"  # = sweep.LM_EVAL_BASELINE_FILE
BASELINE_KIND = "quantsweep.lm_eval_baseline"
REBUILT_KL_RTOL = 1e-3  # the rebuilt model's KL against the row's (export/checkpoint.py's QUALITY_RTOL)


def baseline_settings(spec: LmEvalSpec, model: dict[str, Any]) -> dict[str, Any]:
    """What the baseline's lm-eval result depends on, beyond the model: a file written under other settings is
    not this sweep's baseline (it is evaluated again and the file replaced)."""
    return {"tasks": list(spec.tasks), "include_path": spec.include_path, "num_fewshot": spec.num_fewshot,
            "limit": spec.limit, "batch_size": spec.batch_size, "model": model}


def read_baseline(sweep_dir: Path, settings: dict[str, Any]) -> dict[str, Any] | None:
    """The stored baseline block, or None when absent, unreadable, invalid or computed under other settings
    (a damaged file is never an error: the baseline is evaluated again and the file rewritten)."""
    path = sweep_dir / BASELINE_FILE
    if not path.exists() and not path.is_symlink():
        return None
    try:
        doc = read_json_object(path, DATA, "lm-eval baseline")
        if doc.get("kind") != BASELINE_KIND or doc.get("settings") != settings:
            return None
        block = doc.get("lm_eval")
        check_lm_eval(Fields(str(path)), "lm_eval", block)
    except (DocumentError, InputError):
        return None
    return block if isinstance(block, dict) and block else None


def write_baseline(sweep_dir: Path, settings: dict[str, Any], block: dict[str, Any]) -> None:
    atomic_write_json(sweep_dir / BASELINE_FILE, {"kind": BASELINE_KIND, "settings": settings, "lm_eval": block})


@dataclass
class PhasePlan:
    """What the post-phase has left to do."""

    baseline: bool = False
    cells: list[tuple[Any, dict[str, Any]]] = field(default_factory=list)  # (planned cell, its latest row)

    def __bool__(self) -> bool:
        return self.baseline or bool(self.cells)


def model_identity(matrix: Matrix) -> dict[str, Any]:
    """The model part of the baseline's settings: the matrix's model section (source, path, preset, dtype) and
    the weights' fingerprint without reading them (file sizes, modification times,
    safetensors headers: inputs/model_fingerprint.py), so that weights replaced at the same path are evaluated again. Computed by the driver,
    which loads no model with Ray (the embedded model is fingerprinted by the GGUF it is converted from)."""
    from ..inputs.model_fingerprint import model_fingerprint

    spec = matrix.model
    out = spec.model_dump(mode="json", include={"source", "path", "preset", "dtype", "seed"})
    try:
        if spec.source == "embedded":
            from ..engine.models import embedded_gguf_path

            out["fingerprint"] = model_fingerprint(spec, str(embedded_gguf_path()))
        else:
            out["fingerprint"] = model_fingerprint(spec, spec.path)
    except (OSError, InputError) as exc:  # checked before the run (preflight); a vanished file: no reuse
        out["fingerprint"] = f"unavailable: {type(exc).__name__}"
    return out


def plan_phase(matrix: Matrix, plan: Plan, latest: dict[str, dict[str, Any]], sweep_dir: Path,
               settings: dict[str, Any]) -> PhasePlan:
    """The baseline when no valid stored one exists under `settings` (`baseline_settings`) and some cell needs it,
    and (for `cells: frontier`, once every planned cell has a row) the frontier cells whose latest row has no
    `trust.lm_eval`."""
    spec = matrix.evaluation.lm_eval
    if spec is None:
        return PhasePlan()
    out = PhasePlan()
    rows = [latest[c.id] for c in plan.cells if c.id in latest]
    if spec.cells == "frontier" and len(rows) == len(plan.cells):
        on_front = set(frontier_cell_ids(finalize_rows(rows), matrix.kpi.quality_metric, matrix.kpi.max_quality))
        out.cells = [(c, latest[c.id]) for c in plan.cells
                     if c.id in on_front and "lm_eval" not in (latest[c.id].get("trust") or {})]
        needed = bool(on_front)
    else:
        needed = wants_baseline(spec.cells, sum(1 for c in plan.cells if cell_selected(spec.cells, c.key, c.id)))
    if needed and read_baseline(sweep_dir, settings) is None:
        out.baseline = True
    return out


def job_for(cell: Any) -> Any:
    """The cell's rebuild inputs read from its folder (manifest and recipe, checked as `export` checks them);
    an InputError names the file and field when they cannot be used."""
    from ..engine.cell_model import cell_calibration
    from ..recipe import read_recipe
    from ..reports.layer_report import MANIFEST
    from ..reports.manifest_io import EXPORT, read_manifest_file
    from .downstream_runs import DownstreamJob

    folder = Path(cell.path)
    manifest = read_manifest_file(folder / MANIFEST, EXPORT)
    return DownstreamJob(cell=cell, recipe=read_recipe(folder / "recipe.json"), calibration=cell_calibration(manifest))


def amended_row(row: dict[str, Any], block: dict[str, Any]) -> dict[str, Any]:
    """The next version of a committed row: `trust.lm_eval` set, `revision` one higher (store/rows.py keeps the
    newest row per cell id)."""
    new = copy.deepcopy(row)
    new["trust"] = {**(row.get("trust") or {}), "lm_eval": block}
    new["revision"] = int(row.get("revision") or 1) + 1
    return new


def record_in_manifest(cell: Any, block: dict[str, Any]) -> None:
    """The manifest's `trust.lm_eval`, rewritten atomically before the row is appended. A manifest that cannot be
    read is left as it is (the row, the commit point, still records the result)."""
    from ..reports.layer_report import MANIFEST

    path = Path(cell.path) / MANIFEST
    try:
        doc = read_json_object(path, DATA, "cell manifest")
    except DocumentError:
        return
    doc["trust"] = {**(doc.get("trust") or {}), "lm_eval": block}
    atomic_write_json(path, doc)


def rebuilt_mismatch(row: dict[str, Any], block: dict[str, Any]) -> str | None:
    """A warning when the rebuilt model's KL is not the row's (relative 1e-3): lm-eval then scored another model."""
    kl, expected = block.get("rebuilt_kl_mean"), (row.get("quality") or {}).get("kl_mean")
    if not isinstance(kl, float) or not isinstance(expected, int | float):
        return None
    if abs(kl - expected) <= REBUILT_KL_RTOL * max(abs(expected), 1e-12):
        return None
    return (f"warning: {row.get('key')}: the model rebuilt from recipe.json has KL {kl:.6g} on the held-out "
            f"samples, the cell measured {expected:.6g}: its lm-eval scores are of a slightly different model")
