"""Hostile inputs for every command that reads what a sweep left behind: `kpi-report`, `render-report`, `compare`,
`frontier`, `check-artifacts`, `report --cell`, `baseline add|pin|unpin|list|resolve|health|prune` and the reading
part of `export --cell`.

Each generated case starts from a real document (the SmolLM2 quickstart summary and its trimmed manifests, or the
tiny synthetic sweep in tests/fixtures/tiny_cells with full manifests and recipes) and damages it: one value
anywhere replaced (another type, a negative, NaN, an infinity, an integer too large for a float, a long string, a
deep list), one key deleted, or the bytes themselves (random, not UTF-8, truncated, a duplicate key, a FIFO, a
folder, a link to /dev/zero). The verdict is decided by the validators (and, for the values the issue names, by an
independent table of impossible values in this file), never by the command's outcome: a refused document must
give exit 2 with one `error:` line naming the file (and the field, for a field error) and change nothing; an
accepted one must run to its documented exit code. Nothing else (a traceback, a hang, exit 1) is ever acceptable.
"""

from __future__ import annotations

import contextlib
import copy
import json
import math
import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from harness import assert_bounded, expect_failure, invoke, snapshot
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from quantsweep.errors import InputError
from quantsweep.export.cell_inputs import locate
from quantsweep.recipe import read_recipe
from quantsweep.reports.artifacts import FrontierArtifact
from quantsweep.reports.manifest_io import EXPORT, LAYERS, REPORT, validate_manifest
from quantsweep.reports.summary_io import validate_summary
from quantsweep.store.baselines import BaselineStore, Record

REPO = Path(__file__).resolve().parents[2]
QUICKSTART = REPO / "tests" / "fixtures" / "quickstart"
TINY = REPO / "tests" / "fixtures" / "tiny_cells"
TINY_CELL = "t/wint8_afp16/default/a"  # relative to a workspace holding TINY as `t`
ROOT = os.geteuid() == 0
_IMMUTABLE: list[Path] = []  # folders made read-only for root (chattr +i), made writable again after the case


def make_read_only(folder: Path) -> None:
    """A folder this process cannot write into. Root ignores permission bits, but not the immutable attribute;
    where that cannot be set either, the case is skipped."""
    if not ROOT:
        os.chmod(folder, 0o555)
        return
    chattr = shutil.which("chattr")
    if chattr is None or subprocess.run([chattr, "+i", str(folder)], capture_output=True).returncode != 0:
        pytest.skip("running as root, and the immutable attribute cannot be set here")
    _IMMUTABLE.append(folder)


SCALE = float(os.environ.get("QS_FUZZ_SCALE", "1"))  # e.g. 20 for a deeper local run (random, not derandomized)


def fuzz(n: int) -> settings:
    return settings(max_examples=max(1, round(n * SCALE)), deadline=None, derandomize=SCALE == 1, database=None,
                    suppress_health_check=list(HealthCheck))


# --- workspaces ----------------------------------------------------------------------------------------------------
@contextlib.contextmanager
def workspace(*fixtures: tuple[Path, str]) -> Iterator[tuple[Path, Path]]:
    """(cwd, outside): `cwd` holds copies of the fixtures under the given names and is what a failing command
    must leave unchanged; `outside` is for what the harness's snapshot must not open (FIFOs)."""
    with tempfile.TemporaryDirectory(prefix="qs-fuzz-") as tmp:
        cwd, outside = Path(tmp) / "work", Path(tmp) / "outside"
        cwd.mkdir()
        outside.mkdir()
        for src, name in fixtures:
            shutil.copytree(src, cwd / name)
        try:
            yield cwd, outside
        finally:
            while _IMMUTABLE:
                subprocess.run(["chattr", "-i", str(_IMMUTABLE.pop())], check=True)
            for p in (cwd, outside):  # a read-only folder a case made must not stop the clean-up
                for dirpath, _dirs, _files in os.walk(p):
                    os.chmod(dirpath, 0o755)


def load(path: Path) -> Any:
    return json.loads(path.read_text())


def dump(path: Path, doc: Any) -> None:
    path.write_text(json.dumps(doc, indent=1, allow_nan=True))


# --- mutations -----------------------------------------------------------------------------------------------------
def deep_list(levels: int) -> Any:
    v: Any = 1
    for _ in range(levels):
        v = [v]
    return v


VALUES = st.one_of(
    st.sampled_from([-1, -0.5, -1e-12, 0, 0.0, 1.5, 3, 65.0, 2**53 + 1, 10**400, 2**64, -(10**30), 1e308,
                     float("nan"), float("inf"), float("-inf"), True, False, None, "", "x" * 100_000, "abc",
                     [], {}, [1, "a", None], {"a": 1}, deep_list(20), deep_list(80)]),
    st.text(max_size=12),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
)


def node_paths(doc: Any) -> list[tuple[Any, ...]]:
    """Every value's path below the root (object keys, list indices), iteratively."""
    out: list[tuple[Any, ...]] = []
    stack: list[tuple[tuple[Any, ...], Any]] = [((), doc)]
    while stack:
        path, v = stack.pop()
        if path:
            out.append(path)
        if isinstance(v, dict):
            stack.extend(((*path, k), c) for k, c in v.items())
        elif isinstance(v, list):
            stack.extend(((*path, i), c) for i, c in enumerate(v))
    return sorted(out, key=lambda p: [str(x) for x in p])


def path_str(path: tuple[Any, ...]) -> str:
    s = ""
    for part in path:
        s += f"[{part}]" if isinstance(part, int) else (f".{part}" if s else str(part))
    return s


def mutate(doc: Any, data: st.DataObject, paths: list[tuple[Any, ...]] | None = None
           ) -> tuple[Any, tuple[Any, ...], str, Any]:
    """A copy of `doc` with one value replaced or one key deleted: (doc, path, "replace"|"delete", value)."""
    path = data.draw(st.sampled_from(paths or node_paths(doc)), label="path")
    out = copy.deepcopy(doc)
    parent = out
    for part in path[:-1]:
        parent = parent[part]
    op = data.draw(st.sampled_from(["replace", "replace", "replace", "delete"]), label="op")
    if op == "delete" and isinstance(parent, dict):
        del parent[path[-1]]
        return out, path, op, None
    value = data.draw(VALUES, label="value")
    parent[path[-1]] = copy.deepcopy(value)
    return out, path, "replace", value


def depth(doc: Any) -> int:
    best, stack = 0, [(doc, 1)]
    while stack:
        v, d = stack.pop()
        if isinstance(v, dict | list):
            best = max(best, d)
            stack.extend((c, d + 1) for c in (v.values() if isinstance(v, dict) else v))
    return best


# --- the independent table of impossible values (what the issue says must never pass) ---------------------------------
BITS_FIELDS = {"achieved_bits", "effective_bits_target", "format_bits", "storage_bits", "format_storage_bits"}
COUNT_FIELDS = {"samples", "layer_count", "quantized_layer_count", "attempt", "eval_tokens", "eval_sequences",
                "runs", "groups_differing"}
KL_FIELDS = {"kl_mean", "kl_max", "kl_p50", "kl_p90", "kl_p99", "kl_stderr"}
POSITIVE_FIELDS = {"ppl_ratio", "ppl_base", "ppl_quant"}


def _num(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def _huge(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and abs(v) > 2**1023


def impossible(name: str, v: Any, present: bool = True) -> bool:
    """Whether `v` cannot be field `name` of a row or its quality (None = absent/null, which is allowed)."""
    if v is None:
        return False
    if name in BITS_FIELDS:
        return not _num(v) or _huge(v) or not math.isfinite(v) or not 0 <= v <= 64
    if name in COUNT_FIELDS:
        return not isinstance(v, int) or isinstance(v, bool) or v < 0 or v > 2**53 or (name == "attempt" and v < 1)
    if name in KL_FIELDS:
        return not _num(v) or _huge(v) or v < 0
    if name in POSITIVE_FIELDS:
        return not _num(v) or _huge(v) or v <= 0
    if name == "top1_agreement":
        return not _num(v) or _huge(v) or (not math.isnan(v) and not 0 <= v <= 1)
    return False


def must_refuse_row_value(path: tuple[Any, ...], op: str, value: Any) -> bool:
    """A mutation of a summary row that the issue says must be refused, whatever the validator thinks."""
    if len(path) < 3 or path[0] != "rows" or op != "replace":
        return op == "delete" and len(path) == 3 and path[0] == "rows" and path[2] in ("key", "status")
    field = path[-1]
    if len(path) == 3:
        if field == "status":
            return value not in ("ok", "error")
        if field == "key":
            return not isinstance(value, str) or value == ""
        return field in BITS_FIELDS | {"samples", "layer_count", "quantized_layer_count", "attempt"} and \
            impossible(field, value)
    if len(path) == 4 and path[2] == "quality":
        return impossible(field, value)
    if len(path) == 4 and path[2] == "determinism" and field == "runs":
        return impossible(field, value)
    return False


# --- outcomes ------------------------------------------------------------------------------------------------------
def verdict(check: Any, doc: Any, source: str) -> str | None:
    """The validator's refusal message for `doc` as the CLI will read it (None: usable). A document nested
    deeper than the reading layer's limit never reaches the validator."""
    if depth(doc) > 64:
        event("refused: nested too deep")
        return f"{source}: nested more than 64 levels deep"
    try:
        check(doc, source)
    except InputError as exc:
        event("refused")
        return str(exc)
    event("accepted")
    return None


def refused_at(expected: str | None, path: tuple[Any, ...]) -> bool:
    """Refused, naming the mutated field (or, for a value nested too deep, refused by the reading layer)."""
    return expected is not None and (path_str(path) in expected or "nested more than" in expected)


def field_of(message: str, source: str) -> str:
    """`<source>: <field path>: ...` -> `<source>: <field path>` (the part the CLI's error must contain)."""
    rest = message[len(source) + 2:]
    return f"{source}: {rest.split(': ', 1)[0]}"


def expect_refused(args: list[str], cwd: Path, source: str, message: str, watch: tuple[Path, ...] = ()) -> None:
    o = expect_failure(args, cwd, source, 2, watch)
    assert field_of(message, source) in o.stderr, f"expected {message!r}\n" + o.describe()
    assert len(o.stderr.strip().splitlines()) == 1, o.describe()


def expect_ran(args: list[str], cwd: Path, codes: tuple[int, ...] = (0,)) -> Any:
    """A usable input: one of the command's documented outcomes (`codes`), never an input error about it
    (exit 2 is in `codes` only for `baseline resolve`, whose "no baseline" is an outcome, not a refusal)."""
    o = invoke(args, cwd)
    assert_bounded(o)
    assert o.code in codes, o.describe()
    if o.code != 2:
        assert "error:" not in o.stderr, o.describe()
    return o


# --- summaries: kpi-report, frontier, compare, baseline add/pin/resolve -----------------------------------------------
SUMMARY = "q/sweep-summary.json"
SUMMARY_COMMANDS = ["kpi-report", "kpi-report-out", "frontier", "frontier-history", "compare-a", "compare-b-out",
                    "baseline-add", "baseline-pin", "baseline-resolve"]


def summary_command(name: str, cwd: Path, source: str) -> tuple[list[str], tuple[int, ...]]:
    """The command line and its exit codes on a usable summary."""
    pristine = "p/sweep-summary.json"
    if name == "baseline-resolve":
        BaselineStore(cwd / "bl").add(pristine, load(cwd / pristine), pinned=True)
    return {
        "kpi-report": (["kpi-report", "-s", source, "--json"], (0, 3)),
        "kpi-report-out": (["kpi-report", "-s", source, "--out", "k/kpis.json"], (0, 3)),
        "frontier": (["frontier", "-s", source, "-o", "f.json"], (0,)),
        "frontier-history": (["frontier", "-s", source, "-o", "f.json", "--storage-root", "hist"], (0,)),
        "compare-a": (["compare", "-s", source, "-s", pristine, "--json"], (0, 3)),
        "compare-b-out": (["compare", "-s", pristine, "-s", source, "-o", "cmp"], (0, 3)),
        "baseline-add": (["baseline", "add", "--storage-root", "bl", "-s", source], (0,)),
        "baseline-pin": (["baseline", "pin", "--storage-root", "bl", "-s", source, "--json"], (0,)),
        "baseline-resolve": (["baseline", "resolve", "--storage-root", "bl", "-s", source], (0, 2)),
    }[name]


@fuzz(90)
@given(data=st.data())
def test_summary_mutations(data):
    base = load(QUICKSTART / "sweep-summary.json")
    doc, path, op, value = mutate(base, data)
    command = data.draw(st.sampled_from(SUMMARY_COMMANDS), label="command")
    expected = verdict(validate_summary, doc, SUMMARY)
    if must_refuse_row_value(path, op, value):
        assert refused_at(expected, path), (path_str(path), value, expected)
    with workspace((QUICKSTART, "q"), (QUICKSTART, "p")) as (cwd, _):
        dump(cwd / SUMMARY, doc)
        args, codes = summary_command(command, cwd, SUMMARY)
        if expected is not None:
            expect_refused(args, cwd, SUMMARY, expected)
        else:
            o = expect_ran(args, cwd, codes)
            if command == "baseline-resolve" and o.code == 2:
                assert "no baseline in bl" in o.stderr, o.describe()


@pytest.mark.parametrize(("path", "value", "message"), [
    (("rows", 0, "quality", "kl_mean"), -0.001, "rows[0].quality.kl_mean: expected a number >= 0, got -0.001"),
    (("rows", 1, "quality", "ppl_ratio"), 0, "rows[1].quality.ppl_ratio: expected a number > 0, got 0"),
    (("rows", 2, "quality", "top1_agreement"), 1.5, "rows[2].quality.top1_agreement: expected a number in [0, 1]"),
    (("rows", 3, "achieved_bits"), 70, "rows[3].achieved_bits: expected a number in [0, 64], got 70"),
    (("rows", 3, "achieved_bits"), float("nan"), "rows[3].achieved_bits: expected a number in [0, 64], got NaN"),
    (("rows", 4, "samples"), -4, "rows[4].samples: expected an integer >= 0, got -4"),
    (("rows", 4, "samples"), 4.5, "rows[4].samples: expected an integer or null, got float 4.5"),
    (("rows", 5, "layer_count"), 2**60, "rows[5].layer_count: expected an integer >= 0, got 1152921504606846976"),
    (("rows", 6, "total_score"), 10**400, "rows[6].total_score: expected a number, got an integer of 401 digits"),
    (("rows", 7, "status"), "OK", "rows[7].status: expected one of ok, error, got 'OK'"),
    (("rows", 7, "reasons"), ["SLOW"], "rows[7].reasons[0]: unknown reason 'SLOW'"),
    (("matrix", "kpi", "max_quality"), -1, "matrix.kpi.max_quality: Input should be greater than 0"),
])
def test_impossible_values_are_refused_by_every_summary_reader(path, value, message):
    """The values the issue names, each through the KPI gate (which used to pass them) and a writer."""
    with workspace((QUICKSTART, "q")) as (cwd, _):
        doc = load(cwd / SUMMARY)
        parent = doc
        for part in path[:-1]:
            parent = parent[part]
        parent[path[-1]] = value
        dump(cwd / SUMMARY, doc)
        for args in (["kpi-report", "-s", SUMMARY], ["frontier", "-s", SUMMARY, "-o", "f.json"]):
            o = expect_failure(args, cwd, SUMMARY)
            assert f"{SUMMARY}: {message}" in o.stderr, o.describe()


# --- render-report (the slowest reader: a small real sweep) -----------------------------------------------------------
@fuzz(14)
@given(data=st.data())
def test_render_report_summary_mutations(data):
    source = "t/sweep-summary.json"
    doc, path, op, value = mutate(load(TINY / "sweep-summary.json"), data)
    expected = verdict(validate_summary, doc, source)
    if must_refuse_row_value(path, op, value):
        assert refused_at(expected, path), (path_str(path), value, expected)
    with workspace((TINY, "t")) as (cwd, _):
        dump(cwd / source, doc)
        existing = data.draw(st.booleans(), label="out exists")
        if existing:
            (cwd / "rep").mkdir()
            (cwd / "rep" / "report.md").write_text("an earlier report\n")
        args = ["render-report", "-s", source, "-o", "rep", "--generated-at", "2026-01-01T00:00:00+00:00"]
        if expected is not None:
            expect_refused(args, cwd, source, expected)  # the out folder as it was: absent, or the old report
        else:
            expect_ran(args, cwd)
            assert {p.name for p in (cwd / "rep").iterdir()} >= {"report.md", "report.html", "scatter.json",
                                                                 "frontier.png", "convergence.svg"}


# --- manifests and recipes: report --cell, export ------------------------------------------------------------------
MANIFEST = f"{TINY_CELL}/manifest.json"


@fuzz(36)
@given(data=st.data())
def test_full_manifest_mutations_report_and_export(data):
    doc, path, op, value = mutate(load(TINY / "wint8_afp16/default/a/manifest.json"), data)
    command = data.draw(st.sampled_from(["report", "export"]), label="command")
    level = REPORT if command == "report" else EXPORT
    expected = verdict(lambda d, s: validate_manifest(d, s, level), doc, MANIFEST)
    if op == "replace" and path[:1] == ("layers",) and path[-1] in ("raw_scores", "formats", "name", "bits") \
            and not isinstance(value, list | str):
        assert expected is not None  # a layer group's lists replaced by a scalar can never be read
    with workspace((TINY, "t")) as (cwd, _):
        dump(cwd / MANIFEST, doc)
        if command == "report":
            args = ["report", "--cell", TINY_CELL]
            if expected is not None:
                expect_refused(args, cwd, MANIFEST, expected)
            else:
                expect_ran(args, cwd)
                assert (cwd / TINY_CELL / "layer-sensitivity-report.md").is_file()
        elif expected is not None:
            expect_refused(["export", "--cell", TINY_CELL, "--out", "exported"], cwd, MANIFEST, expected)
        else:  # usable: export would go on to load the model; its reading part must hold
            inputs = locate(cwd / TINY_CELL)
            assert inputs.cell_id == doc["cell"]["id"]


RECIPE = f"{TINY_CELL}/recipe.json"


@fuzz(16)
@given(data=st.data())
def test_recipe_mutations_export(data):
    base = load(TINY / "wint8_afp16/default/a/recipe.json")
    doc, path, op, value = mutate(base, data)

    def check(d: Any, s: str) -> None:
        p = Path(tempfile.mkdtemp(prefix="qs-recipe-")) / "recipe.json"
        try:
            dump(p, d)
            try:
                read_recipe(p)
            except InputError as exc:
                raise InputError(str(exc).replace(str(p), s)) from None
        finally:
            shutil.rmtree(p.parent)

    expected = verdict(check, doc, RECIPE)
    if op == "replace" and path == ("quant_cfg",) and not isinstance(value, list):
        assert expected is not None
    if op == "replace" and len(path) == 4 and path[2] == "cfg" and path[3] == "num_bits" and value is not None \
            and (not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= 64):
        assert expected is not None, (path, value)
    with workspace((TINY, "t")) as (cwd, _):
        dump(cwd / RECIPE, doc)
        if expected is not None:
            expect_refused(["export", "--cell", TINY_CELL, "--out", "exported"], cwd, RECIPE, expected)
        else:
            assert locate(cwd / TINY_CELL).recipe_path == cwd / RECIPE


@fuzz(16)
@given(data=st.data())
def test_export_summary_mutations(data):
    source = "t/sweep-summary.json"
    doc, path, op, value = mutate(load(TINY / "sweep-summary.json"), data)
    expected = verdict(validate_summary, doc, source)
    with workspace((TINY, "t")) as (cwd, _):
        dump(cwd / source, doc)
        if expected is not None:
            absolute = str(cwd / source)  # export finds the summary above the cell, by its resolved path
            o = expect_failure(["export", "--cell", TINY_CELL, "--out", "exported"], cwd, absolute)
            assert field_of(expected, source).replace(source, absolute) in o.stderr, o.describe()
            return
        try:
            inputs = locate(cwd / TINY_CELL)
        except InputError as exc:  # the row of this cell was renamed, removed or turned into an error row
            msg = str(exc)
            assert ("lists cell" in msg or "not ok" in msg or "matrix: missing" in msg or "diverged" in msg), msg
            o = expect_failure(["export", "--cell", TINY_CELL, "--out", "exported"], cwd, None)
            assert msg.split(": ")[-1] in o.stderr, o.describe()
        else:
            assert inputs.row["status"] == "ok"


@fuzz(16)
@given(data=st.data())
def test_layer_manifest_mutations_compare(data):
    """Manifests read for the layer views and recipe flips: a damaged one is a reason naming the file and field,
    never an error of the whole comparison and never a silent omission."""
    rel = "wint4_afp16/default/small/manifest.json"
    source = f"q/{rel}"
    doc, _path, _op, _value = mutate(load(QUICKSTART / rel), data)
    summary = load(QUICKSTART / "sweep-summary.json")
    row = next(r for r in summary["rows"] if r["key"] == "wint4_afp16/default/small")
    mid = (doc.get("cell") or {}).get("id") if isinstance(doc, dict) and isinstance(doc.get("cell"), dict) else None
    foreign = isinstance(mid, str) and mid != row["cell_id"]
    expected = None if foreign else verdict(lambda d, s: validate_manifest(d, s, LAYERS), doc, source)
    with workspace((QUICKSTART, "q"), (QUICKSTART, "p")) as (cwd, _):
        dump(cwd / source, doc)
        o = expect_ran(["compare", "-s", "p/sweep-summary.json", "-s", SUMMARY, "--json"], cwd, (0, 3))
        entry = next(e for e in json.loads(o.stdout)["matched"] if e["cell"].startswith("wint4_afp16/default/small"))
        if foreign:
            assert "belongs to cell" in entry["recipe_flips_unavailable"]
        elif expected is not None:
            assert entry["recipe_flips"] is None
            assert field_of(expected, source) in entry["recipe_flips_unavailable"], (expected, entry)
        else:
            assert entry["recipe_flips"] is not None, entry


def test_recordable_manifests_refuse_a_damaged_manifest_instead_of_dropping_it():
    """`baseline add` keeps the cells' manifests: one that is found but unusable is an error, not a gap."""
    from quantsweep.reports.summary_io import load_summary

    with workspace((QUICKSTART, "q")) as (cwd, _):
        assert len(load_summary(cwd / SUMMARY).recordable_manifests()) == 8
        mf = cwd / "q/wint8_afp16/default/tiny/manifest.json"
        doc = load(mf)
        doc["layers"][5]["raw_scores"] = "high"
        dump(mf, doc)
        with pytest.raises(InputError, match=r"tiny/manifest.json: layers\[5\].raw_scores: expected a list or null"):
            load_summary(cwd / SUMMARY).recordable_manifests()


# --- baseline records and frontier artifacts ------------------------------------------------------------------
BASELINE_COMMANDS = ["list", "health", "resolve", "prune", "unpin", "pin", "check"]


def schema_check(model: Any) -> Any:
    """A verdict function: the first error of `model` (a Pydantic artifact schema) as `<file>: <field>: <msg>`."""
    from pydantic import ValidationError

    from quantsweep.store.baselines import pydantic_location

    def check(doc: Any, source: str) -> None:
        try:
            model.model_validate(doc)
        except ValidationError as exc:
            e = exc.errors()[0]
            raise InputError(f"{source}: {pydantic_location(e['loc'])}: {e['msg']}") from None

    return check


def record_check(doc: Any, source: str) -> None:
    schema_check(Record)(doc, source)
    if doc["id"] != Path(source).parent.name:
        raise InputError(f"{source}: id: not its folder's name")


@fuzz(24)
@given(data=st.data())
def test_baseline_record_mutations(data):
    with workspace((QUICKSTART, "q")) as (cwd, _):
        record = BaselineStore(cwd / "bl").add(SUMMARY, load(cwd / SUMMARY), pinned=False)
        source = f"bl/records/{record.id}/record.json"
        doc, path, op, value = mutate(load(cwd / source), data)
        expected = verdict(record_check, doc, source)
        if path == ("created_at",) and op == "replace":
            assert expected is not None or isinstance(value, str)  # only an ISO time with an offset passes
        if path == ("cells",) and op == "replace" and not (isinstance(value, int) and not isinstance(value, bool)
                                                           and value >= 0):
            assert expected is not None
        dump(cwd / source, doc)
        command = data.draw(st.sampled_from(BASELINE_COMMANDS), label="command")
        args = {
            "list": ["baseline", "list", "--storage-root", "bl", "--json"],
            "health": ["baseline", "health", "--storage-root", "bl"],
            "resolve": ["baseline", "resolve", "--storage-root", "bl", "-s", SUMMARY],
            "prune": ["baseline", "prune", "--storage-root", "bl", "--keep-last", "0"],
            "unpin": ["baseline", "unpin", "--storage-root", "bl", "--record", record.id],
            "pin": ["baseline", "pin", "--storage-root", "bl", "--record", record.id],
            "check": ["check-artifacts", "--baseline-record", source],
        }[command]
        if command == "check":  # check-artifacts knows the schema, not the store's rule that id names the folder
            expected = verdict(schema_check(Record), doc, source)
        if expected is not None:
            expect_refused(args, cwd, source, expected)
        else:
            expect_ran(args, cwd, (0, 2) if command == "resolve" else (0,))


@fuzz(16)
@given(data=st.data())
def test_frontier_artifact_mutations(data):
    with workspace((QUICKSTART, "q")) as (cwd, _):
        expect_ran(["frontier", "-s", SUMMARY, "-o", "f.json"], cwd)
        doc, path, op, value = mutate(load(cwd / "f.json"), data)
        expected = verdict(schema_check(FrontierArtifact), doc, "f.json")
        if op == "replace" and path[-1] in ("achieved_bits", "quality") and (
                not _num(value) or _huge(value) or not math.isfinite(value)):
            assert expected is not None
        dump(cwd / "f.json", doc)
        args = ["check-artifacts", "--frontier", "f.json"]
        if expected is not None:
            expect_refused(args, cwd, "f.json", expected)
        else:
            expect_ran(args, cwd)


# --- bytes: every reader, every kind of broken file ---------------------------------------------------------------
CORRUPTIONS = ["random", "not-utf8", "truncated", "duplicate-key", "empty", "top-level-list", "fifo", "folder",
               "dev-zero", "bom", "trailing"]
READERS = {
    # name: (file it reads, command, exit codes when the corruption is harmless)
    "kpi-report": (SUMMARY, ["kpi-report", "-s", "{f}"], (0, 3)),
    "render-report": ("t/sweep-summary.json", ["render-report", "-s", "{f}", "-o", "rep"], (0,)),
    "compare": (SUMMARY, ["compare", "-s", "p/sweep-summary.json", "-s", "{f}"], (0, 3)),
    "frontier": (SUMMARY, ["frontier", "-s", "{f}", "-o", "f.json"], (0,)),
    "baseline-add": (SUMMARY, ["baseline", "add", "--storage-root", "bl", "-s", "{f}"], (0,)),
    "report-cell": (MANIFEST, ["report", "--cell", "{d}"], (0,)),
    "export-manifest": (MANIFEST, ["export", "--cell", "{d}", "--out", "exported"], None),
    "export-recipe": (RECIPE, ["export", "--cell", "{d}", "--out", "exported"], None),
    "baseline-record": ("bl/records/{id}/record.json", ["baseline", "list", "--storage-root", "{root}"], (0,)),
    "check-record": ("bl/records/{id}/record.json", ["check-artifacts", "--baseline-record", "{f}"], (0,)),
    "check-frontier": ("f.json", ["check-artifacts", "--frontier", "{f}"], (0,)),
}


def corrupt(text: str, how: str, data: st.DataObject) -> bytes | None:
    """The damaged bytes, or None for the kinds that are not a regular file's content."""
    raw = text.encode()
    if how == "random":
        return data.draw(st.binary(max_size=200), label="bytes")
    if how == "not-utf8":
        at = data.draw(st.integers(0, len(raw)), label="at")
        return raw[:at] + b"\xff\xfe" + raw[at:]
    if how == "truncated":
        return raw[: data.draw(st.integers(0, len(raw) - 2), label="cut")]
    if how == "duplicate-key":
        first = next(iter(json.loads(text)))
        return b"{" + json.dumps(first).encode() + b": 1, " + raw.lstrip()[1:]
    if how == "empty":
        return b""
    if how == "top-level-list":
        return b"[" + raw + b"]"
    if how == "bom":
        return b"\xef\xbb\xbf" + raw
    if how == "trailing":
        return raw + b"\n}garbage"
    return None


@fuzz(44)
@given(data=st.data())
def test_broken_files_for_every_reader(data):
    reader = data.draw(st.sampled_from(sorted(READERS)), label="reader")
    how = data.draw(st.sampled_from(CORRUPTIONS), label="corruption")
    rel, template, codes = READERS[reader]
    with workspace((QUICKSTART, "q"), (QUICKSTART, "p"), (TINY, "t")) as (cwd, outside):
        if "{id}" in rel:
            rel = rel.replace("{id}", BaselineStore(cwd / "bl").add(SUMMARY, load(cwd / SUMMARY), pinned=False).id)
        if rel == "f.json":
            expect_ran(["frontier", "-s", SUMMARY, "-o", "f.json"], cwd)
        target = cwd / rel
        content = corrupt(target.read_text(), how, data)
        target.unlink()
        root = "bl"
        if how == "fifo":  # outside the watched folder (a snapshot would block on it), reached through its path
            if reader.startswith(("report", "export")):
                shutil.move(str(cwd / TINY_CELL), outside / "cell")
                target = outside / "cell" / Path(rel).name
            elif reader == "baseline-record":
                shutil.move(str(cwd / "bl"), outside / "bl")
                root = str(outside / "bl")
                target = outside / rel
            else:
                target = outside / Path(rel).name
            rel = str(target)
            os.mkfifo(target)
        elif how == "folder":
            target.mkdir()
        elif how == "dev-zero":
            target.symlink_to("/dev/zero")
        else:
            assert content is not None
            target.write_bytes(content)
        cell = str(Path(rel).parent)
        args = [a.replace("{f}", rel).replace("{d}", cell).replace("{root}", root) for a in template]
        if how == "bom":  # a byte-order mark is not part of the document: harmless
            if codes is None:
                assert locate(Path(cell) if Path(cell).is_absolute() else cwd / cell).cell_id
            else:
                expect_ran(args, cwd, codes)
            return
        o = expect_failure(args, cwd, rel, 2)
        assert len(o.stderr.strip().splitlines()) == 1, o.describe()


# --- where outputs go ------------------------------------------------------------------------------------------------
OUTPUTS = {
    # name: (command with {out}, flag, "dir" or "file" output, a file the command writes inside a dir output)
    "render-report": (["render-report", "-s", "t/sweep-summary.json", "-o", "{out}"], "--out", "dir", "report.md"),
    "compare": (["compare", "-s", SUMMARY, "-s", "p/sweep-summary.json", "-o", "{out}"], "--out", "dir",
                "compare.md"),
    "frontier": (["frontier", "-s", SUMMARY, "-o", "{out}"], "--out", "file", None),
    "frontier-history": (["frontier", "-s", SUMMARY, "-o", "f.json", "--storage-root", "{out}"], "--storage-root",
                         "dir", None),
    "kpi-report": (["kpi-report", "-s", SUMMARY, "--out", "{out}"], "--out", "file", None),
    "baseline-add": (["baseline", "add", "--storage-root", "{out}", "-s", SUMMARY], "--storage-root", "dir", None),
    "report-cell": (["report", "--cell", "{out}"], "--cell", "cell", "layer-sensitivity-report.md"),
}


def _out_args(name: str, out: str) -> list[str]:
    return [a.replace("{out}", out) for a in OUTPUTS[name][0]]


# A record's or a history file's name carries the time: there is no name at which to plant a link in advance.
_LOCATIONS = [(n, w) for n in sorted(OUTPUTS) for w in ("file", "under-file", "read-only", "link")
              if not (w == "link" and OUTPUTS[n][2] == "dir" and OUTPUTS[n][3] is None)]


@pytest.mark.parametrize("name, where", _LOCATIONS)
def test_output_locations(name, where):
    _template, flag, kind, inner = OUTPUTS[name]
    with workspace((QUICKSTART, "q"), (QUICKSTART, "p"), (TINY, "t")) as (cwd, outside):
        (cwd / "afile").write_text("not a folder\n")
        if kind == "cell":
            out = TINY_CELL
            if where == "file":
                out = "afile"
            elif where == "under-file":
                out = "afile/cell"
            elif where == "read-only":
                make_read_only(cwd / TINY_CELL)
        elif where == "file":
            out = "afile" if kind == "dir" else "q"  # a folder where the artifact file goes
        elif where == "under-file":
            out = "afile/sub" if kind == "dir" else "afile/out.json"
        elif where == "read-only":
            (cwd / "ro").mkdir()
            make_read_only(cwd / "ro")
            out = "ro/sub" if kind == "dir" else "ro/out.json"
        else:
            out = "linked" if kind != "cell" else TINY_CELL
        target = outside / "victim.txt"
        target.write_text("someone else's file\n")
        if where == "link":
            if kind == "file":
                (cwd / out).symlink_to(target)
            elif inner is not None:
                (cwd / out).mkdir(exist_ok=True)
                (cwd / out / inner).symlink_to(target)
            else:
                raise AssertionError(f"no name to plant a link at for {name}")  # excluded from _LOCATIONS
            expect_ran(_out_args(name, out), cwd, (0, 3))
            assert target.read_text() == "someone else's file\n"
            written = cwd / out / inner if inner is not None else cwd / out
            assert written.is_file() and not written.is_symlink()
            return
        o = expect_failure(_out_args(name, out), cwd, flag, 2, watch=(outside,))
        assert out.split("/")[0] in o.stderr, o.describe()


@pytest.mark.parametrize("case", ["kpi-report", "frontier", "frontier-link", "render-report", "compare"])
def test_an_output_never_replaces_the_input(case):
    """Outputs are renamed over their names: a name that is the summary being read would lose it."""
    with workspace((QUICKSTART, "q"), (QUICKSTART, "p")) as (cwd, _):
        shutil.copy(cwd / SUMMARY, cwd / "q" / "compare.json")
        shutil.copy(cwd / SUMMARY, cwd / "q" / "scatter.json")
        (cwd / "alias.json").symlink_to("q/sweep-summary.json")
        args, source = {
            "kpi-report": (["kpi-report", "-s", SUMMARY, "--out", SUMMARY], SUMMARY),
            "frontier": (["frontier", "-s", "alias.json", "-o", SUMMARY], "alias.json"),
            "frontier-link": (["frontier", "-s", SUMMARY, "-o", "f.json", "--storage-root", "h"], None),
            "render-report": (["render-report", "-s", "q/scatter.json", "-o", "q"], "q/scatter.json"),
            "compare": (["compare", "-s", "p/sweep-summary.json", "-s", "q/compare.json", "-o", "q"], "q/compare.json"),
        }[case]
        if source is None:  # an output that is a link *to* the summary replaces the link, not the summary
            expect_ran(["frontier", "-s", SUMMARY, "-o", "alias.json"], cwd)
            assert not (cwd / "alias.json").is_symlink() and load(cwd / SUMMARY)["kind"] == "quantsweep.sweep_summary"
            return
        o = expect_failure(args, cwd, "--out")
        assert f"would replace {source}, which this command reads" in o.stderr, o.describe()


def test_frontier_history_keeps_two_artifacts_of_the_same_second():
    from quantsweep.reports.frontier_artifact import build_artifact, write_artifact

    with workspace((QUICKSTART, "q")) as (cwd, _):
        doc = build_artifact(cwd / SUMMARY, generated_at="2026-01-01T00:00:00+00:00")
        first = write_artifact(doc, cwd / "a.json", cwd / "h")[1]
        second = write_artifact(dict(doc, provenance_ref="again"), cwd / "b.json", cwd / "h")[1]
        assert first != second and second.endswith("2026-01-01T000000_0000-2.json")
        assert len(list((cwd / "h").rglob("*.json"))) == 2


@pytest.mark.parametrize(("metric", "values", "limit"), [
    ("ppl_ratio", (1.7e308, 1.0), 1e300),  # a linear axis that would span 1e308
    ("kl_mean", (1.7e308, 1.7e308), 1e-300),  # a log axis from 1e-300 to 1e308
    ("kl_mean", (5e-324, 0.0), 0.05),  # the smallest positive float and an exact zero on a log axis
])
def test_extreme_but_possible_measurements_render(metric, values, limit):
    """Huge or tiny quality values are legitimate (a diverged cell): the plot draws them at its edge and says so,
    the paired comparisons leave out what has no finite spread."""
    with workspace((TINY, "t")) as (cwd, _):
        doc = load(cwd / "t/sweep-summary.json")
        doc["matrix"]["kpi"].update(quality_metric=metric, max_quality=limit)
        for r, v in zip(doc["rows"], values, strict=False):
            r["quality"][metric] = v
            r["quality"]["per_sequence"]["kl"] = [v, v / 3, 0.0, v]  # a spread that overflows a float
        dump(cwd / "t/sweep-summary.json", doc)
        o = expect_ran(["render-report", "-s", "t/sweep-summary.json", "-o", "rep", "--json"], cwd)
        notes = json.loads(o.stdout)["notes"]
        edge = any(v != 0 and not 1e-100 <= v <= 1e100 for v in values)
        assert any("drawn at the edge of the frontier plot" in n for n in notes) == edge, notes


def test_render_report_on_a_malformed_summary_leaves_the_out_folder_as_it_was():
    with workspace((TINY, "t")) as (cwd, _):
        doc = load(cwd / "t/sweep-summary.json")
        doc["rows"][2]["quality"]["kl_mean"] = -1.0
        dump(cwd / "t/bad.json", doc)
        for existing in (False, True):
            if existing:
                expect_ran(["render-report", "-s", "t/sweep-summary.json", "-o", "rep"], cwd)
            before = snapshot(cwd)
            o = expect_failure(["render-report", "-s", "t/bad.json", "-o", "rep"], cwd, "t/bad.json")
            assert "rows[2].quality.kl_mean: expected a number >= 0, got -1.0" in o.stderr
            assert snapshot(cwd) == before
            assert (cwd / "rep").exists() == existing


def test_render_report_names_a_damaged_manifest_in_a_note():
    """A manifest is optional for the report (the views without it say why), so a damaged one is a note naming
    the file and the field, on stderr and in the report's Notes, never a silent gap."""
    with workspace((TINY, "t")) as (cwd, _):
        mf = cwd / "t/wfp8_afp8/default/a/manifest.json"
        doc = load(mf)
        doc["layers"][2]["raw_scores"] = [1e-9, -float("inf"), 3.0]
        dump(mf, doc)
        o = expect_ran(["render-report", "-s", "t/sweep-summary.json", "-o", "rep"], cwd)
        where = "t/wfp8_afp8/default/a/manifest.json: layers[2].raw_scores: 3 values for 2 formats"
        assert f"note: wfp8_afp8/default/a: per-layer scores unavailable ({where})" in o.stderr, o.describe()
        assert where in (cwd / "rep" / "report.md").read_text()


def _small_files(limit: int) -> None:
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG instead of killing
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))


@pytest.mark.parametrize("existing", [False, True])
def test_render_report_on_a_full_disk_exits_5_and_leaves_no_half_report(existing):
    import matplotlib.font_manager  # noqa: F401 - its font cache exists before the file size limit applies

    with workspace((TINY, "t")) as (cwd, _):
        if existing:
            (cwd / "rep").mkdir()
            (cwd / "rep" / "report.md").write_text("an earlier report\n")
        before = snapshot(cwd)
        env = {**os.environ, "PYTHONWARNINGS": "ignore", "PYTHONDONTWRITEBYTECODE": "1"}
        res = subprocess.run([sys.executable, "-m", "quantsweep", "render-report", "-s", "t/sweep-summary.json",
                              "-o", "rep"], cwd=cwd, capture_output=True, text=True, timeout=300, env=env,
                             preexec_fn=lambda: _small_files(16_000))
        assert res.returncode == 5, res.stderr
        lines = res.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error:") and "cannot write" in lines[0], res.stderr
        assert any(name in lines[0] for name in ("report.md", "report.html", "scatter.json", ".png", ".svg")), lines
        assert "Traceback" not in res.stderr and res.stdout == ""
        assert snapshot(cwd) == before  # no half report, no staging folder, no temporary
