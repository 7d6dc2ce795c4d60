"""Downstream accuracy through lm-evaluation-harness (docs/trust.md): the shipped offline task on the tiny model,
a W8 and a W4 cell and the baseline once; the row/summary validation; the errors before any model is loaded."""

from __future__ import annotations

import copy
import json
import math
import os

import pytest
from pipeline_helpers import REPO, TINY_MATRIX, write_matrix

from quantsweep.errors import InputError
from quantsweep.reports.summary_io import validate_row
from quantsweep.trust.downstream import deltas

os.environ.setdefault("TQDM_DISABLE", "1")
TASKS = str(REPO / "matrices" / "tasks")


def _matrix(folder, lm_eval):
    data = copy.deepcopy(TINY_MATRIX)
    data["name"] = "downstream"
    data["canary"]["enabled"] = False
    data["dataset"]["sizes"] = {"a": 4}
    data["autoquant"] = {"batch_size": 4, "effective_bits": [8.0]}
    data["axes"] = {"quant_pairs": ["wint8_afp16", "wint4_afp16"], "granularities": ["default"],
                    "dataset_sizes": ["a"]}
    data["evaluation"] = {"stability": {"resamples": 0}, "lm_eval": lm_eval}
    return write_matrix(folder, data)


@pytest.fixture(scope="module")
def downstream_run(tmp_path_factory):
    pytest.importorskip("lm_eval")
    import quantsweep.engine.lm_eval_runner as runner
    from quantsweep.execution.sweep import RunOptions, run_sweep

    folder = tmp_path_factory.mktemp("downstream")
    path = _matrix(folder, {"tasks": ["qs_facts"], "include_path": TASKS, "limit": 40, "cells": "all"})
    calls: list[str] = []
    real = runner.evaluate_model

    def counting(model, tokenizer, spec, label):  # a spy: the real evaluation runs
        calls.append(label)
        return real(model, tokenizer, spec, label)

    import datasets

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_DATASETS_OFFLINE", "1")  # the shipped task needs no network
        mp.setenv("HF_HUB_OFFLINE", "1")
        # datasets reads the variable when first imported, which an earlier test of the session may have done
        mp.setattr(datasets.config, "HF_DATASETS_OFFLINE", True)
        mp.setattr(runner, "evaluate_model", counting)
        out = run_sweep(path, RunOptions(output_root=str(folder / "out")))
        assert datasets.config.HF_DATASETS_OFFLINE
    return out, calls


def test_lm_eval_scores_two_cells_and_the_baseline_once(downstream_run):
    out, calls = downstream_run
    assert out.exit_code == 0
    summary = json.loads(out.summary_path.read_text())
    keys = {r["key"]: r for r in summary["rows"]}
    assert sorted(keys) == ["wint4_afp16/default/a", "wint8_afp16/default/a"]
    assert sorted(calls) == ["baseline", "wint4_afp16/default/a", "wint8_afp16/default/a"]  # baseline once
    base = summary["baseline"]["lm_eval"]
    assert base["computable"] is True and base["samples"] == {"qs_facts": 40} and base["num_fewshot"] == 0
    blocks = {k: r["trust"]["lm_eval"] for k, r in keys.items()}
    for block in [base, *blocks.values()]:
        assert set(block["tasks"]["qs_facts"]) == {"acc", "acc_norm"}
        for m in block["tasks"]["qs_facts"].values():
            # 40 two-valued outcomes: the value is k/40 and lm-eval's stderr is sqrt(p(1-p)/(n-1))
            assert round(m["value"] * 40, 9) == int(round(m["value"] * 40))
            assert m["stderr"] == pytest.approx(math.sqrt(m["value"] * (1 - m["value"]) / 39))
    d8 = {(d["task"], d["metric"]): d for d in deltas(blocks["wint8_afp16/default/a"], base)}
    d4 = {(d["task"], d["metric"]): d for d in deltas(blocks["wint4_afp16/default/a"], base)}
    assert set(d8) == set(d4) == {("qs_facts", "acc"), ("qs_facts", "acc_norm")}
    for k in d8:  # INT8 stays at least as close to the baseline as INT4, or within its error bar
        assert abs(d8[k]["delta"]) <= abs(d4[k]["delta"]) or d8[k]["within_error"], (d8[k], d4[k])
    # what was stored validates, and the report's trust section shows each delta with its error bar
    from quantsweep.reports.render import blocks, build_report, render_markdown
    from quantsweep.reports.summary_io import load_summary

    rep = build_report(load_summary(out.summary_path), True, "2026-01-01T00:00:00+00:00")
    section = render_markdown(blocks(rep)).split("## Can I trust this?", 1)[1].split("\n## ", 1)[0]
    for key, ds in (("wint8_afp16/default/a", d8), ("wint4_afp16/default/a", d4)):
        d = ds[("qs_facts", "acc")]
        assert (f"| {key} | qs_facts acc | {d['value']:.3f} | {base['tasks']['qs_facts']['acc']['value']:.3f} | "
                f"{d['delta']:+.3f} ± {d['stderr']:.3f} | "
                f"{'within error' if d['within_error'] else 'differs'} |") in section


def test_lm_eval_rows_refuse_impossible_values():
    block = {"computable": True, "reason": None, "num_fewshot": 0, "limit": 4, "samples": {"t": 4},
             "tasks": {"t": {"acc": {"value": 0.5, "stderr": 0.25}}}}
    base = {**block, "tasks": {"t": {"acc": {"value": 0.75, "stderr": 0.2}}}}
    [d] = deltas(block, base)
    assert d["delta"] == -0.25 and d["stderr"] == pytest.approx(math.sqrt(0.25**2 + 0.2**2))
    assert d["within_error"] is True
    assert deltas({**block, "computable": False}, base) == []
    row = {"key": "k", "status": "ok", "trust": {"lm_eval": block}}
    bad = copy.deepcopy(row)
    bad["trust"]["lm_eval"]["tasks"]["t"]["acc"]["stderr"] = -0.1
    with pytest.raises(InputError, match=r"s.json: rows\[0\].trust.lm_eval.tasks.t.acc.stderr: expected"):
        validate_row(bad, "s.json", "rows[0]")
    bad["trust"]["lm_eval"]["tasks"]["t"]["acc"] = {"value": float("nan"), "stderr": 0.1}
    with pytest.raises(InputError, match=r"trust.lm_eval.tasks.t.acc.value: expected a finite number, got NaN"):
        validate_row(bad, "s.json", "rows[0]")


def test_lm_eval_errors_before_any_model(tmp_path, monkeypatch):
    from quantsweep.execution.sweep import RunOptions, run_sweep
    from quantsweep.matrix_io import load_matrix

    frontier = _matrix(tmp_path / "f", {"tasks": ["qs_facts"], "cells": "frontier"})
    assert load_matrix(frontier).evaluation.lm_eval.cells == "frontier"  # evaluated after the last cell
    with pytest.raises(InputError, match=r"evaluation.lm_eval.cells: .*'all' or 'frontier'"):
        load_matrix(_matrix(tmp_path / "g", {"tasks": ["qs_facts"], "cells": "frontiers"}))
    unknown = _matrix(tmp_path / "u", {"tasks": ["qs_facts"], "cells": ["wint8_afp16/default/zz"]})
    with pytest.raises(InputError, match=r"evaluation.lm_eval.cells: no cell 'wint8_afp16/default/zz' in the plan"):
        run_sweep(unknown, RunOptions(output_root=str(tmp_path / "o1")))
    import quantsweep.engine.lm_eval_runner as runner

    real = runner.importlib.util.find_spec
    monkeypatch.setattr(runner.importlib.util, "find_spec", lambda n, *a: None if n == "lm_eval" else real(n, *a))
    ok = _matrix(tmp_path / "x", {"tasks": ["qs_facts"]})
    with pytest.raises(InputError, match=r"needs the optional extra: pip install 'quantsweep\[eval\]'") as e:
        run_sweep(ok, RunOptions(output_root=str(tmp_path / "o2")))
    assert e.value.exit_code == 2 and "\n" not in str(e.value)
    assert not (tmp_path / "o1").exists() and not (tmp_path / "o2").exists()
