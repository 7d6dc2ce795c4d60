"""Hand-built sweep summaries for the KPI / frontier / report tests (pure Python, no torch, no model runs).

`row(...)` gives a complete, valid row as `quantsweep run` writes it (every field `validity.row_reasons` checks);
keyword arguments override fields. `summary(rows, ...)` wraps rows in a summary document.

The Orket fixtures of seed-systems.md §2.10/§2.11 re-expressed for this domain: Orket's quant rank becomes the
achieved effective bits, adherence (higher is better) becomes mean KL against the unquantized model (lower is
better), and "adherence >= 0.95 x baseline" becomes "KL <= max_quality".
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

GOOD_TELEMETRY: dict[str, Any] = {
    "device": "cpu",
    "wall_s": 10.0,
    "peak_host_rss_mb": 1000.0,
    "peak_device_mb": None,
    "tokens_processed": 2048,
    "phases": {"model": 0.1, "calibrate": 1.0, "score": 2.0, "search": 0.1, "evaluate": 1.0},
}

SIZES = {"tiny": 4, "small": 8, "medium": 32}


def row(
    pair: str = "wint8_afp16",
    granularity: str = "default",
    size: str = "small",
    bits: float | None = 8.0,
    kl: float | None = 0.01,
    *,
    budget: float = 8.0,
    model: str = "m",
    ppl_ratio: float | None = None,
    sweep: str = "s",
    **kw: Any,
) -> dict[str, Any]:
    several = kw.pop("budget_in_key", False)
    key = f"{pair}/{granularity}/{size}" + (f"@{budget:g}" if several else "")
    path = f"runs/{sweep}/{pair}/{granularity}/{size}" + (f"/bits-{budget:g}" if several else "")
    cid = "c" + hashlib.sha256(f"{model}|{key}".encode()).hexdigest()[:11]
    quality = None
    if kl is not None or ppl_ratio is not None:
        ratio = ppl_ratio if ppl_ratio is not None else (math.exp(kl) if kl is not None else None)
        quality = {"kl_mean": kl, "ppl_ratio": ratio, "ppl_quant": 10.0 * ratio if ratio else None,
                   "ppl_base": 10.0, "top1_agreement": 0.9}
    r: dict[str, Any] = {
        "schema_version": "1",
        "cell_id": cid,
        "config_hash": "h" + cid,
        "key": key,
        "model": model,
        "pair": pair,
        "weight": pair.split("_")[0][1:],
        "activation": pair.split("_")[1][1:] if "_" in pair else "fp16",
        "granularity": granularity,
        "dataset_size": size,
        "samples": SIZES.get(size, 16),
        "effective_bits_target": budget,
        "status": "ok",
        "error": None,
        "error_type": None,
        "achieved_bits": bits,
        "total_score": 1.0,
        "satisfied": True,
        "scores_finite": True,
        "quality": quality,
        "telemetry": copy.deepcopy(GOOD_TELEMETRY),
        "determinism": None,
        "result_fingerprint": "fp" + cid,
        "path": path,
        "from_canary": False,
        "reasons": [],
        "valid": True,
    }
    r.update(kw)
    return r


def error_row(pair: str = "wint8_afp16", granularity: str = "default", size: str = "small", **kw: Any) -> dict[str, Any]:
    tel = copy.deepcopy(GOOD_TELEMETRY)
    tel["phases"] = {"model": 0.1}
    r = row(pair, granularity, size, None, None, status="error", error="RuntimeError: boom", error_type="RuntimeError",
            total_score=None, satisfied=None, scores_finite=None, result_fingerprint=None, telemetry=tel,
            reasons=["ERROR"], valid=False)
    r.update(kw)
    return r


def summary(
    rows: list[dict[str, Any]],
    *,
    kpi: dict[str, Any] | None = None,
    canary: dict[str, Any] | None = None,
    name: str = "s",
    **kw: Any,
) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "schema_version": "1",
        "kind": "quantsweep.sweep_summary",
        "generated_at": "2026-01-01T00:00:00+00:00",
        "status": "complete",
        "matrix_file": f"{name}.yaml",
        "commit": "0123456789abcdef",
        "hardware": {"fingerprint": "Linux|test-cpu|2c|8gb|none"},
        "versions": {"nvidia-modelopt": "0.47.0"},
        "matrix": {
            "name": name,
            "axes": {"quant_pairs": sorted({r.get("pair") for r in rows if r.get("pair")}),
                     "granularities": ["default"], "dataset_sizes": ["small"]},
            "dataset": {"source": "embedded", "seq_len": 128, "sizes": dict(SIZES), "eval_samples": 8},
            "autoquant": {"method": "gradient", "batch_size": 4, "effective_bits": [8.0]},
            "kpi": kpi if kpi is not None else {"quality_metric": "kl_mean", "max_quality": 0.05},
        },
        "labels": {"execution_lane": "ci"},
        "model": {"name": "m", "architecture": "LlamaForCausalLM"},
        "dataset": {"fingerprint": "abc"},
        "canary": canary,
        "rows": rows,
    }
    doc.update(kw)
    return doc


def write(path: Path, doc: dict[str, Any]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc, indent=2))
    return path


def write_manifest(sweep_dir: Path, r: dict[str, Any], scores: dict[str, float], kept: set[str] | None = None
                   ) -> Path:
    """A minimal cell manifest (what the layer views read) in the cell folder beside the summary. With `kept`, every
    layer group also records its choice (`chosen`: "none" for the kept ones, else the cell's format) and its
    costs (one unit of weights per group: 0.25 in the format, 1 at 16 bits)."""
    rel = Path(r["path"]).parts[2:]  # drop "runs/<sweep>"
    folder = sweep_dir.joinpath(*rel)
    folder.mkdir(parents=True, exist_ok=True)
    fmt = f"{r['pair']}/{r['granularity']}"
    doc = {
        "cell": {"id": r["cell_id"], "key": r["key"]},
        "layers": [{"name": n, "formats": [fmt, "none"], "raw_scores": [s, 0.0]} for n, s in scores.items()],
    }
    if kept is not None:
        for g in doc["layers"]:
            g.update(chosen="none" if g["name"] in kept else fmt, costs=[0.25, 1.0])
    (folder / "manifest.json").write_text(json.dumps(doc))
    return folder


# --- the seed fixtures, re-expressed ---------------------------------------------------------------------------
def orket_frontier_rows() -> list[dict[str, Any]]:
    """§2.10 with a fourth cell so that the three roles land on three different cells.

    Threshold KL <= 0.05. 8 bits KL 0.001 (baseline), 7 bits 0.004 (best value), 6 bits 0.045 (minimum viable:
    the fewest bits under the threshold), 4 bits 0.25 (fails, still on the Pareto frontier).
    """
    return [
        row("wint8_afp16", bits=8.0, kl=0.001),
        row("w7_afp16", bits=7.0, kl=0.004),
        row("w6_afp16", bits=6.0, kl=0.045),
        row("wint4_afp16", bits=4.0, kl=0.25),
    ]


def orket_render_rows() -> list[dict[str, Any]]:
    """§2.11: Q8_0 valid, Q6_K valid, Q4_K_M polluted (here: its telemetry lost its peak memory field)."""
    tel = copy.deepcopy(GOOD_TELEMETRY)
    del tel["peak_host_rss_mb"]
    return [
        row("wint8_afp16", bits=8.0, kl=0.001),
        row("w6_afp16", bits=6.0, kl=0.03),
        row("wint4_afp16", bits=4.0, kl=0.04, telemetry=tel),
    ]


def cli(*args: str, cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """`python -m quantsweep ARGS` in `cwd` (the real entry point, so exit codes are the documented ones)."""
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    return subprocess.run([sys.executable, "-m", "quantsweep", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout, env=env)
