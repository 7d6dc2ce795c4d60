"""The README's sweep command on the real embedded SmolLM2-135M (CPU; several minutes; marker `slow`).

Deselect locally with `-m "not slow"`; CI runs it.
"""

from __future__ import annotations

import json
import shutil

import pytest
from pipeline_helpers import REPO, cli


@pytest.mark.slow
def test_quickstart_on_smollm2(tmp_path):
    """The README's quickstart answers its question: can SmolLM2-135M go below 8 bits within 10% of its perplexity
    with INT8 per channel or INT4 in groups of 64 (8 and 10 effective bits, 4 and 8 calibration samples)?"""
    shutil.copy(REPO / "matrices" / "quickstart.yaml", tmp_path / "quickstart.yaml")
    res = cli("run", "--matrix", "quickstart.yaml", "--json", cwd=tmp_path, timeout=3600)
    assert res.returncode == 0, res.stderr[-3000:]
    doc = json.loads(res.stdout)
    assert doc["status"] == "complete" and doc["progress"] == {"done": 8, "total": 8, "errors": 0, "invalid": 0}
    summary = json.loads((tmp_path / "runs" / "quickstart" / "sweep-summary.json").read_text())
    assert summary["canary"]["passed"] is True
    assert summary["model"]["num_parameters"] == 134_515_008 and summary["model"]["architecture"] == "LlamaForCausalLM"
    assert 5 < summary["baseline"]["perplexity"] < 200  # a real LM; a broken one sits near the vocab size (49152)
    rows = summary["rows"]
    assert len(rows) == 8 and all(r["valid"] for r in rows)
    for r in rows:
        assert r["layer_count"] == 121  # 30 layers x (qkv, o, gate/up, down) + lm_head
        assert r["achieved_bits"] <= r["effective_bits_target"] + 1e-6 and r["satisfied"]
        # the recipe is the exact optimum of the cell's knapsack: never worse than ModelOpt's own solve
        sol = r["solver"]
        assert sol["exact_objective"] is not None and sol["exact_objective"] <= sol["modelopt_objective"]
        assert r["total_score"] == pytest.approx(min(sol["exact_objective"], sol["modelopt_objective"]), rel=1e-9)
        assert r["quality"]["kl_mean"] >= 0
        # one model in memory at a time (issue 11): 2.7 GB measured, 4.3-8.0 GB before; a second model copy or
        # ModelOpt's per-format differences kept alive would push it past 3.5 GB again
        assert 500 < r["telemetry"]["peak_host_rss_mb"] < 3500
        assert r["telemetry"]["phases"]["model"] < 5.0  # the master handed over, or a memory-mapped reload
    by = {(r["pair"], r["dataset_size"], r["effective_bits_target"]): r for r in rows}
    for size in ("tiny", "small"):
        w8, w8_10 = by[("wint8_afp16", size, 8.0)], by[("wint8_afp16", size, 10.0)]
        w4, w4_10 = by[("wint4g64_afp16", size, 8.0)], by[("wint4g64_afp16", size, 10.0)]
        # at 8 bits INT8 quantizes every layer; INT4 keeps about a third of the weights at 16 bits
        assert w8["achieved_bits"] == 8.0 and w8["quantized_layer_count"] == 121
        assert w4["quantized_layer_count"] < 121 and w4["achieved_bits"] < 8.0
        # the answer: INT8 at 8 bits stays within 1 % of the perplexity, INT4 group-64 at 8 bits loses more than 10 %
        # (17-18 % measured) and needs the 10-bit budget to come within it (9.5-9.8 % measured)
        assert w8["quality"]["ppl_ratio"] < 1.01 < 1.10 < w4["quality"]["ppl_ratio"] < 1.3
        assert 1.05 < w4_10["quality"]["ppl_ratio"] < 1.10
        assert w8_10["quality"]["ppl_ratio"] < w8["quality"]["ppl_ratio"]  # 16-bit layers added back
    # scores are sums over batches: twice the samples gives roughly twice the score
    small, tiny = by[("wint4g64_afp16", "small", 8.0)], by[("wint4g64_afp16", "tiny", 8.0)]
    assert 1.3 < small["total_score"] / tiny["total_score"] < 3.0

    # the rendered report ends in that decision, with an exportable recipe and the command that applies it
    rep = cli("render-report", "--summary", "runs/quickstart/sweep-summary.json", "--out", "report", "--json",
              cwd=tmp_path)
    assert rep.returncode == 0, rep.stderr[-3000:]
    assert json.loads(rep.stdout)["decision"] == {"cell": "wint8_afp16/default/small@8",
                                                  "runner_up": "wint8_afp16/default/small@10", "closest": None}
    md = (tmp_path / "report" / "report.md").read_text()
    assert "- Use wint8_afp16/default/small@8: wint8_afp16 with default scales" in md
    assert "- Nothing smaller meets the limit: the best cell below 8.000 bits, wint4g64_afp16/default/" in md
    assert "- kept at 16 bits: none of its 121 layer groups (every layer quantized)" in md
    assert ("- apply: quantsweep export --cell runs/quickstart/wint8_afp16/default/small/bits-8 --out "
            "exported/wint8_afp16-default-small@8") in md


@pytest.mark.slow
def test_nvfp4_cell_runs_on_smollm2_on_a_cpu(tmp_path):
    """NVFP4 (ModelOpt: CUDA only) runs end to end on a CPU through the torch backend, and lands between INT8
    and INT4 in quality as expected for a 4.5-bit format at a 6-bit budget."""
    import yaml

    data = yaml.safe_load((REPO / "matrices" / "fp4-cpu.yaml").read_text())
    data["name"] = "fp4"
    data["axes"]["quant_pairs"] = ["wfp4_afp16"]
    data["canary"] = {"enabled": False}
    (tmp_path / "m.yaml").write_text(yaml.safe_dump(data))
    res = cli("run", "--matrix", "m.yaml", "--json", cwd=tmp_path, timeout=1800)
    assert res.returncode == 0, res.stderr[-3000:]
    summary = json.loads((tmp_path / "runs" / "fp4" / "sweep-summary.json").read_text())
    (row,) = summary["rows"]
    assert row["status"] == "ok" and row["valid"], row.get("error")
    assert row["fake_quant_backend"] == "quantsweep_torch" and row["device"] == "cpu"
    assert row["format_bits"] == 4.5 and row["achieved_bits"] <= 6.0 + 1e-6
    assert row["quantized_layer_count"] > 60
    assert 1.0 < row["quality"]["ppl_ratio"] < 1.5 and row["quality"]["kl_mean"] > 0.01
