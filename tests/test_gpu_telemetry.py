"""Telemetry sampled during a cell: host fields on the CPU, GPU fields unavailable (null + reason) without a GPU,
and, through a stand-in NVML module (the one stub the hardware issue allows), exact GPU statistics, the THERMAL
reason, the KPIs that count it and the frontier that leaves the row out."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from quantsweep.errors import InputError
from quantsweep.execution.gpu_sampler import GPU_FIELDS, GpuRef, GpuSampler, gpu_block
from quantsweep.execution.telemetry import PeakMemory, hardware_telemetry
from quantsweep.kpis import compute_kpis
from quantsweep.reports.frontier import build_frontier
from quantsweep.reports.kpi_report import kpi_report
from quantsweep.reports.summary_io import normalize_rows, validate_row
from quantsweep.schema import TelemetrySpec

REPO = Path(__file__).resolve().parents[1]
QUICKSTART = REPO / "tests" / "fixtures" / "quickstart" / "sweep-summary.json"


class FakeNvml:
    """A stand-in for `pynvml`: each GPU plays back a script of readings, one per `sample()` (the last repeats)."""

    NVML_CLOCK_SM = 1
    NVML_TEMPERATURE_GPU = 0

    def __init__(self, scripts: dict[int, list[dict]], no_power: bool = False):
        self.scripts = scripts
        self.no_power = no_power
        self.calls = dict.fromkeys(scripts, -1)
        self.shutdown = False

    def nvmlInit(self):
        pass

    def nvmlShutdown(self):
        self.shutdown = True

    def nvmlDeviceGetHandleByUUID(self, uuid):
        raise RuntimeError("unknown UUID")  # falls back to the index

    def nvmlDeviceGetHandleByIndex(self, i):
        return i

    def nvmlDeviceGetName(self, h):
        return b"Fake H200"

    def _r(self, h):
        return self.scripts[h][min(self.calls[h], len(self.scripts[h]) - 1)]

    def nvmlDeviceGetUtilizationRates(self, h):
        self.calls[h] += 1  # the first query of a sample moves the script on
        return SimpleNamespace(gpu=self._r(h)["util"])

    def nvmlDeviceGetMemoryInfo(self, h):
        return SimpleNamespace(used=self._r(h)["mem_mb"] * 2**20)

    def nvmlDeviceGetClockInfo(self, h, kind):
        assert kind == self.NVML_CLOCK_SM
        return self._r(h)["clock"]

    def nvmlDeviceGetTemperature(self, h, sensor):
        return self._r(h)["temp"]

    def nvmlDeviceGetPowerUsage(self, h):
        if self.no_power:
            raise RuntimeError("NVMLError_NotSupported")
        return self._r(h)["power_mw"]

    def nvmlDeviceGetCurrentClocksEventReasons(self, h):
        return self._r(h)["mask"]


HOT = [  # GPU 0 heats up to the threshold and hits the hardware thermal slowdown (0x40) once
    {"util": 90, "mem_mb": 1000, "clock": 1980, "temp": 70, "power_mw": 400_000, "mask": 0x0},
    {"util": 100, "mem_mb": 3000, "clock": 1755, "temp": 85, "power_mw": 650_000, "mask": 0x40},
    {"util": 80, "mem_mb": 2000, "clock": 1900, "temp": 80, "power_mw": 500_000, "mask": 0x1},
]
COOL = [  # GPU 1 stays cool; power capped by software (0x4), which does not pollute
    {"util": 50, "mem_mb": 500, "clock": 1980, "temp": 40, "power_mw": 200_000, "mask": 0x4},
]


def _sampled(nvml: FakeNvml, gpus: list[GpuRef], forced: int) -> GpuSampler:
    s = GpuSampler(gpus, period_s=0.5, nvml=nvml)
    s.start()  # one reading
    for _ in range(forced):
        s.sample(force=True)
    s.stop()  # one last reading
    return s


def test_fake_nvml_gives_exact_statistics_and_thermal_pollution():
    nvml = FakeNvml({0: HOT, 1: COOL})
    s = _sampled(nvml, [GpuRef("cuda:0", 0, "GPU-x"), GpuRef("cuda:1", 1)], forced=1)  # 3 readings each
    assert nvml.shutdown
    block = gpu_block([s], 0.5, 85.0)
    d0, d1 = block["devices"]
    assert d0 == {
        "device": "cuda:0", "index": 0, "name": "Fake H200", "samples": 3,
        "utilization_pct_mean": 90.0, "utilization_pct_max": 100.0, "memory_used_peak_mb": 3000.0,
        "sm_clock_mhz_min": 1755.0, "sm_clock_mhz_max": 1980.0, "temperature_c_start": 70.0,
        "temperature_c_max": 85.0, "power_w_mean": 516.67, "power_w_max": 650.0,
        "throttle_reasons_seen": ["gpu_idle", "hw_thermal_slowdown"],
        "unsupported": [],
    }
    assert d1["throttle_reasons_seen"] == ["sw_power_cap"] and d1["temperature_c_max"] == 40.0
    assert (block["available"], block["reason"], block["samples"]) == (True, None, 6)
    assert (block["temperature_c_max"], block["sm_clock_mhz_min"], block["power_w_max"]) == (85.0, 1755.0, 650.0)
    assert block["utilization_pct_mean"] == 70.0  # mean of the devices' means (90, 50)
    assert block["throttle_reasons_seen"] == ["gpu_idle", "hw_thermal_slowdown", "sw_power_cap"]


def test_unsupported_query_is_null_not_zero():
    s = _sampled(FakeNvml({0: COOL}, no_power=True), [GpuRef("cuda:0", 0)], forced=0)
    d = gpu_block([s], 0.5, 85.0)["devices"][0]
    assert d["power_w_mean"] is None and d["power_w_max"] is None and d["unsupported"] == ["power"]
    assert d["temperature_c_max"] == 40.0


def test_cpu_host_fields_recorded_and_gpu_fields_unavailable():
    spec = TelemetrySpec(sample_period_s=0.05, thermal_threshold_c=80)
    with PeakMemory(torch.device("cpu"), gpu_period_s=spec.sample_period_s) as mem:
        x = torch.randn(512, 512)
        for _ in range(40):
            x = torch.tanh(x @ x)
    tel = hardware_telemetry([mem], spec)
    host, gpu = tel["host"], tel["gpu"]
    assert host["rss_peak_mb"] > 10 and host["cpu_s"] > 0 and host["cpu_percent_mean"] > 0
    assert host["cpu_count"] >= 1
    assert gpu["available"] is False and gpu["reason"] == "no GPU in use (the model runs on the CPU)"
    assert all(gpu[k] is None for k in GPU_FIELDS) and gpu["devices"] == [] and gpu["samples"] == 0
    assert gpu["throttle_reasons_seen"] is None and gpu["thermal_threshold_c"] == 80


def test_gpu_in_use_without_nvml_driver_is_unavailable_with_the_reason():
    pynvml = pytest.importorskip("pynvml")
    try:
        pynvml.nvmlInit()
        pynvml.nvmlShutdown()
        pytest.skip("this machine has an NVML driver")
    except pynvml.NVMLError:
        pass
    s = GpuSampler([GpuRef("cuda:0", 0)], 0.5)  # the real nvidia-ml-py on a machine without a driver
    s.start()
    s.stop()
    block = gpu_block([s], 0.5, 85.0)
    assert block["available"] is False and block["reason"].startswith("NVML could not start: NVMLError")
    assert all(block[k] is None for k in GPU_FIELDS)


def _rows_with(changes: dict[str, dict]) -> list[dict]:
    rows = copy.deepcopy(json.loads(QUICKSTART.read_text())["rows"])
    for r in rows:
        if r["key"] in changes:
            r["telemetry"]["gpu"] = changes[r["key"]]
    return rows


def _block(nvml: FakeNvml, threshold: float = 85.0) -> dict:
    return gpu_block([_sampled(nvml, [GpuRef("cuda:0", 0)], forced=1)], 0.5, threshold)


def test_thermal_reason_drives_kpis_kpi_report_and_frontier(tmp_path):
    hot = _block(FakeNvml({0: HOT}))  # 85 C >= 85 C and hw_thermal_slowdown
    brake = _block(FakeNvml({0: [{**COOL[0], "mask": 0x80}]}))  # 40 C but the power brake engaged
    capped = _block(FakeNvml({0: COOL}))  # sw_power_cap only, 40 C: not polluted
    warm = _block(FakeNvml({0: HOT}), threshold=90.0)  # same readings, higher threshold: only the throttle pollutes
    assert warm["thermal_threshold_c"] == 90.0
    thresholds = {"quality_metric": "kl_mean", "max_quality": 0.1}
    before = build_frontier(normalize_rows(_rows_with({})), "kl_mean", 0.1)
    group = "smollm2-135m-instruct|tiny|default"
    assert [g["minimum_viable"] for g in before["groups"] if g["group"] == group] == ["wint8_afp16/default/tiny"]

    rows = normalize_rows(_rows_with({
        "wint8_afp16/default/tiny": hot, "wint8_afp16/default/small": brake,
        "wint8_afp16/w_group64/tiny": capped, "wint4_afp16/w_group64/small": warm,
    }))
    reasons = {r["key"]: r["reasons"] for r in rows}
    assert reasons["wint8_afp16/default/tiny"] == ["THERMAL"]
    assert reasons["wint8_afp16/default/small"] == ["THERMAL"]
    assert reasons["wint8_afp16/w_group64/tiny"] == []
    assert reasons["wint4_afp16/w_group64/small"] == ["THERMAL"]  # hw_thermal_slowdown seen, though 85 < 90

    k = compute_kpis(rows, None, thresholds)
    assert k["polluted_run_rate"] == {"value": 0.375, "numerator": 3, "denominator": 8}
    assert k["polluted_by_reason"] == {"THERMAL": 3}
    # in the tiny/default and small/default groups the only cell meeting kl <= 0.1 is polluted: they fail
    assert k["frontier_success_rate"] == {"value": 0.5, "numerator": 2, "denominator": 4}
    assert compute_kpis(normalize_rows(_rows_with({})), None, thresholds)["frontier_success_rate"]["value"] == 1.0

    after = build_frontier(rows, "kl_mean", 0.1)
    keys = {p["key"] for p in after["points"]}
    assert "wint8_afp16/default/tiny" not in keys and len(after["points"]) == 5
    g = next(g for g in after["groups"] if g["group"] == group)
    assert (g["minimum_viable"], g["frontier"]) == (None, ["wint4_afp16/default/tiny"])
    shown = build_frontier(rows, "kl_mean", 0.1, include_invalid=True)
    assert len(shown["points"]) == 8

    summary = json.loads(QUICKSTART.read_text())
    summary["rows"] = _rows_with({"wint8_afp16/default/tiny": hot})
    path = tmp_path / "s.json"
    path.write_text(json.dumps(summary))
    doc = kpi_report(path)
    assert doc["stability_kpis"]["polluted_by_reason"] == {"THERMAL": 1}
    assert doc["stability_kpis"]["polluted_run_rate"]["numerator"] == 1


@pytest.mark.parametrize(("field", "value", "message"), [
    ("temperature_c_max", -500, "rows[0].telemetry.gpu.temperature_c_max: expected a number in [-273.15, 1000]"),
    ("utilization_pct_max", 150, "rows[0].telemetry.gpu.utilization_pct_max: expected a number in [0, 100]"),
    ("thermal_threshold_c", 0, "rows[0].telemetry.gpu.thermal_threshold_c: expected a number in (0, 1000]"),
    ("throttle_reasons_seen", [1], "rows[0].telemetry.gpu.throttle_reasons_seen[0]: expected a string"),
])
def test_hostile_gpu_telemetry_is_refused(field, value, message):
    row = _rows_with({"wint8_afp16/default/tiny": _block(FakeNvml({0: COOL}))})[0]
    validate_row(row, "s.json", "rows[0]")  # as recorded: accepted
    row["telemetry"]["gpu"][field] = value
    with pytest.raises(InputError, match=message.replace("[", r"\[").replace("(", r"\(")):
        validate_row(row, "s.json", "rows[0]")


@pytest.mark.gpu
def test_real_nvml_on_cuda_records_nonzero_clocks_temperature_and_power(tmp_path):
    """GPU machine only (QUANTSWEEP_REQUIRE_GPU=1): a tiny sweep on CUDA with an FP8 KV-cache cell and two
    evaluation lengths records real NVML telemetry and per-length device memory."""
    from pipeline_helpers import TINY_MATRIX, write_matrix

    from quantsweep.errors import ExitCode
    from quantsweep.execution.sweep import RunOptions, run_sweep

    data = {**copy.deepcopy(TINY_MATRIX), "name": "nvml", "canary": {"enabled": False},
            "axes": {"quant_pairs": ["wint8_afp16"], "granularities": ["default"], "dataset_sizes": ["a"],
                     "kv_cache": ["none", "fp8"]},
            "telemetry": {"sample_period_s": 0.05}, "evaluation": {"seq_lens": [64, 512], "samples_per_length": 2}}
    data["model"] = {**data["model"], "device": "cuda"}
    outcome = run_sweep(write_matrix(tmp_path, data), RunOptions(output_root=str(tmp_path / "runs")))
    assert outcome.exit_code == ExitCode.OK, [r.get("error") for r in outcome.summary["rows"]]
    for row in outcome.summary["rows"]:
        gpu = row["telemetry"]["gpu"]
        assert gpu["available"] is True and gpu["reason"] is None, gpu["reason"]
        assert gpu["samples"] >= 2 and gpu["devices"][0]["name"]
        assert gpu["sm_clock_mhz_min"] > 0 and gpu["temperature_c_max"] > 0 and gpu["power_w_mean"] > 0
        assert gpu["memory_used_peak_mb"] > 0
        mem = [m["peak_device_mb"] for m in row["long_context"]["by_length"]]
        assert all(m is not None and m > 0 for m in mem) and mem[1] > mem[0]
