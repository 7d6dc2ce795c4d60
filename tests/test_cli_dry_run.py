"""`quantsweep dry-run` and `quantsweep catalogue` through a real subprocess (`python -m quantsweep`)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import MATRICES, REPO


def _env(ceiling: Path | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("FORCE_COLOR", "CLICOLOR_FORCE", "PY_COLORS")}
    env.update(NO_COLOR="1", TERM="dumb", COLUMNS="100", PYTHONDONTWRITEBYTECODE="1")
    if ceiling is not None:
        env["GIT_CEILING_DIRECTORIES"] = str(ceiling)
    return env


def qs(*args: str, cwd: Path = REPO, ceiling: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "quantsweep", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
        env=_env(ceiling),
    )


@pytest.fixture
def cli(monkeypatch, capsys, tmp_path):
    """Run `quantsweep.cli.main` in this process (fast); returns (exit code, stdout, stderr).

    The contract tests above go through a real subprocess; the rest use this to keep the file fast.
    """
    from quantsweep.cli import main

    monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(tmp_path.parent))
    monkeypatch.setenv("NO_COLOR", "1")

    def run(*args: str, cwd: Path = REPO) -> tuple[int, str, str]:
        monkeypatch.chdir(cwd)
        monkeypatch.setattr(sys, "argv", ["quantsweep", *args])
        capsys.readouterr()
        try:
            main()
            code = 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        captured = capsys.readouterr()
        return code, _plain(captured.out), _plain(captured.err)

    return run


def _plain(text: str) -> str:
    return re.sub(r"\x1b\[[0-9;]*m", "", text)


def _snapshot(root: Path) -> dict[str, tuple[int, int]]:
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            st = p.lstat()
            out[str(p.relative_to(root))] = (st.st_mtime_ns, st.st_size)
    out["."] = (root.stat().st_mtime_ns, 0)
    return out


@pytest.fixture(scope="module")
def quickstart_doc() -> dict:
    proc = qs("dry-run", "--matrix", "matrices/quickstart.yaml", "--json")
    assert proc.returncode == 0, proc.stderr
    return {"stdout": proc.stdout, "stderr": proc.stderr, "doc": json.loads(proc.stdout)}


def test_dry_run_json_is_one_document(quickstart_doc):
    doc = quickstart_doc["doc"]
    assert isinstance(doc, dict)
    # exactly one JSON document: decoding consumes everything but trailing whitespace
    text = quickstart_doc["stdout"]
    obj, end = json.JSONDecoder().raw_decode(text)
    assert obj == doc and text[end:].strip() == ""
    assert {"cells", "canary", "estimate", "commit", "warnings", "labels", "kpi_thresholds"} <= set(doc)
    assert doc["kind"] == "quantsweep.dry_run"
    assert doc["schema_version"] == "1"


def test_dry_run_quickstart_contents(quickstart_doc):
    doc = quickstart_doc["doc"]
    assert len(doc["cells"]) == 8
    assert doc["estimate"]["cells"] == 8
    assert doc["estimate"]["unique_formats"] == 2
    assert doc["estimate"]["calibration_batches_per_cell_sum"] == 12  # 2 budgets x 2 pairs x (1 + 2 batches)
    assert doc["canary"]["enabled"] is True
    assert doc["canary"]["cell"] == "wint4g64_afp16/default/tiny@8"
    assert doc["canary"]["repeats"] == 2
    assert doc["canary"]["cell_id"] in {c["id"] for c in doc["cells"]}
    assert doc["labels"] == {"execution_lane": "ci", "vram_profile": "safe"}
    assert (doc["kpi_thresholds"]["quality_metric"], doc["kpi_thresholds"]["max_quality"]) == ("ppl_ratio", 1.10)
    assert doc["sweep_dir"] == "runs/quickstart"
    assert doc["matrix"] == {
        "file": "matrices/quickstart.yaml",
        "name": "quickstart",
        "description": doc["matrix"]["description"],
    }
    assert doc["model"]["display_name"] == "smollm2-135m-instruct"
    assert doc["warnings"] == []
    assert {c["path"] for c in doc["cells"]} == {
        f"runs/quickstart/{p}/default/{s}/bits-{b}"
        for p in ("wint8_afp16", "wint4g64_afp16")
        for s in ("tiny", "small")
        for b in (8, 10)
    }


def test_dry_run_in_repo_reports_commit(quickstart_doc):
    commit = quickstart_doc["doc"]["commit"]
    assert commit is not None
    assert len(commit["sha"]) == 40 and set(commit["sha"]) <= set("0123456789abcdef")
    assert isinstance(commit["dirty"], bool)


def test_dry_run_matches_the_library(quickstart_doc):
    from quantsweep.matrix_io import load_matrix
    from quantsweep.planning import expand

    plan = expand(load_matrix(MATRICES / "quickstart.yaml"))
    assert [c["id"] for c in quickstart_doc["doc"]["cells"]] == [c.id for c in plan.cells]


def test_dry_run_human_output(cli):
    code, out, err = cli("dry-run", "--matrix", "matrices/quickstart.yaml")
    assert code == 0, err
    assert "8 cells -> runs/quickstart" in out
    assert "Canary wint4g64_afp16/default/tiny@8 x2" in out


def _bad_matrix(tmp_path: Path) -> Path:
    data = yaml.safe_load((MATRICES / "quickstart.yaml").read_text())
    data["axes"]["quant_pairs"] = ["wint8_afp16", "wint4_afp16", "wint3"]
    path = tmp_path / "x.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_invalid_matrix_exit_2_names_file_and_field(tmp_path):
    path = _bad_matrix(tmp_path)
    proc = qs("dry-run", "--matrix", str(path), "--json")
    assert proc.returncode == 2
    assert proc.stdout == ""
    assert f"{path}: axes.quant_pairs[2]: unknown quant pair " in proc.stderr
    assert "Traceback" not in proc.stderr


def test_invalid_matrix_relative_path(tmp_path, cli):
    (tmp_path / "matrices").mkdir()
    shutil.move(_bad_matrix(tmp_path), tmp_path / "matrices" / "x.yaml")
    code, out, err = cli("dry-run", "--matrix", "matrices/x.yaml", cwd=tmp_path)
    assert code == 2
    assert out == ""
    lines = [line for line in err.splitlines() if "matrices/x.yaml" in line]
    assert len(lines) == 1
    assert lines[0].startswith("error: matrices/x.yaml: axes.quant_pairs[2]: unknown quant pair ")


def test_several_problems_all_reported(tmp_path, cli):
    path = tmp_path / "x.yaml"
    path.write_text("name: ../evil\nbogus: 1\naxes: {quant_pairs: [wint8_afp16], dataset_sizes: [small]}\n")
    code, _, err = cli("dry-run", "--matrix", str(path))
    assert code == 2
    assert f"{path}: name: " in err
    assert f"{path}: bogus: unknown key" in err


def test_missing_file_exit_2(tmp_path):
    path = tmp_path / "nope.yaml"
    proc = qs("dry-run", "--matrix", str(path), "--json")
    assert proc.returncode == 2
    assert proc.stdout == ""
    assert f"{path}: file not found" in proc.stderr


def test_unknown_canary_cell_exit_2(tmp_path, cli):
    data = yaml.safe_load((MATRICES / "quickstart.yaml").read_text())
    data["canary"]["cell"] = "wint8_afp16/default/huge"
    path = tmp_path / "x.yaml"
    path.write_text(yaml.safe_dump(data))
    code, _, err = cli("dry-run", "--matrix", str(path))
    assert code == 2
    assert f"{path}: canary.cell: no cell 'wint8_afp16/default/huge'" in err


def test_help_exit_0(cli):
    code, out, _ = cli("--help")
    assert code == 0
    assert "dry-run" in out and "catalogue" in out


@pytest.mark.parametrize("args", [("dry-run",), ("dry-run", "--matrix"), ("bogus-command",)])
def test_usage_error_exit_2(cli, args):
    code, _, _ = cli(*args)
    assert code == 2


@pytest.mark.parametrize("name", ["[/x].yaml", "[bold]x.yaml"])
def test_error_message_is_printed_verbatim(tmp_path, cli, name):
    code, _, err = cli("dry-run", "--matrix", name, cwd=tmp_path)
    assert code == 2
    assert f"{name}: file not found" in err


def test_dry_run_leaves_filesystem_unchanged_and_outside_git_commit_is_null(tmp_path):
    work = tmp_path / "work"
    (work / "matrices").mkdir(parents=True)
    shutil.copy(MATRICES / "quickstart.yaml", work / "matrices" / "quickstart.yaml")
    before = _snapshot(work)
    proc = qs("dry-run", "--matrix", "matrices/quickstart.yaml", "--json", cwd=work, ceiling=tmp_path)
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert doc["commit"] is None  # not inside a git work tree
    assert doc["sweep_dir"] == "runs/quickstart"
    assert _snapshot(work) == before
    assert not (work / "runs").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["work"]


def test_dry_run_human_output_outside_git_creates_nothing(tmp_path, cli):
    shutil.copy(MATRICES / "quickstart.yaml", tmp_path / "m.yaml")
    before = _snapshot(tmp_path)
    code, out, err = cli("dry-run", "--matrix", "m.yaml", cwd=tmp_path)
    assert code == 0, err
    assert "not in a git work tree" in out
    assert _snapshot(tmp_path) == before


def test_dry_run_in_a_git_repo_is_read_only(tmp_path, cli):
    if shutil.which("git") is None:
        pytest.skip("git not installed")
    repo = tmp_path / "repo"
    repo.mkdir()
    shutil.copy(MATRICES / "quickstart.yaml", repo / "m.yaml")
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@example.com", "-c", "commit.gpgsign=false"]
    env = _env(tmp_path)
    subprocess.run([*git, "init", "-q"], cwd=repo, check=True, env=env)
    subprocess.run([*git, "add", "m.yaml"], cwd=repo, check=True, env=env)
    subprocess.run([*git, "commit", "-q", "-m", "m"], cwd=repo, check=True, env=env)
    sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True, env=env).stdout.strip()
    before = _snapshot(repo)  # .git included: the index must not be refreshed either
    code, out, err = cli("dry-run", "--matrix", "m.yaml", "--json", cwd=repo)
    assert code == 0, err
    assert json.loads(out)["commit"] == {"sha": sha, "dirty": False}
    assert _snapshot(repo) == before
    (repo / "m.yaml").write_text((repo / "m.yaml").read_text() + "\n# edited\n")
    code, out, _ = cli("dry-run", "--matrix", "m.yaml", "--json", cwd=repo)
    assert json.loads(out)["commit"] == {"sha": sha, "dirty": True}


def test_catalogue_json():
    proc = qs("catalogue", "--json")
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    pairs = {p["name"]: p for p in doc["quant_pairs"]}
    assert len(doc["quant_pairs"]) == len(pairs) == 23
    assert sum(1 for p in pairs.values() if not p["extra"]) == 16
    assert {n for n, p in pairs.items() if p["extra"]} == {
        "wfp4_afp4", "wint4_afp16_awq", "wint8_aint8_sq", "wmxfp8_amxfp8", "wmxfp6_amxfp6", "wmxfp4_amxfp4",
        "wmxint8_amxint8",
    }
    assert pairs["wmxfp8_amxfp8"]["calibration"] == "none"
    assert len(doc["granularities"]) == 9
    grans = {g["name"]: g for g in doc["granularities"]}
    assert grans["w_group64"]["overrides"] == {"*weight_quantizer": {"block_sizes": {"-1": 64}}}
    assert pairs["wfp4_afp16"]["format_bits"] == 4.5
    assert pairs["wint8_afp16"]["input_quantizer"] == "disabled"
    assert pairs["wint4_afp16_awq"]["calibration"] == "awq_lite"
    assert pairs["wint8_aint8"]["base_builtin"] == "INT8_DEFAULT_CFG"


def test_catalogue_human(cli):
    code, out, err = cli("catalogue")
    assert code == 0, err
    assert "wint8_afp16" in out and "recipe_match_channel_token" in out


def test_bare_command_prints_help_and_exits_0(cli):
    code, out, err = cli()
    assert code == 0
    assert "dry-run" in out + err and "run" in out + err
