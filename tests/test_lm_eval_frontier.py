"""`evaluation.lm_eval.cells: frontier` (docs/trust.md): after the last cell, the frontier cells (the report's
definition) are rebuilt from their recipes and evaluated, the baseline once per sweep; the results are new row
versions; a run killed during the post-phase finishes only what is missing. The tiny model, offline task."""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path

import pytest
from pipeline_helpers import REPO, TINY_MATRIX, cli, kill_run_after_rows, load_rows, write_matrix

from quantsweep.reports.frontier import build_frontier
from quantsweep.store.validity import finalize_rows

os.environ.setdefault("TQDM_DISABLE", "1")
TASKS = str(REPO / "matrices" / "tasks")
BASELINE_FILE = "lm-eval-baseline.json"
CELLS = 3


def frontier_matrix(folder: Path, name: str = "front") -> Path:
    """3 cells in one frontier group at a budget of 8 bits: INT8 weights (8.0 bits), INT4 weights (fewer bits,
    worse KL) and FP8 weights and activations (8.0 bits, worse KL than INT8 weight-only: dominated)."""
    data = copy.deepcopy(TINY_MATRIX)
    data["name"] = name
    data["canary"]["enabled"] = False
    data["dataset"]["sizes"] = {"a": 4}
    data["autoquant"] = {"batch_size": 4, "effective_bits": 8.0}
    data["axes"] = {"quant_pairs": ["wint8_afp16", "wint4_afp16", "wfp8_afp8"], "granularities": ["default"],
                    "dataset_sizes": ["a"]}
    data["evaluation"] = {"stability": {"resamples": 0},
                          "lm_eval": {"tasks": ["qs_facts"], "include_path": TASKS, "limit": 20, "cells": "frontier"}}
    return write_matrix(folder, data)


@pytest.fixture
def offline(monkeypatch):
    pytest.importorskip("lm_eval")
    import datasets

    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")  # the shipped task needs no network (subprocesses inherit it)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(datasets.config, "HF_DATASETS_OFFLINE", True)


def _expected_frontier(summary: dict) -> set[str]:
    """The report's frontier of the committed rows (reports/frontier.py), independently of the run's code path."""
    kpi = summary["matrix"]["kpi"]
    view = build_frontier(finalize_rows(summary["rows"]), kpi["quality_metric"], kpi["max_quality"])
    return {p["key"] for p in view["points"] if p["on_frontier"]}


def test_frontier_cells_get_lm_eval_results_and_the_others_do_not(tmp_path, offline, monkeypatch):
    import quantsweep.engine.lm_eval_runner as runner
    from quantsweep.execution.sweep import RunOptions, run_sweep

    calls: list[str] = []
    real = runner.evaluate_model

    def counting(model, tokenizer, spec, label):  # a spy: the real evaluation runs
        calls.append(label)
        return real(model, tokenizer, spec, label)

    monkeypatch.setattr(runner, "evaluate_model", counting)
    path = frontier_matrix(tmp_path)
    out = run_sweep(path, RunOptions(output_root=str(tmp_path / "out")))
    assert out.exit_code == 0
    summary = json.loads(out.summary_path.read_text())
    front = _expected_frontier(summary)
    assert 0 < len(front) < CELLS, front  # the test means something only with cells on and off the frontier
    assert sorted(calls) == sorted(["baseline", *front])  # the baseline once, each frontier cell once
    assert out.lm_eval_phase == {"baseline": True, "cells": [r["key"] for r in summary["rows"] if r["key"] in front]}
    for row in summary["rows"]:
        block = (row.get("trust") or {}).get("lm_eval")
        manifest = json.loads((Path(row["path"]) / "manifest.json").read_text())
        if row["key"] not in front:
            assert block is None and "revision" not in row and "lm_eval" not in (manifest["trust"] or {})
            continue
        assert block["computable"] is True and block["model"] == "rebuilt" and row["revision"] == 2
        assert block["samples"] == {"qs_facts": 20} and set(block["tasks"]["qs_facts"]) == {"acc", "acc_norm"}
        # the rebuilt model is the measured one: its KL on the held-out samples is the row's
        assert block["rebuilt_kl_mean"] == pytest.approx(row["quality"]["kl_mean"], rel=1e-3)
        assert manifest["trust"]["lm_eval"] == block
    rows_file = out.summary_path.parent / "rows.jsonl"
    lines = load_rows(rows_file)
    assert len(lines) == CELLS + len(front)  # one new version per frontier cell, nothing else appended
    stored = json.loads((out.summary_path.parent / BASELINE_FILE).read_text())
    assert stored["lm_eval"] == summary["baseline"]["lm_eval"] and stored["lm_eval"]["computable"] is True
    assert stored["lm_eval"]["evaluated_by"]["pid"] == os.getpid()

    again = run_sweep(path, RunOptions(output_root=str(tmp_path / "out")))  # resumed: nothing left, nothing redone
    assert again.exit_code == 0 and again.rows_written == 0 and again.lm_eval_phase is None
    assert len(calls) == 1 + len(front) and load_rows(rows_file) == lines
    assert json.loads(again.summary_path.read_text())["baseline"]["lm_eval"] == stored["lm_eval"]


def test_a_run_killed_in_the_post_phase_finishes_only_what_is_missing(tmp_path, offline):
    path = frontier_matrix(tmp_path, "frontkill")
    rows_file = tmp_path / "out" / "frontkill" / "rows.jsonl"
    args = ["run", "--matrix", str(path), "--output-root", str(tmp_path / "out"), "--json"]
    kill_run_after_rows(args, tmp_path, rows_file, rows=CELLS + 1)  # the cells + the first frontier cell's version
    before = load_rows(rows_file)
    baseline_before = (rows_file.parent / BASELINE_FILE).read_text()  # the phase evaluates the baseline first
    done_before = [r["key"] for r in before[CELLS:]]
    assert len(done_before) >= 1
    res = cli(*args, cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    doc = json.loads(res.stdout)
    summary = json.loads((rows_file.parent / "sweep-summary.json").read_text())
    front = _expected_frontier(summary)
    missing = [r["key"] for r in summary["rows"] if r["key"] in front and r["key"] not in done_before]
    assert len(front) >= 2 and missing  # the kill landed inside the phase
    assert doc["rows_written"] == 0 and doc["cells_skipped"] == CELLS
    assert doc["lm_eval_phase"] == {"baseline": False, "cells": missing}  # only what was missing
    rows = load_rows(rows_file)
    assert rows[: len(before)] == before  # nothing recorded before the kill changed
    versions = [r["key"] for r in rows[CELLS:]]
    assert sorted(versions) == sorted(front) and len(versions) == len(set(versions))  # none twice, none lost
    assert (rows_file.parent / BASELINE_FILE).read_text() == baseline_before
    assert all(r["trust"]["lm_eval"]["computable"] for r in summary["rows"] if r["key"] in front)


def test_with_two_ray_workers_the_post_phase_and_the_baseline_run_once_on_one_worker(tmp_path, offline, monkeypatch):
    """The Ray executor: no worker evaluates the baseline when it loads the model; the driver hands the whole
    post-phase (baseline + frontier cells) to one worker, once."""
    pytest.importorskip("ray", reason="ray is in the dev group; `uv sync` installs it")
    from quantsweep.execution.ray_executor import RayExecutor
    from quantsweep.execution.sweep import RunOptions, run_sweep

    phases: list[tuple[bool, list[str]]] = []
    real = RayExecutor.downstream

    def counting(self, jobs, baseline):  # a spy on the driver's side: the real phase runs on a worker
        phases.append((baseline, [j.cell.key for j in jobs]))
        yield from real(self, jobs, baseline)

    monkeypatch.setattr(RayExecutor, "downstream", counting)
    path = frontier_matrix(tmp_path, "frontray")
    out = run_sweep(path, RunOptions(output_root=str(tmp_path / "out"), executor="ray", workers=2, threads=1))
    assert out.exit_code == 0
    summary = json.loads(out.summary_path.read_text())
    front = _expected_frontier(summary)
    assert phases == [(True, [r["key"] for r in summary["rows"] if r["key"] in front])]  # one phase, one baseline
    workers = {w["pid"]: w["name"] for w in summary["execution"]["workers"]}
    assert len(workers) == 2 and os.getpid() not in workers
    baseline = json.loads((out.summary_path.parent / BASELINE_FILE).read_text())["lm_eval"]
    assert baseline == summary["baseline"]["lm_eval"] and baseline["computable"] is True
    by = {baseline["evaluated_by"]["pid"]} | {r["trust"]["lm_eval"]["evaluated_by"]["pid"]
                                              for r in summary["rows"] if r["key"] in front}
    assert len(by) == 1 and by <= set(workers)  # the baseline and every frontier cell: one worker process
    assert all("lm_eval" not in (r.get("trust") or {}) for r in summary["rows"] if r["key"] not in front)
    assert out.lm_eval_phase == {"baseline": True, "cells": phases[0][1]}


def test_row_versions_and_the_baseline_file_refuse_what_cannot_be_trusted(tmp_path):
    """Pure: a new row version's fields are validated (hostile values refused with file and field); a baseline
    file that is damaged or of other settings is not used (it is evaluated again)."""
    from quantsweep.errors import InputError
    from quantsweep.execution.lm_eval_phase import (BASELINE_FILE as NAME, amended_row, read_baseline,
                                                    rebuilt_mismatch, write_baseline)
    from quantsweep.reports.summary_io import validate_row

    block = {"computable": True, "reason": None, "num_fewshot": 0, "limit": 4, "samples": {"t": 4},
             "tasks": {"t": {"acc": {"value": 0.5, "stderr": 0.25}}}, "model": "rebuilt", "rebuilt_kl_mean": 0.01,
             "evaluated_by": {"pid": 1, "host": "h"}}
    row = {"key": "k", "cell_id": "c", "status": "ok", "quality": {"kl_mean": 0.01}, "trust": {"stability": None}}
    new = amended_row(row, block)
    assert new["revision"] == 2 and new["trust"] == {"stability": None, "lm_eval": block} and "lm_eval" not in row
    assert amended_row(new, block)["revision"] == 3
    validate_row(new, "rows.jsonl", "line 5")
    for field, value, message in (("revision", 0, r"line 5.revision: expected"),
                                  ("revision", 1.5, r"line 5.revision: expected"),
                                  ("rebuilt_kl_mean", -1.0, r"line 5.trust.lm_eval.rebuilt_kl_mean: expected"),
                                  ("model", "cached", r"line 5.trust.lm_eval.model: expected one of rebuilt")):
        bad = copy.deepcopy(new)
        (bad if field == "revision" else bad["trust"]["lm_eval"])[field] = value
        with pytest.raises(InputError, match=message):
            validate_row(bad, "rows.jsonl", "line 5")
    assert rebuilt_mismatch(new, block) is None
    assert "KL 0.0102" in rebuilt_mismatch(new, {**block, "rebuilt_kl_mean": 0.0102})

    settings = {"tasks": ["t"], "limit": 4}
    assert read_baseline(tmp_path, settings) is None  # absent
    write_baseline(tmp_path, settings, block)
    assert read_baseline(tmp_path, settings) == block
    assert read_baseline(tmp_path, {**settings, "limit": 5}) is None  # other settings: evaluated again
    doc = json.loads((tmp_path / NAME).read_text())
    doc["lm_eval"]["tasks"]["t"]["acc"]["stderr"] = -1
    (tmp_path / NAME).write_text(json.dumps(doc))
    assert read_baseline(tmp_path, settings) is None  # invalid
    (tmp_path / NAME).write_text('{"kind": "quantsweep.lm_eval_baseline", "sett')
    assert read_baseline(tmp_path, settings) is None  # torn
