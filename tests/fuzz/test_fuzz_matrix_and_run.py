"""Hostile matrices and hostile sweep folders against `dry-run` and `run` (docs/reliability.md).

Generated cases (hypothesis, derandomized so CI is reproducible) mutate a valid matrix anywhere in its tree, or
build pathological documents (deep nesting, alias bombs, recursive aliases, duplicate keys, huge or non-text
files); each must end in exit 0 or a one-line exit 2 naming the file, within bounded time and memory, creating
nothing. Then the sweep folder's faults, on a real tiny run: planted links, a torn or complete last row, a
second concurrent run, two matrices with the same name, temporaries of a killed run, a full disk, Ctrl-C, and a
repository whose config would run a command.
"""

from __future__ import annotations

import copy
import fcntl
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from harness import assert_bounded, expect_failure, invoke, snapshot
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from pipeline_helpers import TINY_MATRIX, cli, load_rows, write_matrix  # noqa: E402

SETTINGS = dict(deadline=None, derandomize=True, database=None, suppress_health_check=list(HealthCheck))

VALID: dict[str, Any] = {
    "name": "fz",
    "model": {"source": "synthetic", "preset": "llama-tiny"},
    "dataset": {"seq_len": 32, "sizes": {"a": 4}, "eval_samples": 4},
    "autoquant": {"batch_size": 4, "effective_bits": [6.0, 8.0], "disabled_layers": ["*lm_head*"]},
    "axes": {
        "quant_pairs": ["wint8_afp16", {"name": "mine", "base": "wint4_afp16", "weight": "int4", "activation": "fp16"}],
        "granularities": ["default", {"name": "g32", "overrides": {"*weight_quantizer": {"block_sizes": {-1: 32}}}}],
        "dataset_sizes": ["a", {"name": "b", "samples": 8}],
    },
    "canary": {"max_baseline_perplexity": 1.0e6},
    "labels": {"lane": "ci"},
    "kpi": {"max_quality": 0.5},
}

# --- generated matrix mutations ------------------------------------------------------------------------------------
HOSTILE_VALUES = st.one_of(
    st.booleans(), st.none(), st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=30),
    st.just("x" * 5000), st.just([]), st.just({}), st.just([[[[[[1]]]]]]), st.just({"a": {"b": {"c": None}}}),
)


def _paths(doc: Any, prefix: tuple = ()) -> list[tuple]:
    out = [prefix]
    if isinstance(doc, dict):
        for k, v in doc.items():
            out += _paths(v, (*prefix, k))
    elif isinstance(doc, list):
        for i, v in enumerate(doc):
            out += _paths(v, (*prefix, i))
    return out


def _set(doc: Any, path: tuple, value: Any, delete: bool) -> Any:
    if not path:
        return value
    parent = doc
    for p in path[:-1]:
        parent = parent[p]
    if delete:
        del parent[path[-1]]
    else:
        parent[path[-1]] = value
    return doc


@st.composite
def mutated_matrices(draw: Any) -> tuple[dict[str, Any] | Any, str]:
    doc = copy.deepcopy(VALID)
    for _ in range(draw(st.integers(1, 3))):
        paths = _paths(doc)
        path = draw(st.sampled_from(paths))
        delete = bool(path) and draw(st.booleans())
        doc = _set(doc, path, draw(HOSTILE_VALUES), delete)
        if not isinstance(doc, dict):
            break
    return doc, draw(st.sampled_from(["yaml", "json"]))


def _dump(doc: Any, fmt: str) -> str:
    if fmt == "json":
        return json.dumps(doc, allow_nan=True)
    return yaml.safe_dump(doc, sort_keys=False, allow_unicode=True)


@settings(max_examples=70, **SETTINGS)
@given(mutated_matrices())
def test_mutated_matrix_dry_run_is_accepted_or_refused_in_one_line(case: tuple[Any, str]) -> None:
    doc, fmt = case
    with tempfile.TemporaryDirectory() as tmp:
        cwd = Path(tmp)
        path = cwd / f"m.{fmt}"
        path.write_text(_dump(doc, fmt))
        before = snapshot(cwd)
        o = invoke(["dry-run", "--json", "-m", path.name], cwd)
        assert_bounded(o)
        assert o.code in (0, 2), o.describe()
        if o.code == 2:
            assert all(line.startswith(("error: m.", "m.")) for line in o.stderr.strip().splitlines()), o.describe()
        else:
            plan = json.loads(o.stdout)
            assert plan["kind"] == "quantsweep.dry_run" and len(plan["cells"]) >= 1
        assert snapshot(cwd) == before, o.describe()


@settings(max_examples=25, **SETTINGS)
@given(st.sampled_from(["dataset.seq_len", "dataset.eval_samples", "autoquant.batch_size", "repeats",
                        "canary.repeats", "dataset.sizes.a", "dataset.seed"]),
       st.booleans(), st.sampled_from(["yaml", "json"]))
def test_booleans_are_not_counts(field: str, value: bool, fmt: str) -> None:
    doc = copy.deepcopy(VALID)
    *parents, leaf = field.split(".")
    target = doc
    for p in parents:
        target = target.setdefault(p, {})
    target[leaf] = value
    with tempfile.TemporaryDirectory() as tmp:
        cwd = Path(tmp)
        (cwd / f"m.{fmt}").write_text(_dump(doc, fmt))
        msg = expect_failure(["dry-run", "-m", f"m.{fmt}"], cwd, f"m.{fmt}").stderr
        assert field.rsplit(".", 1)[0] in msg and "got a boolean" in msg, msg
        assert msg.strip().count("\n") == 0, msg


# --- pathological documents ----------------------------------------------------------------------------------------
def _alias_bomb(levels: int, fan: int, inside_overrides: bool) -> str:
    lines = ["x0: &x0 [lol]"]
    for i in range(1, levels + 1):
        lines.append(f"x{i}: &x{i} [" + ", ".join([f"*x{i - 1}"] * fan) + "]")
    body = "\n".join("  " + ln for ln in lines)
    if inside_overrides:  # a free-form mapping the schema accepts
        return ("name: bomb\naxes:\n  quant_pairs: [wint8_afp16]\n  dataset_sizes: [small]\n  granularities:\n"
                "    - name: g\n      overrides:\n" + "\n".join("      " + ln for ln in lines) + "\n")
    return "name: bomb\nbomb:\n" + body + "\n"


@settings(max_examples=20, **SETTINGS)
@given(st.integers(4, 30), st.integers(2, 12), st.booleans())
def test_alias_expansion_is_bounded(levels: int, fan: int, inside: bool) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        cwd = Path(tmp)
        (cwd / "m.yaml").write_text(_alias_bomb(levels, fan, inside))
        o = invoke(["dry-run", "-m", "m.yaml"], cwd)
        assert_bounded(o)
        assert o.code == 2 and "m.yaml" in o.stderr, o.describe()
        if fan**levels > 200_000:
            assert "expands to more than" in o.stderr, o.describe()


@settings(max_examples=20, **SETTINGS)
@given(st.integers(49, 20_000), st.sampled_from(["yaml-flow", "yaml-block", "json"]), st.booleans())
def test_deep_nesting_is_refused(depth: int, style: str, inside_overrides: bool) -> None:
    if style == "json":
        nest = "[" * depth + "]" * depth
        text = (json.dumps({"name": "deep", "axes": {"quant_pairs": ["wint8_afp16"], "dataset_sizes": ["small"],
                                                      "granularities": [{"name": "g", "overrides": {"x": "HOLE"}}]}})
                if inside_overrides else '{"name": "deep", "x": "HOLE"}').replace('"HOLE"', nest)
        name = "m.json"
    elif style == "yaml-flow":
        text = "name: deep\nx: " + "[" * depth + "]" * depth + "\n"
        name = "m.yaml"
    else:
        depth = min(depth, 400)
        text = "name: deep\n" + "".join("  " * i + f"k{i}:\n" for i in range(depth)) + "  " * depth + "v\n"
        name = "m.yaml"
    with tempfile.TemporaryDirectory() as tmp:
        cwd = Path(tmp)
        (cwd / name).write_text(text)
        msg = expect_failure(["dry-run", "-m", name], cwd, name).stderr
        assert "levels deep" in msg, msg


@pytest.mark.parametrize(
    "name, content, expect",
    [
        ("rec.yaml", "name: r\naxes: &a {quant_pairs: [*a]}\n", "recursive alias"),
        ("dup.yaml", "name: x\naxes: {quant_pairs: [wint8_afp16], dataset_sizes: [small]}\nname: y\n",
         "line 3: duplicate key 'name' (also on line 1"),
        ("dupnested.yaml", "name: x\naxes:\n  quant_pairs: [wint8_afp16]\n  quant_pairs: [wint4_afp16]\n"
         "  dataset_sizes: [small]\n", "duplicate key 'quant_pairs'"),
        ("dup.json", '{"name": "x", "axes": {"quant_pairs": ["wint8_afp16"], "dataset_sizes": ["small"]}, "name": "y"}',
         "duplicate key 'name'"),
        ("bin.yaml", b"name: \x00\xff\xfe garbage", "not UTF-8 text (invalid byte 0xff at offset 7)"),
        ("big.yaml", "name: big\npad: '" + "x" * (2 << 20) + "'\n", "larger than the 1.0 MiB a matrix file may be"),
        ("int.json", '{"name": "x", "seed": ' + "9" * 5000 + "}", "an integer has more than 4300 digits"),
        ("empty.yaml", "", "the top level must be a mapping, got NoneType"),
        ("list.yaml", "- 1\n- 2\n", "the top level must be a mapping, got list"),
        ("tag.yaml", "name: !!python/object/apply:os.system ['touch pwned']\n", "could not determine a constructor"),
    ],
)
def test_pathological_matrix_files(tmp_path: Path, name: str, content: str | bytes, expect: str) -> None:
    path = tmp_path / name
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    for command in (["dry-run"], ["run"]):
        msg = expect_failure([*command, "-m", name], tmp_path, name).stderr
        assert expect in msg, msg
    assert not (tmp_path / "pwned").exists()


def test_matrix_that_is_not_a_regular_file_fails_at_once(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "fifo.yaml")  # reading a FIFO with no writer would block forever
    expect_failure(["dry-run", "-m", "fifo.yaml"], tmp_path, "fifo.yaml: is not a regular file")
    (tmp_path / "zero.yaml").symlink_to("/dev/zero")  # endless
    expect_failure(["dry-run", "-m", "zero.yaml"], tmp_path, "zero.yaml: is not a regular file")
    (tmp_path / "dir.yaml").mkdir()
    expect_failure(["run", "-m", "dir.yaml"], tmp_path, "dir.yaml: is a folder")


def test_cell_count_is_capped_before_expansion(tmp_path: Path) -> None:
    doc = copy.deepcopy(VALID)
    doc["autoquant"]["effective_bits"] = [4 + i / 100 for i in range(400)]
    doc["axes"]["dataset_sizes"] = [{"name": f"s{i}", "samples": 4 * (i + 1)} for i in range(30)]  # 2*2*30*400
    write_matrix(tmp_path, doc)
    msg = expect_failure(["dry-run", "-m", "m.yaml"], tmp_path, "m.yaml: axes: expands to 48,000 cells").stderr
    assert "--max-cells 48000" in msg
    expect_failure(["run", "-m", "m.yaml"], tmp_path, "expands to 48,000 cells")
    doc["autoquant"]["effective_bits"] = [4 + i / 100 for i in range(90)]  # 10,800 cells
    write_matrix(tmp_path, doc)
    o = invoke(["dry-run", "--json", "--max-cells", "20000", "-m", "m.yaml"], tmp_path)
    assert o.code == 0 and len(json.loads(o.stdout)["cells"]) == 10_800, o.describe()


def test_long_strings_print_in_bounded_time(tmp_path: Path) -> None:
    """Rich's automatic highlighting is quadratic in a string's length: a 500 KB description stalled dry-run."""
    doc = copy.deepcopy(VALID)
    doc["description"] = "x" * 500_000
    doc["labels"] = {"lane": "y" * 200_000}
    write_matrix(tmp_path, doc)
    o = invoke(["dry-run", "-m", "m.yaml"], tmp_path)
    assert_bounded(o)
    assert o.code == 0 and o.stdout.count("x") >= 500_000, o.describe()  # printed whole


def test_output_root_that_is_a_symlink_loop_is_invalid_input(tmp_path: Path) -> None:
    write_matrix(tmp_path, VALID)
    (tmp_path / "loop").symlink_to(tmp_path / "loop")
    expect_failure(["run", "-m", "m.yaml", "--output-root", "loop"], tmp_path, "is a dangling or looping symbolic link")


def test_frontier_history_stays_under_its_root(tmp_path: Path) -> None:
    """A summary's key parts (hardware fingerprint, lane, profile) name folders of the history: `..` must not climb."""
    import shutil

    fixture = Path(__file__).resolve().parents[1] / "fixtures" / "quickstart"
    shutil.copytree(fixture, tmp_path / "sweep")
    path = tmp_path / "sweep" / "sweep-summary.json"
    doc = json.loads(path.read_text())
    doc["hardware"]["fingerprint"] = ".."
    doc["labels"] = {"execution_lane": "..", "vram_profile": ".."}
    path.write_text(json.dumps(doc))
    root = tmp_path / "a" / "b" / "store"
    root.mkdir(parents=True)
    o = invoke(["frontier", "--json", "-s", str(path), "-o", "f.json", "--storage-root", str(root)], tmp_path)
    assert o.code == 0, o.describe()
    history = [Path(f) for f in json.loads(o.stdout)["files"][1:]]
    assert len(history) == 1 and history[0].resolve().is_relative_to(root.resolve()), history
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == ["b"]


def test_unpaired_surrogates_are_refused(tmp_path: Path) -> None:
    """A JSON `\\ud800` escape decodes to a string Python cannot encode: printing or tokenising it crashed later."""
    doc = copy.deepcopy(VALID)
    doc["labels"] = {"k": "v\ud800"}
    (tmp_path / "m.json").write_text(json.dumps(doc))
    expect_failure(["dry-run", "-m", "m.json"], tmp_path, "m.json: a string holds an unpaired UTF-16 surrogate")
    (tmp_path / "d.jsonl").write_text('{"text": "hello world"}\n{"text": "hello \\ud800 world"}\n')
    doc = copy.deepcopy(VALID)
    doc["dataset"] = {**doc["dataset"], "source": "jsonl", "path": "d.jsonl"}
    write_matrix(tmp_path, doc)
    expect_failure(["run", "-m", "m.yaml"], tmp_path, "d.jsonl: line 2")


def test_reports_never_replace_what_a_sweep_records(tmp_path: Path) -> None:
    import shutil

    shutil.copytree(Path(__file__).resolve().parents[1] / "fixtures" / "quickstart", tmp_path / "s")
    manifest = next((tmp_path / "s").rglob("manifest.json")).relative_to(tmp_path)
    for args in (["kpi-report", "-s", "s/sweep-summary.json", "--out", str(manifest)],
                 ["frontier", "-s", "s/sweep-summary.json", "-o", str(manifest)]):
        o = expect_failure(args, tmp_path, f"--out {manifest}: would replace a file that a sweep or baseline store")
        assert o.code == 2


def test_baseline_store_records_folder_must_not_be_a_link(tmp_path: Path) -> None:
    import shutil

    shutil.copytree(Path(__file__).resolve().parents[1] / "fixtures" / "quickstart", tmp_path / "s")
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "store").mkdir()
    (tmp_path / "store" / "records").symlink_to(tmp_path / "elsewhere", target_is_directory=True)
    for args in (["baseline", "add", "--storage-root", "store", "-s", "s/sweep-summary.json"],
                 ["baseline", "prune", "--storage-root", "store", "--keep-last", "0"]):
        expect_failure(args, tmp_path, "store/records: is a symbolic link")
    assert list((tmp_path / "elsewhere").iterdir()) == []


def test_trust_remote_code_is_warned_in_dry_run(tmp_path: Path) -> None:
    doc = copy.deepcopy(VALID)
    doc["model"]["trust_remote_code"] = True
    write_matrix(tmp_path, doc)
    o = invoke(["dry-run", "--json", "-m", "m.yaml"], tmp_path)
    assert o.code == 0, o.describe()
    assert any("trust_remote_code is true" in w for w in json.loads(o.stdout)["warnings"])


# --- where run writes ----------------------------------------------------------------------------------------------
def test_run_refuses_an_output_root_that_is_a_file_and_creates_nothing(tmp_path: Path) -> None:
    write_matrix(tmp_path, {**VALID, "output_root": "out"})
    (tmp_path / "out").write_text("not a folder")
    msg = expect_failure(["run", "-m", "m.yaml"], tmp_path, "output_root out/fz: ").stderr
    assert f"{tmp_path / 'out'} is a file, so the folder cannot be created" in msg
    expect_failure(["run", "-m", "m.yaml", "--output-root", "m.yaml/x"], tmp_path, "--output-root")


def test_invalid_run_creates_no_sweep_folder(tmp_path: Path) -> None:
    doc = copy.deepcopy(VALID)
    doc["axes"]["quant_pairs"] = ["no_such_pair"]
    write_matrix(tmp_path, doc)
    expect_failure(["run", "-m", "m.yaml"], tmp_path, "m.yaml: axes.quant_pairs[0]")
    assert not (tmp_path / "runs").exists()


def _tiny(tmp: Path, **updates: Any) -> Path:
    doc = copy.deepcopy(TINY_MATRIX)
    doc["axes"] = {"quant_pairs": ["wint8_afp16"], "granularities": ["default"], "dataset_sizes": ["a", "b"]}
    doc.update(updates)
    return write_matrix(tmp, doc)


def test_planted_links_are_never_written_through(tmp_path: Path) -> None:
    _tiny(tmp_path)
    sweep = tmp_path / "runs" / "tiny"
    sweep.mkdir(parents=True)
    victim = tmp_path / "victim.txt"
    victim.write_text("precious\n")
    for name in (".lock", "rows.jsonl"):
        link = sweep / name
        link.symlink_to(victim)
        o = expect_failure(["run", "-m", "m.yaml"], tmp_path, f"runs/tiny/{name}: is a symbolic link")
        assert victim.read_text() == "precious\n", o.describe()
        link.unlink()
    # a link planted at a folder on the way to a cell folder: the cell's files would land in the victim folder
    victim_dir = tmp_path / "victim_dir"
    victim_dir.mkdir()
    (sweep / "wint8_afp16").symlink_to(victim_dir, target_is_directory=True)
    expect_failure(["run", "-m", "m.yaml"], tmp_path, f"{sweep / 'wint8_afp16'}: is a symbolic link",
                   watch=(victim_dir,))
    assert list(victim_dir.iterdir()) == []
    (sweep / "wint8_afp16").unlink()
    # --rerun moves the previous results into archive/: not through a link planted there
    (sweep / "archive").symlink_to(victim_dir, target_is_directory=True)
    expect_failure(["run", "--rerun", "-m", "m.yaml"], tmp_path, "runs/tiny/archive: is a symbolic link",
                   watch=(victim_dir,))
    (sweep / "archive").unlink()
    # a folder where the row log goes: named, not "4: Is a directory"
    (sweep / "rows.jsonl").mkdir()
    expect_failure(["run", "-m", "m.yaml"], tmp_path, "runs/tiny/rows.jsonl: is not a regular file")


def test_rows_log_last_row_without_newline_is_kept_and_torn_line_dropped(tmp_path: Path) -> None:
    from quantsweep.store.rows import RowLog, read_rows

    log = tmp_path / "rows.jsonl"
    rows = [{"cell_id": "a", "status": "ok"}, {"cell_id": "b", "status": "ok"}]
    log.write_text(json.dumps(rows[0]) + "\n" + json.dumps(rows[1]))  # complete, no final newline
    assert RowLog(log).repair() == 0
    assert read_rows(log) == rows and log.read_text().endswith("}\n")
    log.write_text(log.read_text() + '{"cell_id": "c", "sta')  # torn
    assert RowLog(log).repair() == len('{"cell_id": "c", "sta')
    assert read_rows(log) == rows


def test_second_run_is_refused_at_once_before_torch(tmp_path: Path) -> None:
    _tiny(tmp_path, model={**TINY_MATRIX["model"], "trust_remote_code": True})
    sweep = tmp_path / "runs" / "tiny"
    sweep.mkdir(parents=True)
    with open(sweep / ".lock", "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)  # as a running sweep holds it
        probe = ("import atexit, sys\natexit.register(lambda: sys.stderr.write('torch imported: %s\\n' % "
                 "('torch' in sys.modules)))\nfrom quantsweep.cli import main\nsys.argv = ['quantsweep', 'run', '-m', "
                 "'m.yaml']\nmain()\n")
        res = subprocess.run([sys.executable, "-c", probe], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert res.returncode == 2, res.stderr
    assert "another `quantsweep run` is using this sweep folder" in res.stderr
    assert "torch imported: False" in res.stderr
    assert "warning: model.trust_remote_code is true" in res.stderr  # said before anything is loaded


@pytest.mark.slow
def test_sweep_folder_faults_on_a_real_run(tmp_path: Path) -> None:
    """One real tiny sweep, then: a matrix of the same name but another seq_len is refused without touching the
    first run's artifacts (and archived by --rerun); a killed writer's temporary is removed; a rows log with a
    line missing its fields is refused naming the line; a full disk (RLIMIT_FSIZE) mid-run exits 5 and the next
    run resumes to the same rows."""
    _tiny(tmp_path)
    res = cli("run", "--json", "-m", "m.yaml", cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    sweep = tmp_path / "runs" / "tiny"
    rows = load_rows(sweep / "rows.jsonl")
    assert len(rows) == 2
    cell_dir = tmp_path / rows[0]["path"]
    before = snapshot(sweep)

    # same name, another seq_len: other cell ids at the same paths
    _tiny(tmp_path, dataset={**TINY_MATRIX["dataset"], "seq_len": 16})
    o = expect_failure(["run", "-m", "m.yaml"], tmp_path, f"{Path(rows[0]['path']) / 'manifest.json'}: this folder "
                       f"holds cell {rows[0]['cell_id']}")
    assert "Nothing was overwritten" in o.stderr
    assert snapshot(sweep) == before

    # a temporary left by a writer killed mid-rename is removed by the next run (which has nothing else to do)
    _tiny(tmp_path)
    stale = sweep / ".sweep-summary.json.abc123xy.tmp"
    stale.write_text("{half")
    (cell_dir / ".manifest.json.zz9zz9zz.tmp").write_text("{half")
    o = invoke(["run", "-m", "m.yaml"], tmp_path)
    assert o.code == 0 and not stale.exists() and not (cell_dir / ".manifest.json.zz9zz9zz.tmp").exists(), o.describe()
    assert "removed 2 temporary file(s)" in o.stderr

    # a rows log line missing its fields
    log = sweep / "rows.jsonl"
    good = log.read_bytes()
    log.write_bytes(good + b'{"cell_id": "zzz"}\n')
    o = expect_failure(["run", "-m", "m.yaml"], tmp_path, "runs/tiny/rows.jsonl: line 3: row.key: missing")
    log.write_bytes(good)

    # full disk in the middle of a run: exit 5 naming a file; the previous results are archived intact and the
    # next run completes the same rows
    first_ok = load_rows(log)
    limit = len(log.read_bytes()) // 2 + 4096  # room for the manifests of one cell, not a whole sweep

    def _limit() -> None:
        import resource

        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    env = {**os.environ, "TQDM_DISABLE": "1"}
    big = subprocess.run([sys.executable, "-m", "quantsweep", "run", "--rerun", "-m", "m.yaml"], cwd=tmp_path,
                         capture_output=True, text=True, timeout=900, env=env, preexec_fn=_limit)
    assert big.returncode == 5, big.stderr[-2000:]
    assert "cannot write: File too large" in big.stderr and "Traceback" not in big.stderr
    archived = sorted((sweep / "archive").iterdir())
    assert len(archived) == 1 and load_rows(archived[0] / "rows.jsonl") == first_ok  # the previous results are safe
    res = cli("run", "--json", "-m", "m.yaml", cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    again = load_rows(log)
    assert [r["cell_id"] for r in again] == [r["cell_id"] for r in first_ok]
    assert [r["achieved_bits"] for r in again] == [r["achieved_bits"] for r in first_ok]


@pytest.mark.slow
def test_ctrl_c_prints_how_to_resume(tmp_path: Path) -> None:
    _tiny(tmp_path)
    env = {**os.environ, "TQDM_DISABLE": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "quantsweep", "run", "-m", "m.yaml"], cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    deadline = time.time() + 300
    while time.time() < deadline and not (tmp_path / "runs" / "tiny" / ".lock").exists():
        time.sleep(0.1)
    time.sleep(3)
    proc.send_signal(signal.SIGINT)
    _out, err = proc.communicate(timeout=300)
    assert proc.returncode == 130, err[-2000:]
    assert "interrupted; what was recorded is intact: run the same command again to resume" in err
    assert "Traceback" not in err


# --- code run from where the user stands ---------------------------------------------------------------------------
def _git(repo: Path, *args: str) -> str:
    env = {**os.environ, "GIT_CONFIG_GLOBAL": os.devnull, "GIT_CONFIG_NOSYSTEM": "1", "GIT_AUTHOR_NAME": "t",
           "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@t"}
    return subprocess.run(["git", *args], cwd=repo, capture_output=True, text=True, check=True, env=env).stdout.strip()


@pytest.mark.parametrize("attack", ["fsmonitor", "filter", "filter-same-line", "filter-worktree-config"])
def test_dry_run_never_runs_the_repositorys_commands(tmp_path: Path, attack: str) -> None:
    repo = tmp_path / "repo"
    repo.mkdir()
    _git(repo, "init", "-q")
    write_matrix(repo, VALID)
    (repo / "data.txt").write_text("x\n")
    _git(repo, "add", ".")
    _git(repo, "commit", "-qm", "m")
    sha = _git(repo, "rev-parse", "HEAD")
    marker = tmp_path / "PWNED"
    script = tmp_path / "evil.sh"
    script.write_text(f"#!/bin/sh\ntouch {marker}\ncat\n")
    script.chmod(0o755)
    if attack == "fsmonitor":
        _git(repo, "config", "core.fsmonitor", str(script))
    else:
        (repo / ".gitattributes").write_text("*.txt filter=evil\n")
        if attack == "filter":
            _git(repo, "config", "filter.evil.clean", str(script))
        elif attack == "filter-same-line":  # a section header after another on one line: no line starts with it
            with open(repo / ".git" / "config", "a") as fh:
                fh.write(f'[core][filter "evil"]\n\tclean = {script}\n')
        else:  # per-worktree config, a file of its own
            _git(repo, "config", "extensions.worktreeConfig", "true")
            (repo / ".git" / "config.worktree").write_text(f'[filter "evil"]\n\tclean = {script}\n')
    os.utime(repo / "data.txt", (time.time() + 5, time.time() + 5))  # stat-dirty: git would consult the filter
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    o = invoke(["dry-run", "--json", "-m", str(repo / "m.yaml")], elsewhere)
    assert o.code == 0, o.describe()
    assert not marker.exists(), "git ran a command configured by the repository"
    commit = json.loads(o.stdout)["commit"]
    assert commit["sha"] == sha
    if attack.startswith("filter"):
        assert commit["dirty"] is None and "filter drivers" in commit["dirty_unknown"]
    else:
        assert commit["dirty"] is False


@pytest.mark.parametrize("algorithm", ["bogus", {"method": "bogus"}, 7])
def test_export_refuses_an_unknown_calibration_algorithm_before_loading(tmp_path: Path, algorithm: Any) -> None:
    """ModelOpt asserts on an algorithm it does not know, after the model is loaded and the baseline computed."""
    import shutil

    shutil.copytree(Path(__file__).resolve().parents[1] / "fixtures" / "tiny_cells", tmp_path / "s")
    cell = tmp_path / "s" / "wint8_afp16" / "default" / "a"
    manifest = json.loads((cell / "manifest.json").read_text())
    manifest["quantization"]["effective_config"]["algorithm"] = algorithm
    (cell / "manifest.json").write_text(json.dumps(manifest))
    o = expect_failure(["export", "--cell", str(cell), "--out", "x"], tmp_path,
                       f"{cell / 'manifest.json'}: quantization.effective_config.algorithm")
    assert "is not a calibration algorithm ModelOpt knows" in o.stderr, o.describe()


def test_weights_rules_with_catastrophic_backtracking_are_refused(tmp_path: Path) -> None:
    """Python's regex engine has no timeout: `(a+)+$` against a near-miss name runs for hours."""
    (tmp_path / "r.yaml").write_text("version: 1\nignore: ['(a+)+$']\n")
    o = expect_failure(["weights", "--model", "synthetic:llama-tiny", "--rules", "r.yaml", "--formats", "none"],
                       tmp_path, "r.yaml")
    assert "repeats a repeated group" in o.stderr, o.describe()
