"""The CLI's rough edges (issue 17): --version and -h, pair aliases and suggestions, choices in --help, the final
table in 80 columns, the phase bar's counts and timer, plain progress lines on stderr under `run --json`."""

from __future__ import annotations

import copy
import json
import re
import sys
import time
from io import StringIO
from pathlib import Path

import pytest
import yaml
from conftest import REPO
from pipeline_helpers import cli as run_cli
from pipeline_helpers import write_matrix
from rich.console import Console

from quantsweep.catalogue import _PAIR_ALIASES_BY_SOURCE, PAIR_ALIASES, QUANT_PAIRS, resolve_pair_name
from quantsweep.ui import RichReporter, SinceStartColumn, render_rows_table

FIXTURES = Path(__file__).parent / "fixtures"


@pytest.fixture
def qs(monkeypatch, capsys):
    """`quantsweep ARGS` in this process: (exit code, stdout, stderr), help rendered 200 columns wide."""
    from quantsweep.cli import main

    monkeypatch.setenv("NO_COLOR", "1")
    monkeypatch.setenv("COLUMNS", "200")

    def run(*args: str) -> tuple[int, str, str]:
        monkeypatch.setattr(sys, "argv", ["quantsweep", *args])
        capsys.readouterr()
        try:
            main()
            code = 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        got = capsys.readouterr()
        return code, re.sub(r"\x1b\[[0-9;]*m", "", got.out), re.sub(r"\x1b\[[0-9;]*m", "", got.err)

    return run


def _commands() -> list[list[str]]:
    from quantsweep.cli import app

    out = []
    for c in app.registered_commands:
        out.append([c.name])
    for group in app.registered_groups:
        out += [[group.name, c.name] for c in group.typer_instance.registered_commands]
    return out


def test_version_and_short_help_on_every_command(qs):
    from quantsweep import __version__

    for flag in ("--version", "-V"):
        assert qs(flag) == (0, f"quantsweep {__version__}\n", "")
    commands = _commands()
    assert len(commands) == 20  # 13 commands + 7 baseline sub-commands: a new one is covered automatically
    for cmd in [[], ["baseline"], *commands]:
        code, out, _err = qs(*cmd, "-h")
        usage = rf"Usage: [^\n]*quantsweep {re.escape(' '.join(cmd))}".rstrip()  # in-process, click's prog name varies
        assert code == 0 and re.search(usage + r" \[OPTIONS\]", out), cmd
        assert "-h" in out and "--help" in out


def test_constrained_options_show_their_choices(qs):
    expected = {
        ("run",): ["--engine", "<shared|naive>", "--device", "<auto|cpu|cuda>", "--executor", "<local|ray>"],
        ("export",): ["--device", "<auto|cpu|cuda>"],
        ("render-report",): ["--bits", "<achieved|storage>"],
        ("frontier",): ["--bits", "<achieved|storage>"],
        ("kpi-report",): ["--quality-metric", "<kl_mean|ppl_ratio>"],
        ("weights",): ["--device", "<auto|cpu|cuda>", "--fake-quant-backend", "<auto|modelopt|torch>"],
    }
    for cmd, fragments in expected.items():
        code, out, _ = qs(*cmd, "--help")
        assert code == 0
        for option, choices in zip(fragments[::2], fragments[1::2], strict=True):
            line = next(ln for ln in out.splitlines() if f"{option} " in ln)
            assert choices in line, (cmd, line)
        assert "<str>" not in "".join(ln for ln in out.splitlines() if any(o in ln for o in fragments[::2]))
    code, _out, err = qs("run", "--matrix", "x.yaml", "--engine", "fast")
    assert code == 2 and "'fast' is not one of 'shared', 'naive'" in err


def test_aliases_map_to_catalogue_pairs_and_are_documented():
    expected = {"W4A16": "wint4_afp16", "w8a16": "wint8_afp16", "int4_awq": "wint4_afp16_awq", "NVFP4": "wfp4_afp4",
                "fp8": "wfp8_afp8", "W8A8": "wint8_aint8", "int8_sq": "wint8_aint8_sq", "INT4_AWQ_CFG":
                "wint4_afp16_awq", "w4a16_nvfp4": "wfp4_afp16", "mxfp4": "wmxfp4_amxfp4", "Wint4-Afp16": "wint4_afp16"}
    assert {k: resolve_pair_name(k) for k in expected} == expected
    assert resolve_pair_name("w4a8") is None  # ambiguous across tools: suggestions, not an alias
    doc = (REPO / "docs" / "matrix-format.md").read_text()
    for table in _PAIR_ALIASES_BY_SOURCE.values():
        for alias, pair in table.items():
            assert f"| `{alias}` | `{pair}` |" in doc, alias
    assert all(pair in QUANT_PAIRS for pair, _ in PAIR_ALIASES.values())


def test_aliases_in_a_matrix_and_unknown_name_suggestions(tmp_path, qs):
    data = {"name": "t", "model": {"source": "synthetic", "preset": "llama-tiny"},
            "dataset": {"seq_len": 32, "sizes": {"a": 4}, "eval_samples": 4},
            "axes": {"quant_pairs": ["W4A16", "int4_awq", "nvfp4", "fp8", "w8a8"], "dataset_sizes": ["a"]}}
    path = tmp_path / "m.yaml"
    path.write_text(yaml.safe_dump(data))
    code, out, err = qs("dry-run", "--matrix", str(path), "--json")
    assert code == 0, err
    cells = json.loads(out)["cells"]
    assert [c["pair"] for c in cells] == ["wint4_afp16", "wint4_afp16_awq", "wfp4_afp4", "wfp8_afp8", "wint8_aint8"]
    assert cells[0]["path"].endswith("/wint4_afp16/default/a")  # the catalogue name, not the alias, names paths

    data["axes"]["quant_pairs"] = ["wint4_afp16", "wint3_afp16"]
    path.write_text(yaml.safe_dump(data))
    code, out, err = qs("dry-run", "--matrix", str(path))
    assert code == 2 and out == ""
    assert err.strip() == (
        f"error: {path}: axes.quant_pairs[1]: unknown quant pair 'wint3_afp16'; did you mean wint8_afp16, "
        "wint4_afp16, wint4_afp16_awq? (`quantsweep catalogue` lists pairs, docs/matrix-format.md their aliases)"
    )
    data["axes"]["quant_pairs"] = ["W4A16", "wint4_afp16"]  # an alias and its pair are the same entry
    path.write_text(yaml.safe_dump(data))
    code, _, err = qs("dry-run", "--matrix", str(path))
    assert code == 2 and "axes.quant_pairs[1]: duplicate entry 'wint4_afp16' (same as [0])" in err


def _long_names_summary() -> dict:
    """The quickstart fixture's 8 rows renamed to the longest names the catalogue has, with two budgets."""
    doc = json.loads((FIXTURES / "quickstart" / "sweep-summary.json").read_text())
    doc = copy.deepcopy(doc)
    for i, r in enumerate(doc["rows"]):
        r["pair"] = ["wint4_afp16_awq", "wmxint8_amxint8"][i % 2]
        r["granularity"] = ["a_per_token_dynamic", "w_per_out_channel"][i // 2 % 2]
        r["dataset_size"] = "medium"
        r["effective_bits_target"] = [4.75, 6.5][i // 4]
        r["key"] = f"{r['pair']}/{r['granularity']}/medium@{r['effective_bits_target']:g}"
    doc["rows"][3]["valid"], doc["rows"][3]["reasons"] = False, ["nonfinite_scores"]
    return doc


@pytest.mark.parametrize("which", ["quickstart", "long"])
def test_final_table_fits_80_columns_with_every_name_whole(which):
    doc = json.loads((FIXTURES / "quickstart" / "sweep-summary.json").read_text()) if which == "quickstart" \
        else _long_names_summary()
    console = Console(width=80, record=True, file=StringIO(), color_system=None)
    render_rows_table(doc, console)
    lines = console.export_text().splitlines()
    assert max(len(ln) for ln in lines) <= 80
    title = lines[0]
    for r in doc["rows"]:  # one line holds the row's numbers and every axis name not named once in the title
        axes = [a for a in (r["pair"], r["granularity"], r["dataset_size"]) if f" {a}" not in title]
        numbers = [f"{r['achieved_bits']:.3f}", f"{r['quality']['kl_mean']:.4g}", f"{r['quality']['ppl_ratio']:.4f}"]
        assert sum(all(w in ln.split() for w in axes + numbers) for ln in lines) >= 1, r["key"]
    text = "\n".join(lines)
    assert "…" not in text
    if which == "quickstart":  # pairs, granularities and sizes vary: columns; the one budget goes to the title
        assert lines[0].startswith("quickstart: 8/8 cells (budget 8)")
        assert lines[2].split() == ["pair", "granularity", "size", "bits", "KL", "mean", "PPL", "ratio", "top-1", "s",
                                    "ok"]
    else:
        assert "(size medium)" in lines[0]
        assert f"{doc['rows'][3]['key']}: invalid: nonfinite_scores" in text


def test_phase_bar_counts_each_phase_against_its_own_total_and_its_timer_runs():
    console = Console(file=StringIO(), force_terminal=True, width=120)
    rep = RichReporter(console)
    try:
        rep.start_cells(6, 0)
        rep.start_cell(None, "shared search", {"calibrate": 2, "score": 2, "solve": 6, "evaluate": 6})
        task = lambda: rep.progress.tasks[rep.phase_task]  # noqa: E731
        for phase in ["calibrate"] * 2 + ["score"] * 2:
            rep.step(phase)
        assert (task().description, task().completed, task().total) == ("shared search: score", 2, 2)
        for _ in range(6):
            rep.step("solve")
            rep.step("evaluate")
        assert (task().description, task().completed, task().total) == ("shared search: evaluate", 6, 6)
        assert task().finished  # complete, and still the timer is the cell's, not frozen at the first phase's end
        task().fields["t0"] = time.monotonic() - 65
        assert SinceStartColumn().render(task()).plain == "0:01:05"
        rep.start_cell(None, "next", {"calibrate": 1, "score": 1})
        assert (task().completed, task().total) == (0, 1)
        rep.step("evaluate")  # a phase without a declared total counts to 1 per step, never 1/1 of another's
        rep.step("evaluate")
        assert (task().description, task().completed, task().total) == ("next: evaluate", 2, 2)
    finally:
        rep.stop()


def test_run_json_prints_plain_progress_on_stderr(tmp_path):
    data = {
        "name": "tiny", "model": {"source": "synthetic", "preset": "llama-tiny"},
        "dataset": {"seq_len": 32, "sizes": {"a": 4, "b": 8}, "eval_samples": 4, "seed": 0},
        "autoquant": {"batch_size": 4, "effective_bits": 8.0},
        "axes": {"quant_pairs": ["W8A16", "int4"], "granularities": ["default"], "dataset_sizes": ["a", "b"]},
        "canary": {"enabled": False},
    }
    path = write_matrix(tmp_path, data)
    res = run_cli("run", "--matrix", str(path), "--output-root", str(tmp_path / "runs"), "--json", cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-2000:]
    assert json.loads(res.stdout)["rows_written"] == 4
    summary = json.loads((tmp_path / "runs" / "tiny" / "sweep-summary.json").read_text())
    assert summary["model"]["provenance"]["source_format"] == "synthetic"  # recorded with the model
    lines = res.stderr.splitlines()
    assert not any("\x1b[" in ln or "━" in ln for ln in lines)  # plain lines, no bars
    done = [ln for ln in lines if ln.startswith("done ")]
    assert [ln.split(":")[0] for ln in done] == [
        "done wint8_afp16/default/a", "done wint8_afp16/default/b", "done wint4_afp16/default/a",
        "done wint4_afp16/default/b"]
    union = "shared search: 2 formats for 4 cells (data-free)"
    phases = [ln.strip()[len(union) + 2:] for ln in lines if ln.strip().startswith(union + ":")]
    assert phases == ["calibrate 1/2", "calibrate 2/2", "score batch 1/2", "score batch 2/2",
                      "solve 1/4", "evaluate 1/4", "solve 2/4", "evaluate 2/4", "solve 3/4", "evaluate 3/4",
                      "solve 4/4", "evaluate 4/4"]
    assert re.search(r"^done wint4_afp16/default/b: bits 4\.\d{3}, KL [0-9.e-]+, ppl ratio [0-9.]+, [0-9.]+ s$",
                     done[-1])
