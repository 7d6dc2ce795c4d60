"""Telemetry and provenance: peak memory per cell, hardware fingerprint, library versions.

The GPU name comes from the device itself (`torch.cuda.get_device_name`), never from an environment variable.
Peak host memory is sampled per cell by a background thread (the process-wide `ru_maxrss` only ever grows, so
it cannot attribute a peak to one cell). The same thread reads the GPUs in use through NVML every
`telemetry.sample_period_s` (execution/gpu_sampler.py), and the span's CPU time is taken around it, so every
cell's telemetry also has `host` and `gpu` blocks (`hardware_telemetry`).
"""

from __future__ import annotations

import functools
import os
import platform
import threading
import time
from importlib import metadata
from typing import Any

import torch

from .gpu_sampler import POLLUTING_THROTTLE_REASONS, GpuRef, GpuSampler, HostCpu, gpu_block, host_block


def _rss_bytes() -> int:
    try:
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


class PeakMemory:
    """Context manager measuring peak host RSS (sampled) and peak device memory (exact, every CUDA device the
    model is on: a model spread over two GPUs reports both, and `peak_device` is the larger, the one that
    decides whether it fits)."""

    def __init__(
        self,
        devices: torch.device | list[torch.device],
        interval: float = 0.05,
        gpu_period_s: float = 0.5,
        nvml: Any = None,
    ):
        self.devices = [d for d in (devices if isinstance(devices, list) else [devices]) if d.type == "cuda"]
        self.interval = interval
        self.peak_rss = 0
        self.peak_by_device: dict[str, int] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.gpu = GpuSampler(gpu_refs(self.devices), gpu_period_s, nvml=nvml)
        self.cpu = HostCpu()

    @property
    def peak_device(self) -> int | None:
        return max(self.peak_by_device.values()) if self.peak_by_device else None

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.peak_rss = max(self.peak_rss, _rss_bytes())
            self.gpu.sample()
            self._stop.wait(self.interval)

    def __enter__(self) -> PeakMemory:
        self.cpu.start()
        self.gpu.start()
        self.peak_rss = _rss_bytes()
        for d in self.devices:
            torch.cuda.synchronize(d)
            torch.cuda.reset_peak_memory_stats(d)
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self.gpu.stop()
        self.cpu.stop()
        self.peak_rss = max(self.peak_rss, _rss_bytes())
        for d in self.devices:
            torch.cuda.synchronize(d)
            key = str(_indexed(d))
            self.peak_by_device[key] = max(self.peak_by_device.get(key, 0), int(torch.cuda.max_memory_allocated(d)))

    def fold_device_peaks(self, peaks: dict[str, int]) -> None:
        """Keep device peaks read before someone resets the counters inside this span (long-context evaluation
        measures each length's own peak)."""
        for d, v in peaks.items():
            key = str(_indexed(torch.device(d)))
            self.peak_by_device[key] = max(self.peak_by_device.get(key, 0), v)

    def as_mb(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "peak_host_rss_mb": round(self.peak_rss / 2**20, 1),
            "peak_device_mb": None if self.peak_device is None else round(self.peak_device / 2**20, 1),
        }
        if len(self.peak_by_device) > 1:
            out["peak_device_mb_by_device"] = by_device_mb([self])
        return out


def gpu_refs(devices: list[torch.device]) -> list[GpuRef]:
    """The CUDA devices as NVML sees them: by UUID (CUDA_VISIBLE_DEVICES renumbers torch's devices, not NVML's),
    with the index NVML would use as the fallback."""
    refs: dict[str, GpuRef] = {}
    visible = os.environ.get("CUDA_VISIBLE_DEVICES", "")
    order = [int(x) for x in visible.split(",") if x.strip().isdigit()] if visible else []
    for d in devices:
        dev = _indexed(d)
        idx = int(dev.index or 0)
        uuid = None
        try:
            raw = str(torch.cuda.get_device_properties(idx).uuid)
            uuid = raw if raw.startswith(("GPU-", "MIG-")) else f"GPU-{raw}"
        except Exception:
            uuid = None
        refs.setdefault(str(dev), GpuRef(device=str(dev), index=order[idx] if idx < len(order) else idx, uuid=uuid))
    return list(refs.values())


def hardware_telemetry(meters: list[PeakMemory], spec: Any = None) -> dict[str, Any]:
    """`{"host": ..., "gpu": ...}` over the spans of `meters` (in time order): host RSS peak and CPU use, and the
    NVML statistics of the GPUs in use with the THERMAL thresholds of `spec` (a `TelemetrySpec`, or defaults)."""
    threshold = float(getattr(spec, "thermal_threshold_c", 85.0))
    polluting = tuple(getattr(spec, "polluting_throttle_reasons", POLLUTING_THROTTLE_REASONS))
    period = meters[0].gpu.period_s if meters else 0.5
    return {
        "host": host_block([m.cpu for m in meters], max((m.peak_rss for m in meters), default=0)),
        "gpu": gpu_block([m.gpu for m in meters], period, threshold, polluting),
    }


def _indexed(d: torch.device) -> torch.device:
    return torch.device("cuda", torch.cuda.current_device() if d.index is None else d.index)


def by_device_mb(meters: list[PeakMemory]) -> dict[str, float]:
    """The peak of each device over several meters, in MB."""
    out: dict[str, float] = {}
    for m in meters:
        for d, v in m.peak_by_device.items():
            out[d] = max(out.get(d, 0.0), round(v / 2**20, 1))
    return out


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _ram_gib() -> float | None:
    try:
        return round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)
    except (ValueError, OSError, AttributeError):
        return None


def hardware_fingerprint() -> dict[str, Any]:
    gpus = []
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            props = torch.cuda.get_device_properties(i)
            gpus.append({"name": props.name, "memory_gib": round(props.total_memory / 2**30, 1)})
    fp = {
        "os": f"{platform.system()}-{platform.release()}",
        "machine": platform.machine(),
        "cpu": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "ram_gib": _ram_gib(),
        "gpus": gpus,
        "cuda": torch.version.cuda if torch.cuda.is_available() else None,
        "torch_threads": torch.get_num_threads(),
    }
    gpu_text = "+".join(g["name"] for g in gpus) or "none"
    fp["fingerprint"] = f"{fp['os']}|{fp['cpu']}|{fp['cpu_count']}c|{fp['ram_gib']}gb|{gpu_text}"
    return fp


def library_versions() -> dict[str, str | None]:
    """The versions of the libraries that decide a result (a copy: callers may extend it)."""
    return dict(_library_versions())


@functools.cache
def _library_versions() -> dict[str, str | None]:
    """Read once per process: the summary is rewritten after every cell, and six package-metadata lookups cost
    ~12 ms each time (0.35 s of a 27-cell CPU sweep's 6.5 s); the imported libraries cannot change in between."""
    out: dict[str, str | None] = {"python": platform.python_version()}
    for dist in ("quantsweep", "torch", "transformers", "nvidia-modelopt", "pydantic", "pulp"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist] = None
    return out


class Stopwatch:
    def __init__(self) -> None:
        self.t0 = time.perf_counter()

    def lap(self) -> float:
        now = time.perf_counter()
        dt, self.t0 = now - self.t0, now
        return dt
