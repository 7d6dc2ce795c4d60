"""Checks of the measured blocks that rows and cell manifests share: `quality`, `telemetry`, `determinism`, `solver`.

Why a module of its own: `quantsweep run` writes the same blocks into a cell's row and its manifest, and both are
read back (summaries by the reports, manifests by `report --cell` and `export`), so both must be held to one
definition of a possible value. Ranges follow what the code that measures them can produce (engine/quality.py,
execution/telemetry.py, engine/exact_solver.py): a divergence, a standard error or a time is never negative, a
perplexity never 0 or less, an agreement rate lies in [0, 1]. NaN and infinities are accepted where they are a
recorded outcome (a diverged model: NONFINITE_SCORE; a lost telemetry value: MISSING_TELEMETRY).
"""

from __future__ import annotations

from typing import Any

from .fields import ANY, COUNT, FRACTION, MEASURED, POSITIVE_MEASURED, Fields, Num, is_number

# quality metrics (engine/quality.py); NaN/inf is a diverged model (NONFINITE_SCORE), never a negative divergence
QUALITY_NUM = {
    **dict.fromkeys(("kl_mean", "kl_stderr", "kl_stderr_iid", "kl_p50", "kl_p90", "kl_p99", "kl_max"), MEASURED),
    **dict.fromkeys(("ppl_base", "ppl_quant", "ppl_ratio"), POSITIVE_MEASURED),
    **dict.fromkeys(("ppl_quant_stderr", "ppl_ratio_stderr", "ln_ppl_ratio_stderr", "top1_stderr"), MEASURED),
    "ln_ppl_ratio": ANY,
    "top1_agreement": FRACTION,
    "eval_tokens": COUNT,
    "eval_sequences": COUNT,
}
QUALITY_STR = ("kl_method", "stderr_method")
_PER_SEQUENCE = {"kl": MEASURED, "ln_ppl_ratio": ANY, "top1": FRACTION}
# telemetry: NaN or absent is "missing" (MISSING_TELEMETRY), a negative time, memory or token count is impossible
_TELEMETRY_NUM = dict.fromkeys(("wall_s", "peak_host_rss_mb", "peak_device_mb", "tokens_processed"), MEASURED)
# telemetry.gpu / telemetry.host (execution/gpu_sampler.py): null when unavailable, never negative
_PERCENT = Num(lo=0, hi=100)
_CELSIUS = Num(lo=-273.15, hi=1000)
_GPU_NUM = {
    "utilization_pct_mean": _PERCENT, "utilization_pct_max": _PERCENT, "memory_used_peak_mb": MEASURED,
    "sm_clock_mhz_min": MEASURED, "sm_clock_mhz_max": MEASURED, "temperature_c_start": _CELSIUS,
    "temperature_c_max": _CELSIUS, "power_w_mean": MEASURED, "power_w_max": MEASURED, "samples": COUNT,
}
_HOST_NUM = {"rss_peak_mb": MEASURED, "cpu_s": MEASURED, "cpu_percent_mean": MEASURED, "cpu_count": COUNT}
_DETERMINISM_NUM = {"runs": COUNT, "max_rel_score_diff": MEASURED, "rtol": Num(lo=0)}
_SOLVER_NUM = {"modelopt_objective": ANY, "exact_objective": ANY, "objective_gap": ANY, "groups_differing": COUNT}


def check_quality(f: Fields, where: str, quality: Any) -> None:
    """A row's (or a manifest's) `quality`: known metrics in range, `per_sequence` lists, other keys scalars."""
    q = f.obj(where, quality)
    for key, v in q.items():
        path = f"{where}.{key}"
        if key in QUALITY_NUM:
            f.number(path, v, QUALITY_NUM[key])
        elif key in QUALITY_STR:
            f.string(path, v)
        elif key == "per_sequence":  # per held-out sequence means: lists of numbers (reports/noise.py)
            for name, values in f.obj(path, v).items():
                f.numbers(f"{path}.{name}", values, _PER_SEQUENCE.get(name, ANY), required=True)
        else:
            f.expect(path, v, v is None or is_number(v) or isinstance(v, str), "a number, string or null")
            if is_number(v):
                f.number(path, v)


def check_determinism(f: Fields, where: str, det: Any) -> None:
    d = f.obj(where, det)
    f.numeric_fields(where, d, _DETERMINISM_NUM)
    for name in ("identical_recipe", "deterministic"):
        f.boolean(f"{where}.{name}", d.get(name))


def check_solver(f: Fields, where: str, solver: Any) -> None:
    s = f.obj(where, solver)
    f.numeric_fields(where, s, _SOLVER_NUM)
    f.string(f"{where}.used", s.get("used"))


def check_telemetry(f: Fields, where: str, telemetry: Any) -> None:
    t = f.obj(where, telemetry)
    f.numeric_fields(where, t, _TELEMETRY_NUM)
    f.string(f"{where}.device", t.get("device"))
    for phase, v in f.obj(f"{where}.phases", t.get("phases")).items():
        f.number(f"{where}.phases.{phase}", v, MEASURED)
    f.numeric_fields(f"{where}.host", f.obj(f"{where}.host", t.get("host")), _HOST_NUM)
    check_gpu_telemetry(f, f"{where}.gpu", t.get("gpu"))


_BY_LENGTH_NUM = {
    "seq_len": Num(lo=1, hi=COUNT.hi, integer=True), "samples": COUNT, "eval_tokens": COUNT,
    **dict.fromkeys(("kl_mean", "kl_stderr"), MEASURED), **dict.fromkeys(("ppl_base", "ppl_quant", "ppl_ratio"),
                                                                        POSITIVE_MEASURED),
    "top1_agreement": FRACTION, "peak_device_mb": MEASURED, "peak_host_rss_mb": MEASURED, "wall_s": MEASURED,
}


def check_long_context(f: Fields, where: str, lc: Any) -> None:
    """A row's `long_context` (evaluation.seq_lens): each length measured once, every figure in range."""
    d = f.obj(where, lc)
    if not d:
        return
    f.numbers(f"{where}.seq_lens", d.get("seq_lens"), Num(lo=1, hi=COUNT.hi, integer=True))
    f.string(f"{where}.kv_cache", d.get("kv_cache"))
    seen: set[int] = set()
    for i, m in enumerate(f.seq(f"{where}.by_length", d.get("by_length"))):
        w = f"{where}.by_length[{i}]"
        m = f.obj(w, m, required=True)
        f.number(f"{w}.seq_len", m.get("seq_len"), _BY_LENGTH_NUM["seq_len"], required=True)
        f.numeric_fields(w, m, _BY_LENGTH_NUM)
        if m["seq_len"] in seen:
            raise f.fail(f"{w}.seq_len", f"{m['seq_len']} is measured twice")
        seen.add(m["seq_len"])


def check_gpu_telemetry(f: Fields, where: str, gpu: Any) -> None:
    """`telemetry.gpu`: the aggregate and each device in range, the THERMAL thresholds usable (a threshold that is
    not a positive number would silently judge nothing)."""
    g = f.obj(where, gpu)
    if not g:
        return
    f.boolean(f"{where}.available", g.get("available"))
    f.string(f"{where}.reason", g.get("reason"))
    f.numeric_fields(where, g, {**_GPU_NUM, "sample_period_s": Num(lo=0, lo_open=True),
                                "thermal_threshold_c": Num(lo=0, lo_open=True, hi=1000)})
    f.strings(f"{where}.throttle_reasons_seen", g.get("throttle_reasons_seen"))
    f.strings(f"{where}.polluting_throttle_reasons", g.get("polluting_throttle_reasons"))
    for i, d in enumerate(f.seq(f"{where}.devices", g.get("devices"))):
        dw = f"{where}.devices[{i}]"
        d = f.obj(dw, d, required=True)
        f.numeric_fields(dw, d, {**_GPU_NUM, "index": COUNT})
        f.string(f"{dw}.device", d.get("device"))
        f.string(f"{dw}.name", d.get("name"))
        f.strings(f"{dw}.throttle_reasons_seen", d.get("throttle_reasons_seen"))


