"""`quantsweep frontier`: the seed's frontier explorer artifact for one sweep, and its history by key.

The frontier per group is the report's (`reports/frontier.py`, the same rules and thresholds as `render-report`),
reduced to what a dashboard compares across runs: the frontier points with their roles, the three recommendations
and their text. It is keyed by hardware fingerprint + lane + profile (`store/baselines.identity`, the same labels
as baselines), and carries its provenance: the summary and its SHA-256, the commit, the matrix name and hash, the
model, library versions and a free `--provenance-ref`. With `--storage-root`, a copy is kept under
`<root>/<hardware>/<lane>/<profile>/<generated_at>.json` (`-2`, `-3`... when that second already has one: a
history never loses an entry), a history that later frontiers of the same key are compared with. The document is
validated against `FrontierArtifact` before it is written; neither file may be the summary it was built from.
"""

from __future__ import annotations

import contextlib
import re
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from ..errors import InputError
from ..store.atomic import atomic_write_json, check_output_dir, check_output_file, staged_outputs
from ..store.baselines import identity
from .artifacts import FrontierArtifact
from .frontier import build_frontier
from .outputs import check_not_an_input
from .summary_io import load_summary


def build_artifact(summary_path: str | Path, provenance_ref: str | None = None, include_invalid: bool = False,
                   bits: str = "achieved", generated_at: str | None = None) -> dict[str, Any]:
    s = load_summary(summary_path)
    frontier = build_frontier(s.rows, s.metric, s.max_quality, include_invalid, bits)
    points = {p["key"]: p for p in frontier["points"]}
    ident = identity(s.doc)
    groups = []
    for g in frontier["groups"]:
        front = []
        for key in g["frontier"]:
            p = points[key]
            front.append({
                "key": key, "cell_id": p["cell_id"], "pair": p["pair"], "achieved_bits": p["achieved_bits"],
                "quality": p["quality"], "kl_mean": p["kl_mean"], "ppl_ratio": p["ppl_ratio"],
                "top1_agreement": p["top1_agreement"], "role": p["frontier_role"] or "frontier",
            })
        groups.append({
            "group": g["group"], "model": g["model"], "dataset_size": g["dataset_size"],
            "granularity": g["granularity"], "kv_cache": g["kv_cache"], "cells": g["cells"],
            "rankable": g["rankable"], "frontier": front,
            "baseline": g["baseline"], "minimum_viable": g["minimum_viable"], "best_value": g["best_value"],
            "recommendation": g["recommendation"],
        })
    doc = {
        "kind": "quantsweep.frontier_explorer",
        "schema_version": "1",
        "generated_at": generated_at or datetime.now(UTC).isoformat(timespec="seconds"),
        "key": {"hardware_fingerprint": ident["hardware_fingerprint"], "lane": ident["lane"],
                "profile": ident["profile"]},
        "provenance": {
            "summary": str(summary_path),
            "summary_sha256": s.sha256,  # of the bytes that were read and validated
            **_commit(s.doc.get("commit")),
            "matrix_name": ident["matrix_name"],
            "matrix_hash": ident["matrix_hash"],
            "model": ident["model"],
            "versions": s.doc.get("versions") or {},
            "provenance_ref": provenance_ref,
        },
        "metric": frontier["metric"],
        "max_quality": frontier["max_quality"],
        "bits": bits,
        "include_invalid": include_invalid,
        "groups": groups,
    }
    FrontierArtifact.model_validate(doc)  # the contract, before anything is written
    return doc


def _commit(commit: Any) -> dict[str, Any]:
    """`run` records {sha, dirty}; hand-written summaries may hold the sha alone."""
    if isinstance(commit, dict):
        sha, dirty = commit.get("sha"), commit.get("dirty")
        return {"commit": sha if isinstance(sha, str) else None, "dirty": dirty if isinstance(dirty, bool) else None}
    return {"commit": commit if isinstance(commit, str) else None, "dirty": None}


def _safe(part: str | None) -> str:
    """One path component from a free-form key part: never empty, `.` or `..` (a summary's hardware fingerprint or
    lane must not climb out of --storage-root)."""
    name = re.sub(r"[^A-Za-z0-9._-]+", "_", part or "none")[:80]
    return "_" + name if not name.strip(".") else name


def write_artifact(doc: dict[str, Any], out: str | Path, storage_root: str | Path | None = None) -> list[str]:
    """The artifact at `out` and, with `storage_root`, its copy in the history. Every target is checked before
    anything is written; both files are written before either is moved into place."""
    targets = [check_output_file(out, "--out")]
    check_not_an_input(targets, [doc["provenance"]["summary"]], "--out")
    if storage_root is not None:
        root = check_output_dir(storage_root, "--storage-root")
        k = doc["key"]
        stamp = _safe(doc["generated_at"].replace(":", ""))
        folder = root / _safe(k["hardware_fingerprint"]) / _safe(k["lane"]) / _safe(k["profile"])
        path = folder / f"{stamp}.json"
        n = 1
        while path.exists() or path.is_symlink():  # two artifacts of one key in one second: both are kept
            n += 1
            path = folder / f"{stamp}-{n}.json"
        if not path.resolve().is_relative_to(root.resolve()):  # belt and braces: the history stays under its root
            raise InputError(f"--storage-root {root}: the frontier's key would place it outside, at {path}")
        targets.append(check_output_file(path, "--storage-root"))
        check_not_an_input(targets[1:], [doc["provenance"]["summary"]], "--storage-root")
    with contextlib.ExitStack() as stack:
        for path in reversed(targets):  # contexts exit last-in first-out: --out is published first
            stage = stack.enter_context(staged_outputs(path.parent))
            atomic_write_json(stage / path.name, doc)
    return [str(path) for path in targets]
