"""GPU telemetry sampled through NVML while a cell runs, and the host's CPU use over the same span.

Why a module of its own: a timing or memory figure taken on a GPU that throttled (too hot, or held back by a
power brake) is not the figure of the recipe, it is the figure of the machine's state, so every cell records what
the GPUs it used did meanwhile: utilisation, memory used (peak), SM clock (min / max), temperature (start / max),
power (mean / max) and the NVML clock-event ("throttle") reasons seen. `store/validity.py` turns a temperature at
or above the matrix's threshold, or a polluting throttle reason, into the row reason THERMAL.

NVML is read with `nvidia-ml-py` (module `pynvml`), which is pure Python and imports without a GPU; without a
GPU in use, without the package, or when NVML cannot start (no driver), every GPU field is recorded as `null`
with the reason in `reason`: never as zeros, which would read as an idle, cold GPU. A query that one GPU does
not support (power on some boards) leaves that field `null` and names it under `unsupported`.

No torch here: the GPUs to watch come in as `GpuRef`s (their torch device, NVML index and UUID), resolved by
`execution/telemetry.py`. Tests inject a stand-in NVML module through `nvml=`.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any

# NVML clock-event ("throttle") reason bits (nvml.h, nvmlClocksEventReason*), by the names rows record.
THROTTLE_BITS: dict[str, int] = {
    "gpu_idle": 0x1,
    "applications_clocks_setting": 0x2,
    "sw_power_cap": 0x4,
    "hw_slowdown": 0x8,
    "sync_boost": 0x10,
    "sw_thermal_slowdown": 0x20,
    "hw_thermal_slowdown": 0x40,
    "hw_power_brake_slowdown": 0x80,
    "display_clock_setting": 0x100,
}
# Reasons that mean the GPU was held back by heat or by the board's power brake: timings taken then are polluted.
POLLUTING_THROTTLE_REASONS = ("sw_thermal_slowdown", "hw_thermal_slowdown", "hw_power_brake_slowdown")
# The GPU fields of a telemetry block (one device, or the aggregate over devices); all None when unavailable.
GPU_FIELDS = (
    "utilization_pct_mean", "utilization_pct_max", "memory_used_peak_mb", "sm_clock_mhz_min", "sm_clock_mhz_max",
    "temperature_c_start", "temperature_c_max", "power_w_mean", "power_w_max",
)


@dataclass(frozen=True)
class GpuRef:
    """A GPU in use: its torch device name, its NVML index, and its UUID when known (preferred: CUDA_VISIBLE_DEVICES
    renumbers devices for torch but not for NVML)."""

    device: str
    index: int
    uuid: str | None = None


def load_nvml() -> tuple[ModuleType | None, str | None]:
    """(the pynvml module, None) or (None, why it cannot be used)."""
    try:
        import pynvml  # nvidia-ml-py
    except ImportError:
        return None, "nvidia-ml-py (pynvml) is not installed"
    return pynvml, None


@dataclass
class _Series:
    """Running statistics of one GPU's samples (mergeable, so a cell can add a shared call's samples to its own)."""

    device: str
    index: int
    name: str | None = None
    samples: int = 0
    util_sum: float = 0.0
    util_n: int = 0
    util_max: float | None = None
    mem_peak: float | None = None
    clock_min: float | None = None
    clock_max: float | None = None
    temp_start: float | None = None
    temp_max: float | None = None
    power_sum: float = 0.0
    power_n: int = 0
    power_max: float | None = None
    throttle: set[str] = field(default_factory=set)
    unsupported: set[str] = field(default_factory=set)

    def add(self, s: dict[str, Any]) -> None:
        self.samples += 1
        if s.get("util") is not None:
            self.util_sum += s["util"]
            self.util_n += 1
            self.util_max = _max(self.util_max, s["util"])
        self.mem_peak = _max(self.mem_peak, s.get("mem_mb"))
        self.clock_min = _min(self.clock_min, s.get("clock"))
        self.clock_max = _max(self.clock_max, s.get("clock"))
        if self.temp_start is None:
            self.temp_start = s.get("temp")
        self.temp_max = _max(self.temp_max, s.get("temp"))
        if s.get("power") is not None:
            self.power_sum += s["power"]
            self.power_n += 1
            self.power_max = _max(self.power_max, s["power"])
        self.throttle |= set(s.get("throttle", ()))

    def merge(self, other: _Series) -> None:
        """Fold in the samples of a span that came *after* this one's (this one's start temperature stays)."""
        self.samples += other.samples
        self.util_sum += other.util_sum
        self.util_n += other.util_n
        self.util_max = _max(self.util_max, other.util_max)
        self.mem_peak = _max(self.mem_peak, other.mem_peak)
        self.clock_min = _min(self.clock_min, other.clock_min)
        self.clock_max = _max(self.clock_max, other.clock_max)
        self.temp_start = self.temp_start if self.temp_start is not None else other.temp_start
        self.temp_max = _max(self.temp_max, other.temp_max)
        self.power_sum += other.power_sum
        self.power_n += other.power_n
        self.power_max = _max(self.power_max, other.power_max)
        self.throttle |= other.throttle
        self.unsupported |= other.unsupported
        self.name = self.name or other.name

    def fields(self) -> dict[str, Any]:
        return {
            "utilization_pct_mean": round(self.util_sum / self.util_n, 2) if self.util_n else None,
            "utilization_pct_max": self.util_max,
            "memory_used_peak_mb": None if self.mem_peak is None else round(self.mem_peak, 1),
            "sm_clock_mhz_min": self.clock_min,
            "sm_clock_mhz_max": self.clock_max,
            "temperature_c_start": self.temp_start,
            "temperature_c_max": self.temp_max,
            "power_w_mean": round(self.power_sum / self.power_n, 2) if self.power_n else None,
            "power_w_max": None if self.power_max is None else round(self.power_max, 2),
        }


def _max(a: float | None, b: float | None) -> float | None:
    return b if a is None else a if b is None else max(a, b)


def _min(a: float | None, b: float | None) -> float | None:
    return b if a is None else a if b is None else min(a, b)


def _decode(x: Any) -> str:
    return x.decode(errors="replace") if isinstance(x, bytes) else str(x)


def throttle_names(mask: int) -> list[str]:
    return [name for name, bit in THROTTLE_BITS.items() if mask & bit]


class GpuSampler:
    """Samples the GPUs in `gpus` on demand (`sample()`); `PeakMemory`'s background thread calls it every
    `period_s`. Open with `start()`, close with `stop()`; `block()` is the row's `telemetry.gpu`."""

    def __init__(self, gpus: list[GpuRef], period_s: float = 0.5, nvml: ModuleType | None = None):
        self.gpus = list(gpus)
        self.period_s = period_s
        self._nvml = nvml
        self._handles: list[tuple[_Series, Any]] = []
        self.reason: str | None = None
        self.series: list[_Series] = []
        self._open = False
        self._last = -math.inf

    def start(self) -> None:
        if not self.gpus:
            self.reason = "no GPU in use (the model runs on the CPU)"
            return
        nvml = self._nvml
        if nvml is None:
            nvml, self.reason = load_nvml()
            if nvml is None:
                return
        self._nvml = nvml
        try:
            nvml.nvmlInit()
        except Exception as exc:  # NVMLError_LibraryNotFound, DriverNotLoaded, ...: no NVML on this machine
            self.reason = f"NVML could not start: {type(exc).__name__}: {exc}"
            return
        self._open = True
        try:
            for g in self.gpus:
                handle = None
                if g.uuid:
                    try:
                        handle = nvml.nvmlDeviceGetHandleByUUID(g.uuid)
                    except Exception:
                        handle = None
                if handle is None:
                    handle = nvml.nvmlDeviceGetHandleByIndex(g.index)
                s = _Series(device=g.device, index=g.index)
                try:
                    s.name = _decode(nvml.nvmlDeviceGetName(handle))
                except Exception:
                    s.name = None
                self._handles.append((s, handle))
                self.series.append(s)
        except Exception as exc:
            self.reason = f"NVML could not open the GPUs in use: {type(exc).__name__}: {exc}"
            self._handles, self.series = [], []
            self.stop()
            return
        self.sample(force=True)

    def sample(self, force: bool = False) -> None:
        """One reading of every GPU, unless the last one is less than `period_s` old (and not `force`)."""
        if not self._handles:
            return
        now = time.monotonic()
        if not force and now - self._last < self.period_s:
            return
        self._last = now
        nvml = self._nvml
        assert nvml is not None
        for s, h in self._handles:
            reading: dict[str, Any] = {}
            for key, read in (
                ("util", lambda h=h: float(nvml.nvmlDeviceGetUtilizationRates(h).gpu)),
                ("mem_mb", lambda h=h: nvml.nvmlDeviceGetMemoryInfo(h).used / 2**20),
                ("clock", lambda h=h: float(nvml.nvmlDeviceGetClockInfo(h, nvml.NVML_CLOCK_SM))),
                ("temp", lambda h=h: float(nvml.nvmlDeviceGetTemperature(h, nvml.NVML_TEMPERATURE_GPU))),
                ("power", lambda h=h: nvml.nvmlDeviceGetPowerUsage(h) / 1000.0),  # milliwatts
                ("throttle", lambda h=h: throttle_names(int(_throttle_mask(nvml, h)))),
            ):
                if key in s.unsupported:
                    continue
                try:
                    reading[key] = read()
                except Exception:  # NVMLError_NotSupported on this board, or a transient failure: left out
                    s.unsupported.add(key)
            s.add(reading)

    def stop(self) -> None:
        if self._open:
            self.sample(force=True)
            try:
                assert self._nvml is not None
                self._nvml.nvmlShutdown()
            except Exception:
                pass
            self._open = False
            self._handles = []


def _throttle_mask(nvml: Any, handle: Any) -> int:
    fn = getattr(nvml, "nvmlDeviceGetCurrentClocksEventReasons", None) or nvml.nvmlDeviceGetCurrentClocksThrottleReasons
    return fn(handle)


_UNSUPPORTED_NAMES = {"util": "utilization", "mem_mb": "memory", "clock": "sm_clock", "temp": "temperature",
                      "power": "power", "throttle": "throttle_reasons"}


def gpu_block(samplers: list[GpuSampler], period_s: float, threshold_c: float,
              polluting: tuple[str, ...] | list[str] = POLLUTING_THROTTLE_REASONS) -> dict[str, Any]:
    """The row's `telemetry.gpu`: per-device statistics over every sampler's span (earlier samplers first), their
    aggregate (max / min over devices; means averaged over devices), and the thresholds THERMAL is judged by."""
    merged: dict[str, _Series] = {}
    reason = None
    for sampler in samplers:
        if not sampler.series:
            reason = reason or sampler.reason
        for s in sampler.series:
            acc = merged.setdefault(s.device, _Series(device=s.device, index=s.index))
            acc.merge(s)
    block: dict[str, Any] = {
        "available": bool(merged),
        "reason": None if merged else (reason or "no GPU telemetry"),
        "source": "nvml",
        "sample_period_s": period_s,
        "samples": sum(s.samples for s in merged.values()) if merged else 0,
        "thermal_threshold_c": threshold_c,
        "polluting_throttle_reasons": list(polluting),
    }
    devices = []
    for s in merged.values():
        devices.append({
            "device": s.device, "index": s.index, "name": s.name, "samples": s.samples, **s.fields(),
            "throttle_reasons_seen": sorted(s.throttle),
            "unsupported": sorted(_UNSUPPORTED_NAMES[u] for u in s.unsupported),
        })
    block.update(_aggregate(devices))
    block["throttle_reasons_seen"] = sorted({r for d in devices for r in d["throttle_reasons_seen"]}) if devices else None
    block["devices"] = devices
    return block


def _aggregate(devices: list[dict[str, Any]]) -> dict[str, Any]:
    if not devices:
        return dict.fromkeys(GPU_FIELDS)

    def vals(k: str) -> list[float]:
        return [d[k] for d in devices if d[k] is not None]

    def agg(k: str, how: Any) -> float | None:
        v = vals(k)
        return how(v) if v else None

    return {
        "utilization_pct_mean": agg("utilization_pct_mean", lambda v: round(sum(v) / len(v), 2)),
        "utilization_pct_max": agg("utilization_pct_max", max),
        "memory_used_peak_mb": agg("memory_used_peak_mb", max),
        "sm_clock_mhz_min": agg("sm_clock_mhz_min", min),
        "sm_clock_mhz_max": agg("sm_clock_mhz_max", max),
        "temperature_c_start": agg("temperature_c_start", max),
        "temperature_c_max": agg("temperature_c_max", max),
        "power_w_mean": agg("power_w_mean", lambda v: round(sum(v) / len(v), 2)),
        "power_w_max": agg("power_w_max", max),
    }


class HostCpu:
    """The process's CPU time over a span (user + system, every thread), as seconds and as a share of one core."""

    def __init__(self) -> None:
        self._t0 = self._cpu0 = 0.0
        self.cpu_s: float | None = None
        self.wall_s: float | None = None

    @staticmethod
    def _cpu() -> float:
        t = os.times()
        return t.user + t.system

    def start(self) -> None:
        self._t0, self._cpu0 = time.perf_counter(), self._cpu()

    def stop(self) -> None:
        self.wall_s = time.perf_counter() - self._t0
        self.cpu_s = self._cpu() - self._cpu0


def host_block(cpus: list[HostCpu], peak_rss_bytes: int) -> dict[str, Any]:
    """The row's `telemetry.host`: peak RSS, CPU seconds and mean CPU use (100 = one core busy) over the spans."""
    cpu_s = sum(c.cpu_s for c in cpus if c.cpu_s is not None)
    wall = sum(c.wall_s for c in cpus if c.wall_s is not None)
    return {
        "rss_peak_mb": round(peak_rss_bytes / 2**20, 1),
        "cpu_s": round(cpu_s, 3),
        "cpu_percent_mean": round(100.0 * cpu_s / wall, 1) if wall > 0 else None,
        "cpu_count": os.cpu_count(),
    }
