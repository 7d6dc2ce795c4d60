"""GPU-only: the same pipeline on CUDA (run on the GPU machine with QUANTSWEEP_REQUIRE_GPU=1)."""

from __future__ import annotations

import copy
import os

import pytest
from pipeline_helpers import TINY_MATRIX, write_matrix

from quantsweep.errors import ExitCode
from quantsweep.execution.sweep import RunOptions, run_sweep

os.environ.setdefault("TQDM_DISABLE", "1")


@pytest.mark.gpu
def test_tiny_sweep_on_cuda_records_device_telemetry_and_gpu_name(tmp_path):
    import torch

    data = copy.deepcopy(TINY_MATRIX)
    data["name"] = "cuda"
    data["model"]["device"] = "cuda"
    # NVFP4 (fp4 weights) only fake-quantizes on CUDA in ModelOpt: exercise it here.
    data["axes"] = {"quant_pairs": ["wint8_afp16", "wfp4_afp16"], "granularities": ["default"], "dataset_sizes": ["a"]}
    path = write_matrix(tmp_path, data)
    outcome = run_sweep(path, RunOptions(output_root=str(tmp_path / "runs")))
    assert outcome.exit_code == ExitCode.OK, [r.get("error") for r in outcome.summary["rows"]]
    s = outcome.summary
    assert s["hardware"]["gpus"][0]["name"] == torch.cuda.get_device_name(0)
    for row in s["rows"]:
        assert row["status"] == "ok" and row["valid"], row["reasons"]
        assert row["device"] == "cuda" and row["fake_quant_backend"] == "modelopt"
        assert row["telemetry"]["peak_device_mb"] > 0
    assert s["model"]["dtype"] == "bfloat16"
