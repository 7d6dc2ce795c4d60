"""Stability KPIs (exact values, null semantics), validity recomputation, the KPI gate and `quantsweep kpi-report`."""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path

import pytest
from report_helpers import GOOD_TELEMETRY, cli, error_row, orket_frontier_rows, row, summary, write

from quantsweep.errors import InputError
from quantsweep.kpis import compute_kpis, evaluate_gate, group_key
from quantsweep.reports.kpi_report import kpi_report
from quantsweep.reports.summary_io import load_summary, normalize_rows

REPO = Path(__file__).resolve().parents[1]
QUICKSTART = REPO / "tests" / "fixtures" / "quickstart" / "sweep-summary.json"
KL05 = {"quality_metric": "kl_mean", "max_quality": 0.05}


def kpis_of(rows, canary=None, thresholds=KL05):
    return compute_kpis(normalize_rows(rows), canary, thresholds)


# --- the four KPIs -------------------------------------------------------------------------------------------
def test_orket_frontier_fixture_kpis():
    k = kpis_of(orket_frontier_rows())
    assert k["determinism_rate"] == {"value": None, "numerator": 0, "denominator": 0}  # nothing repeated: unknown
    assert k["missing_telemetry_rate"] == {"value": 0.0, "numerator": 0, "denominator": 4}
    assert k["polluted_run_rate"] == {"value": 0.0, "numerator": 0, "denominator": 4}
    assert k["frontier_success_rate"] == {"value": 1.0, "numerator": 1, "denominator": 1}
    assert (k["rows"], k["groups"], k["repeated_executions"]) == (4, 1, 0)
    assert (k["quality_metric"], k["max_quality"]) == ("kl_mean", 0.05)


def test_nothing_meets_the_threshold_gives_frontier_success_zero():
    k = kpis_of([row("wint8_afp16", bits=8.0, kl=0.2), row("wint4_afp16", bits=4.0, kl=0.3)])
    assert k["frontier_success_rate"] == {"value": 0.0, "numerator": 0, "denominator": 1}
    assert k["polluted_run_rate"]["value"] == 0.0


def _det(runs=2, identical=True, diff=0.0, rtol=1e-4, **kw):
    return {"runs": runs, "identical_recipe": identical, "max_rel_score_diff": diff, "rtol": rtol, **kw}


def test_determinism_counts_each_repeated_set_once_and_recomputes_agreement():
    canary = {"passed": True, "determinism": _det(deterministic=True)}
    rows = [
        row("a_x", from_canary=True, determinism=_det()),  # the canary's own row: already counted
        row("b_x", determinism=_det(runs=3, diff=5e-5)),  # agrees within rtol
        row("c_x", determinism=_det(diff=2e-4, deterministic=True)),  # stored flag says yes; 2e-4 > 1e-4 says no
        row("d_x", determinism=_det(identical=False)),  # a different recipe
        row("e_x", determinism={"runs": 2, "deterministic": False, "identical_recipe": False,
                                "max_rel_score_diff": None, "note": "a repeat failed"}),
        row("f_x", determinism=None),  # not repeated
        row("g_x", determinism={"runs": 1}),  # not repeated
    ]
    k = kpis_of(rows, canary)
    assert k["determinism_rate"] == {"value": 0.4, "numerator": 2, "denominator": 5}
    assert k["repeated_executions"] == 2 + 3 + 2 + 2 + 2


def test_determinism_uses_the_canary_row_when_the_canary_block_has_none():
    rows = [row("a_x", from_canary=True, determinism=_det()), row("b_x")]
    assert kpis_of(rows, {"passed": None, "skipped": True})["determinism_rate"] == {
        "value": 1.0, "numerator": 1, "denominator": 1}
    # without rtol only exact agreement counts
    rows = [row("a_x", determinism=_det(diff=1e-9, rtol=None)), row("b_x", determinism=_det(rtol=None))]
    assert kpis_of(rows)["determinism_rate"] == {"value": 0.5, "numerator": 1, "denominator": 2}


def test_missing_telemetry_and_polluted_rates():
    no_rss = copy.deepcopy(GOOD_TELEMETRY)
    del no_rss["peak_host_rss_mb"]
    nan_wall = {**copy.deepcopy(GOOD_TELEMETRY), "wall_s": math.nan}
    cuda_no_peak = {**copy.deepcopy(GOOD_TELEMETRY), "device": "cuda:0", "peak_device_mb": None}
    rows = [
        row("a_x"),  # complete
        row("b_x", telemetry=no_rss),  # missing a field
        row("c_x", telemetry=nan_wall),  # non-finite field
        error_row("d_x"),  # an error row lacks the phases after its failure: not "missing"
        error_row("e_x", telemetry=None),  # an error row without any telemetry: missing
        row("f_x", telemetry=cuda_no_peak),  # CUDA needs peak device memory
    ]
    k = kpis_of(rows)
    assert k["missing_telemetry_rate"] == {"value": 0.666667, "numerator": 4, "denominator": 6}
    assert k["polluted_run_rate"] == {"value": 0.833333, "numerator": 5, "denominator": 6}


def test_frontier_success_is_strict_and_per_group():
    bad_tel = copy.deepcopy(GOOD_TELEMETRY)
    bad_tel["phases"].pop("search")
    rows = [
        row("wint8_afp16", "default", "small", bits=8.0, kl=0.01),  # group 1: valid and meets quality
        row("wint4_afp16", "default", "small", bits=4.0, kl=0.3),
        row("wint8_afp16", "default", "tiny", bits=8.0, kl=0.01, telemetry=bad_tel),  # group 2: polluted only
        row("wint8_afp16", "w_group64", "small", bits=8.0, kl=0.2),  # group 3: valid, fails quality
        error_row("wint4_afp16", "w_group64", "small"),
    ]
    k = kpis_of(rows)
    assert k["frontier_success_rate"] == {"value": 0.333333, "numerator": 1, "denominator": 3}
    assert k["groups"] == 3
    assert group_key(rows[0]) == "m|small|default"


def test_all_rows_polluted_orket_case():
    rows = [row(p, bits=b, kl=q, satisfied=False) for p, b, q in
            (("wint8_afp16", 8.0, 0.001), ("w6_afp16", 6.0, 0.03), ("wint4_afp16", 4.0, 0.2))]
    k = kpis_of(rows)
    assert k["polluted_run_rate"] == {"value": 1.0, "numerator": 3, "denominator": 3}
    assert k["frontier_success_rate"] == {"value": 0.0, "numerator": 0, "denominator": 1}


def test_ppl_ratio_metric():
    rows = [row("wint8_afp16", bits=8.0, kl=0.01, ppl_ratio=1.02), row("wint4_afp16", bits=4.0, kl=0.2, ppl_ratio=1.3)]
    assert kpis_of(rows, thresholds={"quality_metric": "ppl_ratio", "max_quality": 1.05})[
        "frontier_success_rate"]["value"] == 1.0
    assert kpis_of(rows, thresholds={"quality_metric": "ppl_ratio", "max_quality": 1.01})[
        "frontier_success_rate"]["value"] == 0.0


def test_no_rows_gives_null_rates_not_zero():
    k = compute_kpis([], None, {})
    for name in ("missing_telemetry_rate", "polluted_run_rate", "frontier_success_rate", "determinism_rate"):
        assert k[name] == {"value": None, "numerator": 0, "denominator": 0}
    assert (k["quality_metric"], k["max_quality"]) == ("kl_mean", 0.1)  # KpiThresholds defaults


# --- validity is recomputed when a summary is read -------------------------------------------------------------
def test_normalize_rows_recomputes_validity():
    good = row("a_x")
    del good["valid"], good["reasons"]  # hand-written: no verdict at all
    nan_kl = row("b_x", kl=math.nan)  # claims valid, is not
    oom = row("c_x", reasons=["OOM"])  # a stored reason is kept
    flip = row("d_x", valid=False)  # a stored `valid` without reasons is ignored
    dup1 = row("e_x", result_fingerprint="same")
    dup2 = row("f_x", result_fingerprint="same")
    out = {r["key"].split("/")[0]: r for r in normalize_rows([good, nan_kl, oom, flip, dup1, dup2])}
    assert (out["a_x"]["valid"], out["a_x"]["reasons"]) == (True, [])
    assert (out["b_x"]["valid"], out["b_x"]["reasons"]) == (False, ["NONFINITE_SCORE"])
    assert out["c_x"]["reasons"] == ["OOM"]
    assert out["d_x"]["valid"] is True
    assert out["e_x"]["reasons"] == out["f_x"]["reasons"] == ["DUPLICATE_RESULT"]


# --- the gate --------------------------------------------------------------------------------------------------
def test_gate_pass_fail_missing_and_skip():
    th = {"max_missing_telemetry_rate": 0.0, "max_polluted_run_rate": 0.25, "min_frontier_success_rate": 0.5,
          "min_determinism_rate": 1.0}
    k = kpis_of(orket_frontier_rows())
    g = evaluate_gate(k, th)
    assert g["status"] == "FAIL"
    assert g["failures"] == ["determinism_rate: missing (nothing was repeated); required >= 1"]
    assert evaluate_gate(k, th, skip=("determinism_rate",))["status"] == "PASS"
    rows = orket_frontier_rows()
    rows[0]["determinism"] = _det()
    rows[3]["satisfied"] = False
    g = evaluate_gate(kpis_of(rows), {**th, "max_polluted_run_rate": 0.2})
    assert g["failures"] == ["polluted_run_rate: 0.25 (1/4) > max_polluted_run_rate 0.2"]
    assert [c["status"] for c in g["checks"]] == ["PASS", "PASS", "FAIL", "PASS", "SKIPPED"]  # no stability data


def test_kpi_report_thresholds_come_from_the_matrix_then_flags(tmp_path):
    rows = orket_frontier_rows()
    rows[3]["satisfied"] = False  # 1 of 4 polluted
    rows[0]["determinism"] = _det()
    kpi = {**KL05, "max_polluted_run_rate": 0.3}
    path = write(tmp_path / "s.json", summary(rows, kpi=kpi))
    doc = kpi_report(path)
    assert doc["thresholds"]["max_polluted_run_rate"] == 0.3 and doc["gate"]["status"] == "PASS"
    assert doc["exit_code"] == 0
    doc = kpi_report(path, {"max_polluted_run_rate": 0.2})
    assert doc["gate"]["status"] == "FAIL" and doc["exit_code"] == 3
    # quality flags change the frontier KPI: nothing has KL <= 0.0005
    doc = kpi_report(path, {"max_quality": 0.0005})
    assert doc["stability_kpis"]["frontier_success_rate"]["value"] == 0.0
    # the stored KPI block is never copied
    doc2 = kpi_report(write(tmp_path / "t.json", summary(rows, kpi=kpi, stability_kpis={"polluted_run_rate": 9})))
    assert doc2["stability_kpis"] == kpi_report(path)["stability_kpis"]


def test_kpi_report_without_matrix_uses_schema_defaults(tmp_path):
    doc = summary(orket_frontier_rows())
    del doc["matrix"]
    s = load_summary(write(tmp_path / "s.json", doc))
    assert s.thresholds == {"max_missing_telemetry_rate": 0.0, "max_polluted_run_rate": 0.25,
                            "min_frontier_success_rate": 0.5, "min_determinism_rate": 1.0,
                            "min_recipe_stability_rate": 0.0, "quality_metric": "kl_mean", "max_quality": 0.1}


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda d: d.pop("rows"), "s.json: rows: missing"),
        (lambda d: d.update(rows={}), "s.json: rows: expected a list, got dict {}"),
        (lambda d: d["rows"][1].update(achieved_bits="abc"),
         "s.json: rows[1].achieved_bits: expected a number or null, got str 'abc'"),
        (lambda d: d["rows"][0].pop("key"), "s.json: rows[0].key: missing"),
        (lambda d: d["rows"][2].update(reasons="ERROR"), "s.json: rows[2].reasons: expected a list of strings"),
        (lambda d: d["rows"][0].update(valid="yes"), "s.json: rows[0].valid: expected true, false or null"),
        (lambda d: d["rows"][3].update(cell_id=d["rows"][0]["cell_id"]), "s.json: rows[3].cell_id: duplicate cell"),
        (lambda d: d.update(kind="quantsweep.cell_manifest"), "s.json: kind: expected 'quantsweep.sweep_summary'"),
        (lambda d: d["matrix"]["kpi"].update(max_polluted_run_rate=2), "s.json: matrix.kpi.max_polluted_run_rate:"),
        (lambda d: d.update(canary=[1]), "s.json: canary: expected an object or null"),
        (lambda d: d["rows"][0]["telemetry"].update(phases=[1]),
         "s.json: rows[0].telemetry.phases: expected an object or null, got list [1]"),
    ],
)
def test_malformed_summary_names_file_and_field(tmp_path, mutate, message):
    doc = summary(orket_frontier_rows())
    mutate(doc)
    path = write(tmp_path / "s.json", doc)
    with pytest.raises(InputError) as exc:
        load_summary(path)
    assert message in str(exc.value)
    assert str(exc.value).startswith(str(path))


def test_unreadable_summaries(tmp_path):
    with pytest.raises(InputError, match="nope.json: file not found"):
        load_summary(tmp_path / "nope.json")
    (tmp_path / "bad.json").write_text("{rows: [")
    with pytest.raises(InputError, match=r"bad.json: invalid JSON: line 1"):
        load_summary(tmp_path / "bad.json")


def test_quickstart_summary_kpis_match_what_run_wrote():
    doc = json.loads(QUICKSTART.read_text())
    s = load_summary(QUICKSTART)
    k = compute_kpis(s.rows, s.canary, s.thresholds)
    assert k["determinism_rate"] == {"value": 1.0, "numerator": 1, "denominator": 1}
    assert k["frontier_success_rate"] == {"value": 1.0, "numerator": 4, "denominator": 4}
    for name in ("missing_telemetry_rate", "polluted_run_rate", "frontier_success_rate"):
        assert k[name] == doc["stability_kpis"][name], name
    # this summary was written before the canary's own row stopped being counted twice: recomputing fixes it
    assert doc["stability_kpis"]["determinism_rate"] == {"value": 1.0, "numerator": 2, "denominator": 2}


# --- the command -----------------------------------------------------------------------------------------------
def test_cli_kpi_report_exit_codes_json_and_out(tmp_path):
    res = cli("kpi-report", "--summary", str(QUICKSTART), "--json", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    doc = json.loads(res.stdout)  # one JSON document, nothing else on stdout
    assert doc["gate"] == {"status": "PASS", "checks": doc["gate"]["checks"], "failures": []}
    assert doc["stability_kpis"]["polluted_run_rate"] == {"value": 0.0, "numerator": 0, "denominator": 8}

    res = cli("kpi-report", "--summary", str(QUICKSTART), "--max-quality", "0.001", "--out", "k.json", cwd=tmp_path)
    assert res.returncode == 3
    assert "KPI gate FAIL" in res.stdout and "frontier_success_rate: 0 (0/4) < min_frontier_success_rate 0.5" in res.stdout
    written = json.loads((tmp_path / "k.json").read_text())
    assert written["gate"]["status"] == "FAIL" and written["exit_code"] == 3

    rows = orket_frontier_rows()
    path = write(tmp_path / "s.json", summary(rows))
    res = cli("kpi-report", "--summary", str(path), "--json", cwd=tmp_path)
    assert res.returncode == 3  # nothing repeated: determinism is missing, which fails
    assert json.loads(res.stdout)["stability_kpis"]["determinism_rate"]["value"] is None
    assert "determinism_rate: missing" in res.stderr
    res = cli("kpi-report", "--summary", str(path), "--skip-kpi", "determinism_rate", cwd=tmp_path)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "SKIPPED" in res.stdout


def test_cli_kpi_report_bad_input_exits_2(tmp_path):
    path = write(tmp_path / "s.json", summary(orket_frontier_rows()))
    res = cli("kpi-report", "--summary", str(path), "--max-polluted-run-rate", "1.5", cwd=tmp_path)
    assert res.returncode == 2 and "--max-polluted-run-rate" in res.stderr
    res = cli("kpi-report", "--summary", str(path), "--skip-kpi", "speed", cwd=tmp_path)
    assert res.returncode == 2 and "unknown KPI 'speed'" in res.stderr
    doc = summary(orket_frontier_rows())
    doc["rows"][2]["quality"] = 5
    res = cli("kpi-report", "--summary", str(write(tmp_path / "b.json", doc)), cwd=tmp_path)
    assert res.returncode == 2 and "b.json: rows[2].quality: expected an object or null, got int 5" in res.stderr
