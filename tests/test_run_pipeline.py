"""`quantsweep run` end to end on a tiny random-init Llama built from a config (CPU, seconds per cell)."""

from __future__ import annotations

import copy
import hashlib
import json
import math
import os
from pathlib import Path

import pytest
from pipeline_helpers import TINY_MATRIX, assert_resumed, cli, kill_run_after_rows, load_rows, write_matrix

from quantsweep.errors import ExitCode
from quantsweep.execution.sweep import RunOptions, run_sweep
from quantsweep.matrix_io import load_matrix
from quantsweep.planning import expand
from quantsweep.store.atomic import dumps
from quantsweep.store.rows import latest_by_cell, read_rows
from quantsweep.store.validity import finalize_rows

os.environ.setdefault("TQDM_DISABLE", "1")


@pytest.fixture(scope="module")
def tiny_sweep(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny")
    path = write_matrix(folder, TINY_MATRIX)
    outcome = run_sweep(path, RunOptions(output_root=str(folder / "runs")))
    return folder, path, outcome


def test_every_cell_has_one_ok_row(tiny_sweep):
    folder, path, outcome = tiny_sweep
    assert outcome.exit_code == ExitCode.OK
    rows = load_rows(folder / "runs" / "tiny" / "rows.jsonl")
    plan = expand(load_matrix(path))
    assert len(plan.cells) == 8
    assert sorted(r["cell_id"] for r in rows) == sorted(c.id for c in plan.cells)
    assert {r["status"] for r in rows} == {"ok"}
    summary = outcome.summary
    assert summary["progress"] == {"done": 8, "total": 8, "errors": 0, "invalid": 0}
    assert [r["cell_id"] for r in summary["rows"]] == [c.id for c in plan.cells]
    assert all(r["valid"] and r["reasons"] == [] for r in summary["rows"])


def test_scores_are_finite_and_positive_for_quantized_formats(tiny_sweep):
    folder, _, outcome = tiny_sweep
    for row in outcome.summary["rows"]:
        manifest = json.loads((Path(row["path"]) / "manifest.json").read_text())
        layers = manifest["layers"]
        assert len(layers) == row["layer_count"] == 9  # 2 layers x (qkv, o, gate/up, down) + lm_head
        for g in layers:
            assert g["formats"][-1] == "none" and g["raw_scores"][-1] == 0.0
            for fmt, score in zip(g["formats"], g["raw_scores"], strict=True):
                if fmt != "none":
                    assert math.isfinite(score) and score > 0, (g["name"], fmt, score)
        assert row["total_score"] > 0 and row["satisfied"] is True
        assert row["achieved_bits"] <= row["effective_bits_target"] + 1e-9


def test_layer_report_is_sorted_and_nonempty(tiny_sweep):
    _, _, outcome = tiny_sweep
    row = outcome.summary["rows"][0]
    report = json.loads((Path(row["path"]) / "layer-sensitivity-report.json").read_text())
    sens = [r["sensitivity"] for r in report["layer_sensitivity"]]
    assert len(sens) == 9 and sens == sorted(sens, reverse=True)
    md = (Path(row["path"]) / "layer-sensitivity-report.md").read_text()
    table = [line for line in md.splitlines() if line.startswith("|model.layers") or line.startswith("|lm_head")]
    assert len(table) == 9
    assert "## Quantization" in md and "| Granularity | default |" in md


def test_manifest_records_overlay_metadata(tiny_sweep):
    _, _, outcome = tiny_sweep
    row = next(r for r in outcome.summary["rows"] if r["pair"] == "wint4_afp16" and r["granularity"] == "w_group64")
    m = json.loads((Path(row["path"]) / "manifest.json").read_text())
    q = m["quantization"]
    assert q["pair"]["name"] == "wint4_afp16" and q["pair"]["base_builtin"] == "INT4_BLOCKWISE_WEIGHT_ONLY_CFG"
    assert q["granularity"] == {
        "name": "w_group64",
        "overrides": {"*weight_quantizer": {"block_sizes": {"-1": 64}}},
        "description": q["granularity"]["description"],
    }
    weight = q["effective_quantizer_summary"]["*weight_quantizer"]
    assert weight["description"] == "int4 group64 static"
    assert weight["attributes"] == [{"num_bits": 4, "block_sizes": {"-1": 64, "type": "static"}}]
    assert m["versions"]["nvidia-modelopt"].startswith("0.47")


def test_quality_metrics_in_sane_ranges_and_w8_closer_than_w4(tiny_sweep):
    _, _, outcome = tiny_sweep
    rows = outcome.summary["rows"]
    for r in rows:
        q = r["quality"]
        assert q["kl_mean"] >= 0 and q["kl_p50"] <= q["kl_p99"] <= q["kl_max"]
        assert 0 < q["top1_agreement"] <= 1
        assert q["ppl_ratio"] == pytest.approx(q["ppl_quant"] / q["ppl_base"])
        assert q["eval_tokens"] == 4 * 31
        # error bars clustered by held-out sequence: the standard error of the 4 sequences' means
        per = q["per_sequence"]["kl"]
        assert q["eval_sequences"] == len(per) == 4
        m = sum(per) / 4
        assert q["kl_mean"] == pytest.approx(m, rel=1e-9)
        assert q["kl_stderr"] == pytest.approx((sum((v - m) ** 2 for v in per) / 3 / 4) ** 0.5, rel=1e-9)
        assert q["ln_ppl_ratio"] == pytest.approx(sum(q["per_sequence"]["ln_ppl_ratio"]) / 4, rel=1e-9, abs=1e-12)
        # bits that count the scales: every layer of the tiny model has 64 or 128 inputs
        if r["pair"] == "wint8_afp16" and r["quantized_layer_count"] == r["layer_count"]:
            assert 8 + 16 / 128 <= r["storage_bits"] <= 8 + 16 / 64 + 1e-9
        assert r["storage_bits"] >= r["achieved_bits"] and r["format_storage_bits"] > r["format_bits"]
    for gran in ("default", "w_group64"):
        for size in ("a", "b"):
            w8 = next(r for r in rows if (r["pair"], r["granularity"], r["dataset_size"]) == ("wint8_afp16", gran, size))
            w4 = next(r for r in rows if (r["pair"], r["granularity"], r["dataset_size"]) == ("wint4_afp16", gran, size))
            assert w8["quality"]["kl_mean"] < w4["quality"]["kl_mean"]


def test_summary_has_provenance_canary_and_kpis(tiny_sweep):
    _, _, outcome = tiny_sweep
    text = outcome.summary_path.read_text()
    s = json.loads(text)
    assert text == dumps(s)  # written row by row (store/summary_text.py), in the form of every quantsweep document
    latest = latest_by_cell(read_rows(outcome.summary_path.parent / "rows.jsonl"))  # and holding the log's rows
    logged = finalize_rows([latest[c] for c in s["plan"]["cell_ids"] if c in latest])
    assert dumps(s["rows"]) == dumps(logged) and len(logged) == 8
    assert s["schema_version"] == "1" and s["status"] == "complete"
    assert s["hardware"]["fingerprint"].endswith("|none")  # no GPU here; the name would come from the device
    assert s["labels"] == {"execution_lane": "ci"}
    assert s["matrix"]["name"] == "tiny"
    assert s["canary"]["passed"] is True and s["canary"]["determinism"]["deterministic"] is True
    assert s["canary"]["determinism"]["runs"] == 2
    k = s["stability_kpis"]
    assert k["determinism_rate"] == {"value": 1.0, "numerator": 1, "denominator": 1}
    assert k["polluted_run_rate"] == {"value": 0.0, "numerator": 0, "denominator": 8}
    assert k["missing_telemetry_rate"]["value"] == 0.0
    canary_rows = [r for r in s["rows"] if r["from_canary"]]
    assert len(canary_rows) == 1 and canary_rows[0]["cell_id"] == s["canary"]["cell_id"]
    tel = s["rows"][0]["telemetry"]
    assert set(tel["phases"]) >= {"model", "calibrate", "score", "search", "evaluate"}
    for row in s["rows"]:
        tel = row["telemetry"]
        assert tel["tokens_processed"] == sum(tel["tokens"].values()) and tel["tokens"]["scoring"] > 0
        if (tel.get("shared") or {}).get("union") == "data-free":
            # weight-only formats are calibrated on the weights, with no calibration forward (docs/shared-engine.md)
            assert tel["tokens"]["calibration"] == 0 and tel["forward_calls"]["calibrate_skipped"] > 0
        else:  # the canary's naive call, and calibrated unions, run their calibration batches
            assert tel["tokens"]["calibration"] > 0
    assert any(r["from_canary"] for r in s["rows"]) and any(
        (r["telemetry"].get("shared") or {}).get("union") == "data-free" for r in s["rows"])


def test_rerun_of_finished_sweep_runs_nothing_and_changes_no_row(tiny_sweep):
    folder, path, _ = tiny_sweep
    rows_file = folder / "runs" / "tiny" / "rows.jsonl"
    before = rows_file.read_bytes()
    outcome = run_sweep(path, RunOptions(output_root=str(folder / "runs")))
    assert outcome.rows_written == 0 and outcome.cells_skipped == 8
    assert rows_file.read_bytes() == before


def test_report_regenerates_from_manifest_alone(tiny_sweep):
    folder, _, outcome = tiny_sweep
    cell_dir = Path(outcome.summary["rows"][1]["path"])
    md, js, man = (cell_dir / n for n in ("layer-sensitivity-report.md", "layer-sensitivity-report.json", "manifest.json"))
    md_before, js_before = md.read_bytes(), js.read_bytes()
    man_hash = hashlib.sha256(man.read_bytes()).hexdigest()
    md.unlink()
    js.write_text("corrupted")
    res = cli("report", "--cell", str(cell_dir), cwd=folder)
    assert res.returncode == 0, res.stderr
    assert md.read_bytes() == md_before and js.read_bytes() == js_before
    assert hashlib.sha256(man.read_bytes()).hexdigest() == man_hash
    missing = cli("report", "--cell", str(folder), cwd=folder)
    assert missing.returncode == 2 and "no manifest" in missing.stderr


def test_scores_equal_a_direct_modelopt_call(tiny_sweep):
    """The per-layer raw scores of one cell equal those of an independent mtq.auto_quantize call."""
    import modelopt.torch.quantization as mtq
    from modelopt.torch.opt.utils import named_hparams
    from modelopt.torch.quantization.algorithms import QuantRecipeHparam

    from quantsweep.catalogue import QUANT_PAIRS
    from quantsweep.engine.data import build_samples
    from quantsweep.engine.models import load_model
    from quantsweep.schema import DatasetSpec, ModelSpec

    _, _, outcome = tiny_sweep
    row = next(r for r in outcome.summary["rows"] if r["key"] == "wint8_afp16/default/b")
    manifest = json.loads((Path(row["path"]) / "manifest.json").read_text())


    # the same synthetic model, handed straight to ModelOpt (our loader only builds it: seeded per parameter)
    loaded = load_model(ModelSpec(source="synthetic", preset="llama-tiny", device="cpu", dtype="float32"))
    tok, model = loaded.tokenizer, loaded.take_model()
    spec = DatasetSpec(**TINY_MATRIX["dataset"])
    ids = build_samples(spec, tok, 8).pool(8)
    batches = [{"input_ids": ids[i : i + 4], "labels": ids[i : i + 4]} for i in (0, 4)]
    model, state = mtq.auto_quantize(
        model,
        constraints={"effective_bits": 8.0},
        quantization_formats=[QUANT_PAIRS["wint8_afp16"].config()],
        data_loader=batches,
        forward_step=lambda m, b: m(**b),
        loss_func=lambda out, b: out.loss,
        num_calib_steps=2,
        num_score_steps=2,
    )
    direct = {}
    for name, hp in named_hparams(model, unique=True):
        if isinstance(hp, QuantRecipeHparam):
            direct[name.removesuffix(".quant_recipe")] = [hp.get_score(r) for r in state["candidate_stats"][name]["formats"]]
    ours = {g["name"]: g["raw_scores"] for g in manifest["layers"]}
    assert set(ours) == set(direct)
    for name, scores in ours.items():
        assert scores == pytest.approx(direct[name], rel=1e-5), name
    # ModelOpt's own solve of the same knapsack is recorded beside ours; ours is never worse
    sol = row["solver"]
    assert sol["modelopt_objective"] == pytest.approx(state["best"]["score"], rel=1e-5)
    assert row["total_score"] <= sol["modelopt_objective"] * (1 + 1e-9)
    if sol["used"] == "modelopt":
        assert row["total_score"] == pytest.approx(state["best"]["score"], rel=1e-5)
        assert row["achieved_bits"] == pytest.approx(state["best"]["constraints"]["effective_bits"])


def test_budget_below_format_bits_is_an_error_row_and_the_sweep_goes_on(tmp_path):
    data = copy.deepcopy(TINY_MATRIX)
    data["name"] = "budget"
    data["autoquant"]["effective_bits"] = 6.0
    data["axes"] = {"quant_pairs": ["wint8_afp16", "wint4_afp16"], "granularities": ["default"], "dataset_sizes": ["a"]}
    path = write_matrix(tmp_path, data)
    outcome = run_sweep(path, RunOptions(output_root=str(tmp_path / "runs")))
    assert outcome.exit_code == ExitCode.CELLS_FAILED
    rows = {r["pair"]: r for r in outcome.summary["rows"]}
    assert rows["wint8_afp16"]["status"] == "error"
    assert rows["wint8_afp16"]["reasons"] == ["ERROR"] and rows["wint8_afp16"]["valid"] is False
    assert "budget 6 is below the format's 8 bits" in rows["wint8_afp16"]["error"]
    assert rows["wint4_afp16"]["status"] == "ok" and rows["wint4_afp16"]["valid"] is True
    assert outcome.summary["stability_kpis"]["polluted_run_rate"]["value"] == 0.5


def test_canary_failure_runs_no_cell_and_exits_3(tmp_path):
    data = copy.deepcopy(TINY_MATRIX)
    data["name"] = "canaryfail"
    data["canary"] = {"max_baseline_perplexity": 2.0}  # a random-init model is far above: a "broken model"
    path = write_matrix(tmp_path, data)
    res = cli("run", "--matrix", str(path), "--output-root", str(tmp_path / "runs"), "--json", cwd=tmp_path)
    assert res.returncode == 3, res.stderr
    doc = json.loads(res.stdout)
    assert doc["status"] == "canary_failed" and doc["canary"]["passed"] is False
    assert doc["canary"]["failed_reasons"] == ["BASELINE_PERPLEXITY_TOO_HIGH"]
    summary = json.loads((tmp_path / "runs" / "canaryfail" / "sweep-summary.json").read_text())
    assert summary["rows"] == [] and summary["canary"]["passed"] is False
    assert not (tmp_path / "runs" / "canaryfail" / "rows.jsonl").exists()


def test_resume_after_killed_process_loses_and_duplicates_nothing(tmp_path):
    data = copy.deepcopy(TINY_MATRIX)
    data["name"] = "resume"
    data["canary"]["enabled"] = False
    path = write_matrix(tmp_path, data)
    rows_file = tmp_path / "runs" / "resume" / "rows.jsonl"
    kill_run_after_rows(["run", "--matrix", str(path), "--output-root", str(tmp_path / "runs")], tmp_path, rows_file)
    first = load_rows(rows_file)
    assert 2 <= len(first) < 8
    with rows_file.open("ab") as fh:  # a torn write, as if killed inside `write`
        fh.write(b'{"cell_id": "torn')
    res = cli("run", "--matrix", str(path), "--output-root", str(tmp_path / "runs"), "--json", cwd=tmp_path)
    rows = assert_resumed(res, rows_file, first, 8)
    ids = [r["cell_id"] for r in rows]
    plan = expand(load_matrix(path))
    assert set(ids) == {c.id for c in plan.cells}


def test_recipe_applies_directly_with_mtq_quantize(tiny_sweep):
    """The chosen recipe is a config a user can hand to mtq.quantize: the same layers end up quantized."""
    import modelopt.torch.quantization as mtq
    import torch

    from quantsweep.engine.models import load_model
    from quantsweep.recipe import load_recipe
    from quantsweep.schema import ModelSpec

    _, _, outcome = tiny_sweep
    row = next(r for r in outcome.summary["rows"] if r["key"] == "wint4_afp16/w_group64/b")
    manifest = json.loads((Path(row["path"]) / "manifest.json").read_text())
    chosen = {g["name"] for g in manifest["layers"] if g["chosen"] != "none"}
    assert chosen  # the budget forces at least lm_head into INT4
    model = load_model(ModelSpec(source="synthetic", preset="llama-tiny")).take_model()
    ids = torch.randint(0, 1000, (2, 16))
    model = mtq.quantize(model, load_recipe(Path(row["path"]) / "recipe.json"), lambda m: m(input_ids=ids))
    enabled = {
        name.removesuffix(".weight_quantizer")
        for name, mod in model.named_modules()
        if name.endswith("weight_quantizer") and mod.is_enabled
    }
    # a fused group (e.g. q/k/v) is named by its first member in the manifest
    assert chosen <= enabled and all(e in chosen or not e.startswith("lm_head") for e in enabled)
    assert model.lm_head.weight_quantizer.block_sizes[-1] == 64
