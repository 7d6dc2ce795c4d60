"""The canary gate: a sane baseline, then one cell run `canary.repeats` times, deterministic and fully
instrumented, before any other cell runs. It runs where the model is: in the driver's process (local executor)
or on one worker (Ray)."""

from __future__ import annotations

import math
from datetime import UTC, datetime
from typing import Any

from ..planning import Cell
from ..store.validity import missing_telemetry
from .cell_runner import CellRun, determinism
from .context import SweepContext
from .engines import run_cell_repeats
from .progress import Reporter


def run_canary(ctx: SweepContext, cell: Cell, reporter: Reporter) -> tuple[dict[str, Any], list[CellRun]]:
    """(the canary document for canary.json and the summary, the canary cell's runs: empty if never run)."""
    spec = ctx.matrix.canary
    reasons: list[str] = []
    base = ctx.baseline
    ppl = base.perplexity
    if not math.isfinite(base.mean_nll):
        reasons.append("BASELINE_LOSS_NONFINITE")
    elif ppl > spec.max_baseline_perplexity:
        reasons.append("BASELINE_PERPLEXITY_TOO_HIGH")
    runs: list[CellRun] = []
    det = None
    missing: list[str] = []
    errors: list[str | None] = []
    if not reasons:
        reporter.message(f"canary: {cell.key} x{spec.repeats}")
        runs = run_cell_repeats(ctx, cell, spec.repeats, reporter)
        errors = [r.error for r in runs if r.status != "ok"]
        if errors:
            reasons.append("CANARY_CELL_ERROR")
        det = determinism(runs, spec.score_rtol)
        if det is not None and not det["deterministic"] and not errors:
            reasons.append("NONDETERMINISTIC")
        missing = sorted({f for r in runs if r.status == "ok" for f in missing_telemetry(r.telemetry)})
        if missing:
            reasons.append("MISSING_TELEMETRY")
    canary = {
        "passed": not reasons,
        "failed_reasons": reasons,
        "cell": cell.key,
        "cell_id": cell.id,
        "repeats": spec.repeats,
        "baseline": {"perplexity": ppl, "mean_nll": base.mean_nll, "max_perplexity": spec.max_baseline_perplexity},
        "determinism": det,
        "missing_telemetry": missing,
        "errors": errors,
        "runs": [
            {
                "status": r.status,
                "fingerprint": r.fingerprint(),
                "total_score": r.result.total_score if r.result else None,
                "wall_s": r.telemetry.get("wall_s"),
            }
            for r in runs
        ],
        "finished_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    return canary, runs
