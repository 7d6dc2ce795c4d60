"""Artifacts other tools read: their Pydantic models (exported as JSON Schema under docs/schemas/) and their checks.

Why models and not free dicts: an artifact outlives the code that wrote it (a frontier history, a baseline store),
and a CI job or a dashboard reads it without quantsweep. The model is the contract: `quantsweep check-artifacts`
validates a file against it, and `docs/schemas/*.schema.json` are generated from these classes
(`write_schemas`; tests/test_artifacts.py fails when a committed schema differs from the code). Pure: pydantic only.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ..errors import InputError
from ..inputs.documents import SMALL, read_json
from ..store.baselines import Record, pydantic_location

FRONTIER_KIND = "quantsweep.frontier_explorer"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False, strict=True)


class ArtifactKey(_Strict):
    """What makes two frontiers comparable: the same hardware, lane and profile."""

    hardware_fingerprint: str | None
    lane: str | None
    profile: str | None


class Provenance(_Strict):
    summary: str
    summary_sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    commit: str | None
    dirty: bool | None = Field(description="the working tree had uncommitted changes when the sweep ran")
    matrix_name: str | None
    matrix_hash: str
    model: str | None
    versions: dict[str, Any]
    provenance_ref: str | None = Field(description="free text: where the run came from (e.g. ci:nightly#123)")


class FrontierPoint(_Strict):
    key: str
    cell_id: str | None
    pair: str | None
    achieved_bits: float
    quality: float
    kl_mean: float | None
    ppl_ratio: float | None
    top1_agreement: float | None
    role: str = Field(
        pattern=r"^(frontier|(baseline|minimum_viable|best_value)(\+(baseline|minimum_viable|best_value))*)$",
        description="baseline, minimum_viable, best_value (joined by +) or frontier",
    )


class FrontierGroup(_Strict):
    group: str
    model: str | None
    dataset_size: str | None
    granularity: str | None
    kv_cache: str = Field(default="none", description="the group's KV-cache quantization (axes.kv_cache)")
    cells: int = Field(ge=0)
    rankable: int = Field(ge=0)
    frontier: list[FrontierPoint]
    baseline: str | None
    minimum_viable: str | None
    best_value: str | None
    recommendation: str


class FrontierArtifact(_Strict):
    kind: Literal["quantsweep.frontier_explorer"] = FRONTIER_KIND
    schema_version: Literal["1"] = "1"
    generated_at: str
    key: ArtifactKey
    provenance: Provenance
    metric: Literal["kl_mean", "ppl_ratio"]
    max_quality: float
    bits: Literal["achieved", "storage"]
    include_invalid: bool
    groups: list[FrontierGroup]


SCHEMAS: dict[str, type[BaseModel]] = {"frontier": FrontierArtifact, "baseline-record": Record}  # store/baselines.py
ARTIFACT_NAMES = {"frontier": "frontier artifact", "baseline-record": "baseline record"}


def write_schemas(folder: str | Path) -> list[Path]:
    out = []
    for name, model in SCHEMAS.items():
        path = Path(folder) / f"{name}.schema.json"
        path.write_text(json.dumps(model.model_json_schema(), indent=2, sort_keys=True) + "\n")
        out.append(path)
    return out


def check_artifact(kind: str, path: str | Path) -> dict[str, Any]:
    """Validate one file; InputError naming the file and the first field that breaks the contract."""
    path = Path(path)
    doc = read_json(path, SMALL, ARTIFACT_NAMES[kind])
    try:
        SCHEMAS[kind].model_validate(doc)
    except ValidationError as exc:
        e = exc.errors()[0]
        raise InputError(f"{path}: {pydantic_location(e['loc'])}: {e['msg']} ({len(exc.errors())} problem(s) in all)"
                         ) from None
    return {"file": str(path), "kind": kind, "valid": True}
