"""Downstream accuracy (lm-evaluation-harness), the pure parts: which cells are evaluated, what lm-eval's result
becomes in a row, and the deltas against the baseline that the report shows (docs/trust.md).

Why pure and apart from the runner (engine/lm_eval_runner.py): the report and the row validation read these
blocks without torch or lm-eval installed, and the arithmetic of a delta and its error bar is testable alone.

A block (a row's `trust.lm_eval`, the summary's `baseline.lm_eval`):

    {"computable": true, "reason": null, "num_fewshot": 0, "limit": 40, "lm_eval_version": "0.4.13",
     "wall_s": 1.2, "samples": {"qs_facts": 40},
     "tasks": {"qs_facts": {"acc": {"value": 0.55, "stderr": 0.08}, "acc_norm": {...}}}}
"""

from __future__ import annotations

import math
from typing import Any


def cell_selected(cells: str | list[str], key: str, cell_id: str) -> bool:
    """Whether a cell is evaluated *when it finishes*: `evaluation.lm_eval.cells` 'all', or a list naming cells
    by key (`wint8_afp16/default/a@8`, as the reports print them) or by id. 'frontier' selects no cell here: the
    frontier is known only after the last cell (execution/lm_eval_phase.py evaluates it then)."""
    if isinstance(cells, str):
        return cells == "all"
    return key in cells or cell_id in cells


def wants_baseline(cells: str | list[str], n_selected: int) -> bool:
    """Whether the sweep evaluates the baseline through lm-eval: for 'frontier' always (every sweep has a
    frontier once a cell succeeds), else when some planned cell is selected."""
    return cells == "frontier" or n_selected > 0


def frontier_cell_ids(rows: list[dict[str, Any]], metric: str, limit: float) -> list[str]:
    """The cell ids on the quality-vs-bits frontier of their group, exactly as the report draws it
    (reports/frontier.py over the valid rows), in row order. `rows` are finalized rows (store/validity.py)."""
    from ..reports.frontier import build_frontier

    view = build_frontier(rows, metric, limit, include_invalid=False)
    return [p["cell_id"] for p in view["points"] if p["on_frontier"] and p["cell_id"]]


def unknown_cells(cells: str | list[str], plan: list[tuple[str, str]]) -> list[str]:
    """The entries of an explicit list that match no (key, id) of the plan (refused before the run starts)."""
    if isinstance(cells, str):
        return []
    known = {x for pair in plan for x in pair}
    return [c for c in cells if c not in known]


def _finite(x: Any) -> float | None:
    if isinstance(x, bool) or not isinstance(x, int | float):
        return None
    return float(x) if math.isfinite(x) else None


def block_from_results(results: dict[str, Any], n_samples: dict[str, Any]) -> dict[str, dict[str, dict[str, Any]]]:
    """lm-eval's `results` ({task: {"acc,none": 0.5, "acc_stderr,none": 0.08, "alias": ...}}) as
    {task: {metric: {"value", "stderr"}}}; the filter name is kept only when it is not lm-eval's default 'none'.
    A stderr lm-eval could not compute ('N/A') is null."""
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for task, scores in results.items():
        metrics: dict[str, dict[str, Any]] = {}
        for key, value in scores.items():
            if "," not in key or "_stderr," in key:
                continue
            metric, filt = key.split(",", 1)
            v = _finite(value)
            if v is None:
                continue
            name = metric if filt == "none" else f"{metric},{filt}"
            metrics[name] = {"value": v, "stderr": _finite(scores.get(f"{metric}_stderr,{filt}"))}
        out[task] = metrics
    return out


def deltas(cell: dict[str, Any] | None, baseline: dict[str, Any] | None) -> list[dict[str, Any]]:
    """One entry per (task, metric) both blocks hold: the cell's value, the baseline's, the difference and its
    standard error sqrt(se_cell^2 + se_base^2) (the two runs taken as independent: on the same documents the
    paired error is smaller, so this bar is conservative). `within_error`: |delta| <= 2 standard errors."""
    if not cell or not baseline or not cell.get("computable") or not baseline.get("computable"):
        return []
    out = []
    for task, metrics in sorted((cell.get("tasks") or {}).items()):
        base_metrics = (baseline.get("tasks") or {}).get(task) or {}
        for metric, m in sorted(metrics.items()):
            b = base_metrics.get(metric)
            if b is None:
                continue
            se = None
            if m.get("stderr") is not None and b.get("stderr") is not None:
                se = math.sqrt(m["stderr"] ** 2 + b["stderr"] ** 2)
            d = m["value"] - b["value"]
            out.append({
                "task": task, "metric": metric, "value": m["value"], "baseline": b["value"], "delta": d,
                "stderr": se, "within_error": None if se is None else abs(d) <= 2 * se,
            })
    return out
