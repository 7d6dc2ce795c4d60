"""`quantsweep context-ceiling` on a hand-written summary: exact ceilings, best cell per length, thresholds."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
from report_helpers import cli, error_row, row, summary, write

from quantsweep.errors import InputError
from quantsweep.reports.context_ceiling import context_ceiling

REPO = Path(__file__).resolve().parents[1]


def lc(*points, kv="none"):
    """points: (seq_len, kl, ppl_ratio, peak MiB or None)."""
    return {"seq_lens": [p[0] for p in points], "kv_cache": kv, "samples_per_length": 2, "by_length": [
        {"seq_len": L, "samples": 2, "eval_tokens": 2 * (L - 1), "kl_mean": kl, "ppl_ratio": ratio,
         "top1_agreement": 0.9, "peak_device_mb": mb, "peak_host_rss_mb": 1000.0, "wall_s": 1.0}
        for L, kl, ratio, mb in points]}


def _rows():
    a = row("wint8_afp16", "default", "small", bits=8.0, kl=0.01)
    a["long_context"] = lc((512, 0.01, 1.01, 1000.0), (2048, 0.02, 1.02, 2000.0), (8192, 0.05, 1.06, 6000.0))
    b = row("wint4_afp16", "default", "small", bits=4.5, kl=0.03)
    b["kv_cache"] = "fp8"
    b["long_context"] = lc((512, 0.03, 1.03, 900.0), (2048, 0.2, 1.3, 1500.0), (8192, 0.04, 1.04, 4000.0), kv="fp8")
    c = row("wint4_afp16", "w_group64", "small", bits=4.2, kl=0.04)
    c["long_context"] = lc((512, 0.2, 1.2, 800.0), (2048, 0.3, 1.4, 1200.0), (8192, 0.4, 1.5, 3000.0))
    d = row("wint8_afp16", "w_group64", "small", bits=8.0, kl=0.001)  # best numbers, but thermally polluted
    d["long_context"] = lc((512, 0.001, 1.0, 500.0), (2048, 0.001, 1.0, 600.0), (8192, 0.001, 1.0, 700.0))
    d["reasons"] = ["THERMAL"]
    return [a, b, c, d, error_row("wint8_afp16", "default", "tiny")]


def _summary(tmp_path, rows=None):
    return write(tmp_path / "s.json", summary(rows if rows is not None else _rows()))  # kpi: kl_mean <= 0.05


def test_exact_ceilings_and_best_cell_per_length(tmp_path):
    doc = context_ceiling(_summary(tmp_path))
    assert doc["thresholds"] == {"kl_max": 0.05, "ppl_ratio_max": None, "memory_max_gb": None}  # the sweep's rule
    assert doc["seq_lens"] == [512, 2048, 8192]
    ceilings = {c["key"]: (c["ceiling"], c["capped_by"]) for c in doc["cells"]}
    assert ceilings == {
        "wint8_afp16/default/small": (8192, None),  # 0.05 <= 0.05 at 8192
        # passes 8192 again, but failed at 2048: not safe above 512
        "wint4_afp16/default/small": (512, {"seq_len": 2048, "fails": ["kl_mean 0.2 > 0.05"]}),
        "wint4_afp16/w_group64/small": (None, {"seq_len": 512, "fails": ["kl_mean 0.2 > 0.05"]}),
    }
    assert [c["kv_cache"] for c in doc["cells"]] == ["none", "fp8", "none"]
    assert doc["best_per_length"] == [
        {"seq_len": 512, "cells_meeting": 2, "best": "wint8_afp16/default/small", "kl_mean": 0.01,
         "peak_device_mb": 1000.0},
        {"seq_len": 2048, "cells_meeting": 1, "best": "wint8_afp16/default/small", "kl_mean": 0.02,
         "peak_device_mb": 2000.0},
        {"seq_len": 8192, "cells_meeting": 2, "best": "wint4_afp16/default/small", "kl_mean": 0.04,
         "peak_device_mb": 4000.0},
    ]
    assert doc["excluded"] == [{"key": "wint8_afp16/w_group64/small", "why": "invalid: THERMAL"},
                               {"key": "wint8_afp16/default/tiny", "why": "invalid: ERROR"}]


def test_memory_and_ppl_thresholds(tmp_path):
    path = _summary(tmp_path)
    doc = context_ceiling(path, kl_max=0.5, memory_max_gb=5.0)  # 6000 MiB = 6.29 GB > 5 GB
    ceilings = {c["key"]: c["ceiling"] for c in doc["cells"]}
    assert ceilings == {"wint8_afp16/default/small": 2048, "wint4_afp16/default/small": 8192,
                        "wint4_afp16/w_group64/small": 8192}
    a = doc["cells"][0]
    assert a["capped_by"] == {"seq_len": 8192, "fails": ["peak device memory 6.29 GB > 5 GB"]}
    doc = context_ceiling(path, ppl_ratio_max=1.05)  # given alone: KL is no longer judged
    assert doc["thresholds"] == {"kl_max": None, "ppl_ratio_max": 1.05, "memory_max_gb": None}
    assert {c["key"]: c["ceiling"] for c in doc["cells"]} == {
        "wint8_afp16/default/small": 2048, "wint4_afp16/default/small": 512, "wint4_afp16/w_group64/small": None}
    rows = _rows()
    for m in rows[0]["long_context"]["by_length"]:
        m["peak_device_mb"] = None  # a CPU run
    doc = context_ceiling(_summary(tmp_path / "cpu", rows), memory_max_gb=80)
    assert doc["cells"][0]["capped_by"] == {"seq_len": 512, "fails": ["peak device memory not measured"]}


def test_bad_input_is_refused(tmp_path):
    rows = _rows()
    for r in rows:
        r.pop("long_context", None)
    with pytest.raises(InputError, match="no row has quality by length"):
        context_ceiling(_summary(tmp_path, rows))
    with pytest.raises(InputError, match="--kl-max: expected a positive number, got -1"):
        context_ceiling(_summary(tmp_path), kl_max=-1)
    rows = _rows()
    bad = copy.deepcopy(rows[0]["long_context"]["by_length"][0])
    rows[0]["long_context"]["by_length"].append(bad)
    with pytest.raises(InputError, match=r"rows\[0\].long_context.by_length\[3\].seq_len: 512 is measured twice"):
        context_ceiling(_summary(tmp_path / "dup", rows))
    rows = _rows()
    rows[1]["long_context"]["by_length"][0]["kl_mean"] = -0.5
    with pytest.raises(InputError, match=r"rows\[1\].long_context.by_length\[0\].kl_mean: expected a number >= 0"):
        context_ceiling(_summary(tmp_path / "neg", rows))


def test_cli_json_and_markdown(tmp_path):
    path = _summary(tmp_path)
    res = cli("context-ceiling", "--summary", str(path), "--memory-max-gb", "5", "--kl-max", "0.5",
              "--out", str(tmp_path / "c.json"), "--json", cwd=REPO)
    assert res.returncode == 0, res.stderr
    doc = json.loads(res.stdout)
    assert json.loads((tmp_path / "c.json").read_text()) == doc
    md = (tmp_path / "c.md").read_text()
    assert "| wint8_afp16/default/small | none | 2048 | 0.01 / 1.01 / 1000.0 | 0.02 / 1.02 / 2000.0 | " \
           "0.05 / 1.06 / 6000.0 (fails) |" in md
    res = cli("context-ceiling", "--summary", str(path), "--out", str(path), cwd=REPO)
    assert res.returncode == 2 and "would replace" in res.stderr
