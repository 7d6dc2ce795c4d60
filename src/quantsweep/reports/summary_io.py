"""Reading a `sweep-summary.json` for every command that reads one (`kpi-report`, `render-report`, `compare`,
`frontier`, `baseline`, `export`): validate, normalize rows, find manifests.

Why a module of its own: these commands must accept summaries that `quantsweep run` wrote *and* summaries written
by hand (tests, other tools), and must fail the same way on a malformed one: an `InputError` (exit 2) whose
message names the file and the field (`runs/x/sweep-summary.json: rows[3].achieved_bits: expected a number in
[0, 64], got 70`), before anything is computed or written. Nothing here imports torch.

What is checked is what the readers use, by type *and* by range (`fields.py`): an impossible value (a negative
KL divergence, 70 bits per weight, a negative sample count) is refused rather than ranked, gated or plotted.
NaN and infinities are accepted only where they are a recorded outcome: a diverged quality or score (the row is
then invalid, NONFINITE_SCORE) or a lost telemetry value (MISSING_TELEMETRY); bits and counts must be finite.
`validate_row` is the per-row part, also applied to each line of `rows.jsonl`.

Validity is recomputed, never read (docs/kpis.md, "Validity"): a row's reasons are the union of the reasons it
stores and `validity.row_reasons(row)` recomputed from its fields; then `validity.finalize_rows` adds
DUPLICATE_RESULT across rows and sets `valid = not reasons`. A stored `valid` flag is ignored.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import InputError
from ..inputs.documents import DATA, decode_utf8, parse_json, read_bytes, read_json_object
from ..store.validity import REASONS, finalize_rows, row_reasons
from .fields import ANY, BITS, COUNT, Fields, Num, is_number, show
from .manifest_io import LAYERS, validate_manifest
from .measures import check_determinism, check_long_context, check_quality, check_solver, check_telemetry
from .trust_io import check_lm_eval, check_trust

SUMMARY_KIND = "quantsweep.sweep_summary"
MANIFEST = "manifest.json"
ROW_STATUSES = ("ok", "error")

_STR = ("cell_id", "model", "pair", "weight", "activation", "granularity", "dataset_size", "error",
        "error_type", "result_fingerprint", "config_hash", "search_hash", "method", "engine", "device",
        "weight_quantizer", "input_quantizer", "calibration", "fake_quant_backend", "kv_cache",
        "export_reason", "export_format")
_NUM = {
    "achieved_bits": BITS, "effective_bits_target": BITS, "format_bits": BITS, "storage_bits": BITS,
    "format_storage_bits": BITS,
    "total_score": ANY,  # NaN/inf: a diverged search, recorded as NONFINITE_SCORE
    "samples": COUNT, "layer_count": COUNT, "quantized_layer_count": COUNT,
    "attempt": Num(lo=1, hi=COUNT.hi, integer=True),
    "revision": Num(lo=1, hi=COUNT.hi, integer=True),  # a row appended again with a later result (lm_eval_phase.py)
}
_BOOL = ("satisfied", "scores_finite", "valid", "from_canary",
         "exportable")  # absent in summaries written before plan-time exportability: read as unknown


def validate_row(row: Any, source: str, where: str) -> None:
    """One row (of a summary's `rows`, or a line of `rows.jsonl`): InputError `<source>: <where>.<field>: ...`
    for the first field that cannot be used."""
    f = Fields(source)
    f.expect(where, row, isinstance(row, dict), "an object")
    f.string(f"{where}.key", row.get("key"), required=True, nonempty=True)
    f.one_of(f"{where}.status", row.get("status"), ROW_STATUSES, required=True)
    for name in _STR:
        f.string(f"{where}.{name}", row.get(name))
    f.string(f"{where}.path", row.get("path"), path=True)
    f.numeric_fields(where, row, _NUM)
    layers, quantized = row.get("layer_count"), row.get("quantized_layer_count")
    if layers is not None and quantized is not None and quantized > layers:
        raise f.fail(f"{where}.quantized_layer_count", f"{quantized} is more than layer_count {layers}")
    for name in _BOOL:
        f.boolean(f"{where}.{name}", row.get(name))
    if row.get("exportable") is False and not row.get("export_reason"):
        raise f.fail(f"{where}.export_reason", "missing: a row that is not exportable says why")
    check_quality(f, f"{where}.quality", row.get("quality"))
    check_telemetry(f, f"{where}.telemetry", row.get("telemetry"))
    check_determinism(f, f"{where}.determinism", row.get("determinism"))
    check_solver(f, f"{where}.solver", row.get("solver"))
    check_trust(f, f"{where}.trust", row.get("trust"))
    check_long_context(f, f"{where}.long_context", row.get("long_context"))
    reasons = row.get("reasons", [])
    f.expect(f"{where}.reasons", reasons,
             isinstance(reasons, list) and all(isinstance(x, str) for x in reasons), "a list of strings")
    for i, reason in enumerate(reasons):
        if reason not in REASONS:
            raise f.fail(f"{where}.reasons[{i}]", f"unknown reason {show(reason)} (known: {', '.join(REASONS)})")


def _check_header(f: Fields, doc: dict[str, Any]) -> None:
    """The summary's own fields that the reports print or key on (everything but `rows`)."""
    kind = doc.get("kind")
    if kind is not None and kind != SUMMARY_KIND:
        raise f.fail("kind", f"expected '{SUMMARY_KIND}', got {show(kind)} (is this a sweep summary?)")
    for key in ("labels", "hardware", "dataset", "versions", "progress"):
        f.obj(key, doc.get(key))
    f.string("hardware.fingerprint", f.obj("hardware", doc.get("hardware")).get("fingerprint"))
    model = f.obj("model", doc.get("model"))
    f.string("model.name", model.get("name"))
    f.number("model.num_parameters", model.get("num_parameters"), COUNT)
    matrix = f.obj("matrix", doc.get("matrix"))
    f.string("matrix.name", matrix.get("name"))
    f.string("matrix.description", matrix.get("description"))
    f.obj("matrix.model", matrix.get("model"))
    f.obj("matrix.dataset", matrix.get("dataset"))
    f.obj("matrix.dataset.sizes", (matrix.get("dataset") or {}).get("sizes"))
    axes = f.obj("matrix.axes", matrix.get("axes"))
    for axis in ("quant_pairs", "granularities", "dataset_sizes"):
        for i, item in enumerate(f.seq(f"matrix.axes.{axis}", axes.get(axis))):
            f.expect(f"matrix.axes.{axis}[{i}]", item, isinstance(item, str | dict), "a name or an object")
    aq = f.obj("matrix.autoquant", matrix.get("autoquant"))
    budgets = aq.get("effective_bits")
    if is_number(budgets):
        f.number("matrix.autoquant.effective_bits", budgets, BITS)
    else:
        f.numbers("matrix.autoquant.effective_bits", budgets, BITS)
    kpi = matrix.get("kpi")
    if kpi is not None:
        f.obj("matrix.kpi", kpi, required=True)
        thresholds_from(kpi, f.source, "matrix.kpi")
    check_lm_eval(f, "baseline.lm_eval", f.obj("baseline", doc.get("baseline")).get("lm_eval"))
    canary = f.obj("canary", doc.get("canary"))
    check_determinism(f, "canary.determinism", canary.get("determinism"))
    f.strings("canary.failed_reasons", canary.get("failed_reasons"))
    for name in ("passed", "skipped"):
        f.boolean(f"canary.{name}", canary.get(name))
    f.seq("plan.warnings", f.obj("plan", doc.get("plan")).get("warnings"))
    commit = doc.get("commit")
    f.expect("commit", commit, commit is None or isinstance(commit, str | dict), "a string, an object or null")
    if isinstance(commit, dict):
        f.string("commit.sha", commit.get("sha"))
        f.boolean("commit.dirty", commit.get("dirty"))


def validate_summary(doc: Any, source: str) -> None:
    """Raise InputError naming `source` and the field for the first problem found; return None if usable."""
    f = Fields(source)
    f.expect("(top level)", doc, isinstance(doc, dict), "a JSON object")
    _check_header(f, doc)
    if "rows" not in doc:
        raise f.fail("rows", "missing (a sweep summary lists its cells under `rows`)")
    rows = f.seq("rows", doc["rows"], required=True)
    seen: dict[str, int] = {}
    keys: dict[str, int] = {}
    for i, row in enumerate(rows):
        where = f"rows[{i}]"
        validate_row(row, source, where)
        ident = row.get("cell_id") or row["key"]
        if ident in seen:
            raise f.fail(f"{where}.cell_id", f"duplicate cell {show(ident)} (also rows[{seen[ident]}]); a summary "
                                             "holds the latest row per cell")
        seen[ident] = i
        if row["key"] in keys:
            raise f.fail(f"{where}.key", f"duplicate key {show(row['key'])} (also rows[{keys[row['key']]}]); a "
                                         "summary holds one row per cell")
        keys[row["key"]] = i


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
    sha256: str = ""  # of the file's bytes as read (provenance)
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

    def recordable_manifests(self) -> dict[str, dict[str, Any]]:
        """Cell id -> manifest of every cell whose manifest can be found (for a baseline record). A manifest that
        is found but unusable is an InputError: a record silently without it would lose its per-layer recipe."""
        out = {}
        for r in self.rows:
            manifest, _why = load_manifest(self.path, r, strict=True)
            if manifest is not None:
                out[str(r["cell_id"])] = manifest
        return out


def read_summary_document(path: str | Path) -> tuple[dict[str, Any], str]:
    """A validated summary document and the SHA-256 of its bytes (read once, through the reading layer)."""
    source = str(path)
    data = read_bytes(path, DATA, "sweep summary")
    doc = parse_json(decode_utf8(data, source), source, DATA)
    validate_summary(doc, source)
    return doc, hashlib.sha256(data).hexdigest()


def load_summary(path: str | Path, threshold_overrides: dict[str, Any] | None = None) -> Summary:
    """Read, validate and normalize a summary. Thresholds: the summary's `matrix.kpi` (or `KpiThresholds`
    defaults when absent), then `threshold_overrides` (flags) on top, validated together."""
    path = Path(path)
    doc, sha = read_summary_document(path)
    base = dict((doc.get("matrix") or {}).get("kpi") or {})
    overrides = {k: v for k, v in (threshold_overrides or {}).items() if v is not None}
    try:
        thresholds = thresholds_from({**base, **overrides}, str(path), "matrix.kpi")
    except InputError as exc:  # the summary's own block was validated above: the culprit is a flag
        flag = str(exc).rsplit("matrix.kpi.", 1)[-1]
        name, _, msg = flag.partition(": ")
        raise InputError(f"--{name.replace('_', '-')}: {msg}") from None
    return Summary(path=path, doc=doc, rows=normalize_rows(doc["rows"]), thresholds=thresholds.model_dump(mode="json"),
                   sha256=sha)


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


def load_manifest(summary_path: Path, row: dict[str, Any], strict: bool = False
                  ) -> tuple[dict[str, Any] | None, str | None]:
    """The row's cell manifest, accepted only if its `cell.id` matches the row's `cell_id` (a folder of another
    sweep at the same relative path is never read by mistake), as `(manifest, None)` or `(None, why not)`.

    A manifest that is found but cannot be used (unreadable, not JSON, a field the layer views read is wrong) is
    a reason naming the file and the field; with `strict` it is an InputError instead (for commands that keep
    the manifests, where leaving one out would lose it silently)."""
    row_path = row.get("path")
    if not row_path:
        return None, "the row has no `path`"
    tried_bad: list[str] = []
    for cand in manifest_candidates(summary_path, row_path):
        mf = cand / MANIFEST
        try:
            os.stat(mf)
        except (FileNotFoundError, NotADirectoryError):
            continue
        except OSError as exc:
            problem: InputError = InputError(f"{mf}: cannot read: {exc.strerror or exc}")
        else:
            try:
                doc = read_json_object(mf, DATA, "cell manifest")
                mid = (doc.get("cell") or {}).get("id") if isinstance(doc.get("cell"), dict) else None
                if isinstance(mid, str) and mid != row.get("cell_id"):
                    tried_bad.append(f"{mf}: belongs to cell {mid}, not {row.get('cell_id')}")
                    continue
                validate_manifest(doc, str(mf), LAYERS)
                return doc, None
            except InputError as exc:
                problem = exc
        if strict:
            raise problem
        tried_bad.append(str(problem))
    if tried_bad:
        return None, "; ".join(tried_bad)
    return None, f"no {MANIFEST} found for path {row_path!r}"
