"""`quantsweep thermal-profile` on hand-written summaries: exact trends, drift, pollution and recommendations."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from report_helpers import cli, row, summary, write

from quantsweep.errors import InputError
from quantsweep.reports.thermal_profile import thermal_profile, trend

REPO = Path(__file__).resolve().parents[1]


def gpu(start, peak, clock, throttle=()):
    return {
        "available": True, "reason": None, "source": "nvml", "sample_period_s": 0.5, "samples": 10,
        "thermal_threshold_c": 85.0,
        "polluting_throttle_reasons": ["sw_thermal_slowdown", "hw_thermal_slowdown", "hw_power_brake_slowdown"],
        "utilization_pct_mean": 90.0, "utilization_pct_max": 100.0, "memory_used_peak_mb": 2000.0,
        "sm_clock_mhz_min": clock, "sm_clock_mhz_max": 1980.0, "temperature_c_start": start,
        "temperature_c_max": peak, "power_w_mean": 400.0, "power_w_max": 600.0,
        "throttle_reasons_seen": list(throttle), "devices": [],
    }


# per cell: (pair, granularity, size) -> per run (start, peak, min clock) or None (no GPU telemetry)
RUNS = {
    ("wint8_afp16", "default", "small"): [(40, 60, 1980), (45, 70, 1980), (52, 80, 1980)],  # rises twice
    ("wint4_afp16", "default", "small"): [(40, 60, 1980), (41, 62, 1900), (40, 61, 1800)],  # clock falls twice
    ("wint8_afp16", "w_group64", "small"): [(40, 70, 1980), (60, 86, 1980), (45, 70, 1980)],  # 86 >= 85 once
    ("wint4_afp16", "w_group64", "small"): [(40, 55, 1980), (38, 50, 1980), (41, 55, 1980)],  # steady
    ("wint8_afp16", "default", "tiny"): [None, None, None],  # CPU rows: no temperatures
}


def _summaries(tmp_path: Path, runs=RUNS, only_first=True) -> list[Path]:
    paths = []
    for i in range(3):
        rows = []
        for (pair, gran, size), per_run in runs.items():
            r = row(pair, gran, size)
            if per_run[i] is not None:
                r["telemetry"]["gpu"] = gpu(*per_run[i])
            rows.append(r)
        if i == 0 and only_first:
            rows.append(row("wint4_afp16", "default", "tiny"))  # only in the first summary
        paths.append(write(tmp_path / f"run{i}.json", summary(rows)))
    return paths


def test_trend_rules():
    assert trend([60, 70, 80], 2) == {"first": 60, "last": 80, "delta": 20, "drift": "rising"}
    assert trend([60, 70, 80], 3)["drift"] == "none"
    assert trend([80, 70, 75, 70, 60], 2) == {"first": 80, "last": 60, "delta": -20, "drift": "falling"}
    assert trend([None, 70, None], 1) == {"first": 70, "last": 70, "delta": None, "drift": "unknown"}
    assert trend([70, 70, 70], 1)["drift"] == "none"  # equal is not a rise


def test_exact_trends_pollution_and_recommendations(tmp_path):
    doc = thermal_profile(_summaries(tmp_path))
    assert (doc["repeated_cells"], doc["unrepeated_cells"], doc["polluted_rows"]) == (5, 1, 1)
    cells = {c["key"]: c for c in doc["cells"]}
    a = cells["wint8_afp16/default/small"]
    assert a["temperature"] == {"first": 60.0, "last": 80.0, "delta": 20.0, "drift": "rising"}
    assert a["sm_clock"]["drift"] == "none" and a["polluted_rows"] == 0
    assert a["started_above_target"] == 1  # 52 > 50
    assert a["recommendation"] == "cooldown"
    assert a["reason"] == ("cool the GPU down to <= 50 C before this cell (it started at up to 52 C): "
                           "peak temperature rises 60 -> 80 C")
    b = cells["wint4_afp16/default/small"]
    assert b["sm_clock"] == {"first": 1980.0, "last": 1800.0, "delta": -180.0, "drift": "falling"}
    assert b["temperature"]["drift"] == "none" and b["recommendation"] == "cooldown"
    assert b["reason"].endswith("minimum SM clock falls 1980 -> 1800 MHz")
    c = cells["wint8_afp16/w_group64/small"]
    assert c["polluted_rows"] == 1 and c["temperature"]["drift"] == "none"
    assert c["runs"][1]["polluted_why"] == ["THERMAL", "temperature 86 C >= 85 C"]
    assert [r["polluted"] for r in c["runs"]] == [False, True, False]
    assert c["reason"].endswith(": 1 of 3 runs thermally polluted")
    d = cells["wint4_afp16/w_group64/small"]
    assert (d["recommendation"], d["reason"]) == ("none", "no cool-down needed: no drift, no polluted run")
    assert d["temperature"] == {"first": 55.0, "last": 55.0, "delta": 0.0, "drift": "none"}
    e = cells["wint8_afp16/default/tiny"]
    assert (e["recommendation"], e["temperature"]["drift"]) == ("unknown", "unknown")
    assert doc["recommendation"] == "cooldown"
    assert doc["reason"] == ("cool down to <= 50 C between cells: 3 of 5 repeated cells drift or were thermally "
                             "polluted")


def test_wider_window_and_higher_threshold_change_the_verdicts(tmp_path):
    doc = thermal_profile(_summaries(tmp_path), cooldown_target_c=50, polluted_threshold_c=90, monotonic_window=3)
    recs = {c["key"]: c["recommendation"] for c in doc["cells"]}
    # 3 consecutive moves are needed (3 runs hold 2): no drift; 86 C is below 90 C but the row is still THERMAL
    # (judged with the threshold recorded in the row, 85 C)
    assert recs == {"wint8_afp16/default/small": "none", "wint4_afp16/default/small": "none",
                    "wint8_afp16/w_group64/small": "cooldown", "wint4_afp16/w_group64/small": "none",
                    "wint8_afp16/default/tiny": "unknown"}
    steady = {k: v for k, v in RUNS.items() if k[1] == "w_group64" and k[0] == "wint4_afp16"}
    calm = thermal_profile(_summaries(tmp_path / "calm", steady, only_first=False))
    assert (calm["recommendation"], calm["repeated_cells"], calm["unrepeated_cells"]) == ("none", 1, 0)
    cpu = {k: v for k, v in RUNS.items() if k[2] == "tiny"}
    assert thermal_profile(_summaries(tmp_path / "cpu", cpu, only_first=False))["recommendation"] == "unknown"


def test_bad_arguments_are_refused(tmp_path):
    paths = _summaries(tmp_path)
    with pytest.raises(InputError, match="--summaries: give at least two"):
        thermal_profile(paths[:1])
    with pytest.raises(InputError, match="is given twice"):
        thermal_profile([paths[0], paths[0]])
    with pytest.raises(InputError, match="--cooldown-target-c: 90 C must be below --polluted-thermal-threshold-c 85"):
        thermal_profile(paths, cooldown_target_c=90)
    with pytest.raises(InputError, match="--monotonic-window: expected an integer >= 1, got 0"):
        thermal_profile(paths, monotonic_window=0)


def test_cli_writes_json_and_markdown_and_never_over_an_input(tmp_path):
    paths = _summaries(tmp_path)
    joined = ",".join(str(p) for p in paths)
    res = cli("thermal-profile", "--summaries", joined, "--out", str(tmp_path / "t.json"), "--json", cwd=REPO)
    assert res.returncode == 0, res.stderr
    doc = json.loads(res.stdout)
    assert json.loads((tmp_path / "t.json").read_text()) == doc
    md = (tmp_path / "t.md").read_text()
    assert "**Recommendation: cooldown**" in md
    assert "| wint8_afp16/default/small | 60 -> 70 -> 80 | rising | 1980 -> 1980 -> 1980 | none | 0/3 | cooldown |" in md
    res = cli("thermal-profile", "--summaries", joined, "--out", str(paths[0]), cwd=REPO)
    assert res.returncode == 2 and "would replace" in res.stderr
    res = cli("thermal-profile", "--summaries", str(paths[0]), cwd=REPO)
    assert res.returncode == 2 and "give at least two summaries" in res.stderr
