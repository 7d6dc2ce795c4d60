"""Reading a `sweep-summary.json` for `kpi-report` and `render-report`: validate, normalize rows, find manifests.

Why a module of its own: both commands must accept summaries that `quantsweep run` wrote *and* summaries written
by hand (tests, other tools), and must fail the same way on a malformed one: an `InputError` (exit 2) whose
message names the file and the field (`runs/x/sweep-summary.json: rows[3].achieved_bits: expected a number or
null, got str 'abc'`). Nothing here imports torch.

Validity is recomputed, never read (docs/kpis.md, "Validity"): a row's reasons are the union of the reasons it
stores and `validity.row_reasons(row)` recomputed from its fields; then `validity.finalize_rows` adds
DUPLICATE_RESULT across rows and sets `valid = not reasons`. A stored `valid` flag is ignored.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import InputError
from ..store.validity import REASONS, finalize_rows, row_reasons

SUMMARY_KIND = "quantsweep.sweep_summary"
MANIFEST = "manifest.json"

_STR = ("cell_id", "model", "pair", "weight", "activation", "granularity", "dataset_size", "path", "error",
        "error_type", "result_fingerprint", "config_hash", "search_hash")
_NUM = ("achieved_bits", "effective_bits_target", "total_score", "format_bits", "samples", "layer_count",
        "quantized_layer_count", "attempt", "storage_bits", "format_storage_bits")
_BOOL = ("satisfied", "scores_finite", "valid", "from_canary")
_DICT = ("quality", "telemetry", "determinism")


def _type(v: Any) -> str:
    return "null" if v is None else type(v).__name__


def _show(v: Any) -> str:
    s = repr(v)
    return s if len(s) <= 40 else s[:37] + "..."


def _is_num(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


class _Checker:
    def __init__(self, source: str):
        self.source = source

    def fail(self, where: str, msg: str) -> InputError:
        return InputError(f"{self.source}: {where}: {msg}")

    def expect(self, where: str, v: Any, ok: bool, what: str) -> None:
        if not ok:
            raise self.fail(where, f"expected {what}, got {_type(v)} {_show(v)}")


def validate_summary(doc: Any, source: str) -> None:
    """Raise InputError naming `source` and the field for the first problem found; return None if usable."""
    c = _Checker(source)
    c.expect("(top level)", doc, isinstance(doc, dict), "a JSON object")
    kind = doc.get("kind")
    if kind is not None and kind != SUMMARY_KIND:
        raise c.fail("kind", f"expected '{SUMMARY_KIND}', got {_show(kind)} (is this a sweep summary?)")
    if "rows" not in doc:
        raise c.fail("rows", "missing (a sweep summary lists its cells under `rows`)")
    rows = doc["rows"]
    c.expect("rows", rows, isinstance(rows, list), "a list")
    for key in ("matrix", "labels", "hardware", "model", "dataset"):
        if doc.get(key) is not None:
            c.expect(key, doc[key], isinstance(doc[key], dict), "an object or null")
    if doc.get("canary") is not None:
        c.expect("canary", doc["canary"], isinstance(doc["canary"], dict), "an object or null")
        det = doc["canary"].get("determinism")
        c.expect("canary.determinism", det, det is None or isinstance(det, dict), "an object or null")
    kpi = (doc.get("matrix") or {}).get("kpi")
    if kpi is not None:
        c.expect("matrix.kpi", kpi, isinstance(kpi, dict), "an object")
        thresholds_from(kpi, source, "matrix.kpi")
    seen: dict[str, int] = {}
    for i, row in enumerate(rows):
        where = f"rows[{i}]"
        c.expect(where, row, isinstance(row, dict), "an object")
        for name in ("key", "status"):
            v = row.get(name)
            if v is None:
                raise c.fail(f"{where}.{name}", "missing")
            c.expect(f"{where}.{name}", v, isinstance(v, str) and v != "", "a non-empty string")
        for name in _STR:
            v = row.get(name)
            c.expect(f"{where}.{name}", v, v is None or isinstance(v, str), "a string or null")
        for name in _NUM:
            v = row.get(name)
            c.expect(f"{where}.{name}", v, v is None or _is_num(v), "a number or null")
        for name in _BOOL:
            v = row.get(name)
            c.expect(f"{where}.{name}", v, v is None or isinstance(v, bool), "true, false or null")
        for name in _DICT:
            v = row.get(name)
            c.expect(f"{where}.{name}", v, v is None or isinstance(v, dict), "an object or null")
        phases = (row.get("telemetry") or {}).get("phases")
        c.expect(f"{where}.telemetry.phases", phases, phases is None or isinstance(phases, dict), "an object or null")
        for qk, qv in (row.get("quality") or {}).items():
            if qk == "per_sequence":  # per held-out sequence means: lists of numbers (reports/noise.py)
                ok = isinstance(qv, dict) and all(
                    isinstance(vals, list) and all(_is_num(x) for x in vals) for vals in qv.values()
                )
                c.expect(f"{where}.quality.per_sequence", qv, qv is None or ok, "an object of lists of numbers")
                continue
            c.expect(f"{where}.quality.{qk}", qv, qv is None or _is_num(qv) or isinstance(qv, str),
                     "a number, string or null")
        solver = row.get("solver")
        c.expect(f"{where}.solver", solver, solver is None or isinstance(solver, dict), "an object or null")
        for sk in ("modelopt_objective", "exact_objective", "objective_gap", "groups_differing"):
            sv = (solver or {}).get(sk)
            c.expect(f"{where}.solver.{sk}", sv, sv is None or _is_num(sv), "a number or null")
        reasons = row.get("reasons", [])
        c.expect(f"{where}.reasons", reasons,
                 isinstance(reasons, list) and all(isinstance(x, str) for x in reasons), "a list of strings")
        ident = row.get("cell_id") or row["key"]
        if ident in seen:
            raise c.fail(f"{where}.cell_id", f"duplicate cell {ident!r} (also rows[{seen[ident]}]); a summary holds "
                                             "the latest row per cell")
        seen[ident] = i


def thresholds_from(data: dict[str, Any], source: str, where: str) -> Any:
    """A `KpiThresholds` from a mapping; InputError naming `where.<field>` when a value is out of range."""
    from pydantic import ValidationError

    from ..schema import KpiThresholds

    try:
        return KpiThresholds(**data)
    except ValidationError as exc:
        e = exc.errors()[0]
        loc = ".".join(str(x) for x in e["loc"])
        raise InputError(f"{source}: {where}.{loc}: {e['msg']}") from None


def normalize_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Copies of `rows` with `cell_id` defaulted to `key`, reasons recomputed (stored ∪ row-local) and validity
    recomputed across rows (DUPLICATE_RESULT)."""
    out = []
    for r in rows:
        r = dict(r)
        if r.get("cell_id") is None:
            r["cell_id"] = r["key"]
        stored = [x for x in r.get("reasons", []) if x != "DUPLICATE_RESULT"]
        fresh = row_reasons(r)
        reasons = list(dict.fromkeys(stored + [x for x in REASONS if x in fresh]))
        r["reasons"] = reasons
        out.append(r)
    return finalize_rows(out)


@dataclass
class Summary:
    """A validated summary: the document as read, its normalized rows, and where it lives (to find manifests)."""

    path: Path
    doc: dict[str, Any]
    rows: list[dict[str, Any]]
    thresholds: dict[str, Any]
    _manifests: dict[str, tuple[dict[str, Any] | None, str | None]] = field(default_factory=dict, repr=False)

    @property
    def canary(self) -> dict[str, Any] | None:
        return self.doc.get("canary")

    @property
    def metric(self) -> str:
        return str(self.thresholds["quality_metric"])

    @property
    def max_quality(self) -> float:
        return float(self.thresholds["max_quality"])

    def manifest(self, row: dict[str, Any]) -> tuple[dict[str, Any] | None, str | None]:
        """(manifest, None) or (None, why it is unavailable). Cached per cell."""
        cid = str(row["cell_id"])
        if cid not in self._manifests:
            self._manifests[cid] = load_manifest(self.path, row)
        return self._manifests[cid]


def load_summary(path: str | Path, threshold_overrides: dict[str, Any] | None = None) -> Summary:
    """Read, validate and normalize a summary. Thresholds: the summary's `matrix.kpi` (or `KpiThresholds`
    defaults when absent), then `threshold_overrides` (flags) on top, validated together."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise InputError(f"{path}: no such summary file") from None
    except OSError as exc:
        raise InputError(f"{path}: cannot read: {exc.strerror or exc}") from None
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as exc:
        raise InputError(f"{path}: not valid JSON: {exc.msg} (line {exc.lineno}, column {exc.colno})") from None
    validate_summary(doc, str(path))
    base = dict((doc.get("matrix") or {}).get("kpi") or {})
    overrides = {k: v for k, v in (threshold_overrides or {}).items() if v is not None}
    try:
        thresholds = thresholds_from({**base, **overrides}, str(path), "matrix.kpi")
    except InputError as exc:  # the summary's own block was validated above: the culprit is a flag
        flag = str(exc).rsplit("matrix.kpi.", 1)[-1]
        name, _, msg = flag.partition(": ")
        raise InputError(f"--{name.replace('_', '-')}: {msg}") from None
    return Summary(path=path, doc=doc, rows=normalize_rows(doc["rows"]), thresholds=thresholds.model_dump(mode="json"))


# --- manifests ------------------------------------------------------------------------------------------------
def manifest_candidates(summary_path: Path, row_path: str) -> list[Path]:
    """Where a row's cell folder may be, in the order tried (docs/reports.md, "Finding cell manifests").

    1. an absolute `path` as written;
    2. beside the summary: each suffix of `path` (longest first) under the summary's folder, because `run` puts
       cell folders under the folder holding `sweep-summary.json`, so a sweep folder that was moved or copied
       (e.g. into tests/fixtures) still finds its own cells;
    3. `path` relative to the current directory (where `run` was started, since `path` starts with `output_root`).
    """
    p = Path(row_path)
    if p.is_absolute():
        return [p]
    base = summary_path.parent
    parts = p.parts
    out = [base.joinpath(*parts[i:]) for i in range(len(parts))]
    out.append(p)
    return list(dict.fromkeys(out))


def load_manifest(summary_path: Path, row: dict[str, Any]) -> tuple[dict[str, Any] | None, str | None]:
    """The row's cell manifest, accepted only if its `cell.id` matches the row's `cell_id` (a folder of another
    sweep at the same relative path is never read by mistake)."""
    row_path = row.get("path")
    if not row_path:
        return None, "the row has no `path`"
    tried_bad: list[str] = []
    for cand in manifest_candidates(summary_path, row_path):
        mf = cand / MANIFEST
        if not mf.is_file():
            continue
        try:
            doc = json.loads(mf.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as exc:
            tried_bad.append(f"{mf}: unreadable ({exc})")
            continue
        if not isinstance(doc, dict) or not isinstance(doc.get("layers"), list):
            tried_bad.append(f"{mf}: no `layers` list")
            continue
        mid = (doc.get("cell") or {}).get("id")
        if mid is not None and mid != row.get("cell_id"):
            tried_bad.append(f"{mf}: belongs to cell {mid}, not {row.get('cell_id')}")
            continue
        return doc, None
    if tried_bad:
        return None, "; ".join(tried_bad)
    return None, f"no {MANIFEST} found for path {row_path!r}"
