"""Baseline provenance: what the reference model's weights really are, read from the GGUF header at plan time,
recorded in the summary and printed in the report (the embedded SmolLM2 is a dequantized Q4_1 GGUF)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from pipeline_helpers import cli

from quantsweep.model_shapes import describe_provenance, plan_shapes
from quantsweep.schema import ModelSpec

FIXTURES = Path(__file__).parent / "fixtures"


def test_embedded_model_is_a_dequantized_q4_1_gguf():
    prov = plan_shapes(ModelSpec()).provenance
    assert prov == {
        "source_format": "gguf", "file": "SmolLM2-135M-Instruct.Q4_1.gguf", "architecture": "llama",
        "name": "Smollm2 135M 8k Lc100K Mix1 Ep2", "gguf_file_type": 3, "original_quantization": "Q4_1",
        "matrix_storage_types": {"Q4_1": 210, "Q8_0": 1}, "dequantized": True,
    }
    assert describe_provenance(prov).endswith("the baseline is itself a Q4_1 model, not the original unquantized weights")
    assert describe_provenance({"source_format": "huggingface", "original_quantization": None}) == \
        "huggingface, unquantized weights"
    assert describe_provenance(["hostile"]) == "not recorded"


def test_report_states_the_baseline_provenance(tmp_path):
    src = tmp_path / "sweep"
    shutil.copytree(FIXTURES / "quickstart", src)
    summary = src / "sweep-summary.json"
    doc = json.loads(summary.read_text())
    doc["model"]["provenance"] = plan_shapes(ModelSpec()).provenance
    summary.write_text(json.dumps(doc))
    res = cli("render-report", "--summary", str(summary), "--out", str(tmp_path / "rep"), "--json", cwd=tmp_path,
              timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    md = (tmp_path / "rep" / "report.md").read_text()
    assert ("Baseline weights: gguf file SmolLM2-135M-Instruct.Q4_1.gguf stored as Q4_1 (210 Q4_1, 1 Q8_0 matrices), "
            "dequantized to floating point when loaded: the baseline is itself a Q4_1 model") in md
