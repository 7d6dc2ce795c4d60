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


def _need_gpus(n: int) -> None:
    """Skip with a reason on a machine with fewer GPUs, unless QUANTSWEEP_REQUIRE_GPUS asks for them (then fail)."""
    import torch

    have = torch.cuda.device_count()
    if have >= n:
        return
    if int(os.environ.get("QUANTSWEEP_REQUIRE_GPUS", "0") or 0) >= n:
        pytest.fail(f"QUANTSWEEP_REQUIRE_GPUS asks for {n} GPUs; this machine has {have}", pytrace=False)
    pytest.skip(f"needs {n} GPUs (set QUANTSWEEP_REQUIRE_GPUS={n} to fail instead of skipping)")


def _rows_by_id(outcome) -> dict:
    return {r["cell_id"]: r for r in outcome.summary["rows"]}


def _assert_same_rows(a, b) -> None:
    ra, rb = _rows_by_id(a), _rows_by_id(b)
    assert set(ra) == set(rb) and ra
    for cid, x in ra.items():
        y = rb[cid]
        assert x["status"] == y["status"] == "ok", (x.get("error"), y.get("error"))
        assert x["achieved_bits"] == y["achieved_bits"]
        assert x["total_score"] == pytest.approx(y["total_score"], rel=1e-3)
        assert x["quality"]["kl_mean"] == pytest.approx(y["quality"]["kl_mean"], rel=1e-3, abs=1e-6)


@pytest.mark.gpu
def test_model_spread_over_two_gpus_gives_the_rows_of_one_gpu(tmp_path):
    _need_gpus(2)
    data = copy.deepcopy(TINY_MATRIX)
    data["model"].update(device="cuda", preset="qwen3-0.6b")  # 1.2 GB in bf16: big enough to split
    data["canary"] = {"enabled": False}
    one = run_sweep(write_matrix(tmp_path, data, "one.yaml"), RunOptions(output_root=str(tmp_path / "one")))
    # a cap of 600 MiB on GPU 0 leaves it the embedding and a few layers: the rest goes to GPU 1
    data["model"].update(device_map="sequential", max_memory={"0": "600MiB", "1": "8GiB"})
    two = run_sweep(write_matrix(tmp_path, data, "two.yaml"), RunOptions(output_root=str(tmp_path / "two")))
    assert two.exit_code == ExitCode.OK, [r.get("error") for r in two.summary["rows"]]
    placement = two.summary["model"]["placement"]
    assert placement["devices"] == ["cuda:0", "cuda:1"], placement
    _assert_same_rows(one, two)
    for row in two.summary["rows"]:
        by_device = row["telemetry"]["peak_device_mb_by_device"]
        assert set(by_device) == {"cuda:0", "cuda:1"} and all(v > 0 for v in by_device.values())


@pytest.mark.gpu
def test_ray_worker_with_two_gpus_spreads_its_model_over_them(tmp_path):
    _need_gpus(2)
    data = copy.deepcopy(TINY_MATRIX)
    data["model"].update(device="cuda", preset="qwen3-0.6b")  # balanced over two GPUs: half the layers each
    data["canary"] = {"enabled": False}
    data["axes"]["dataset_sizes"] = ["a"]
    path = write_matrix(tmp_path, data)
    local = run_sweep(path, RunOptions(output_root=str(tmp_path / "local")))
    ray = run_sweep(path, RunOptions(output_root=str(tmp_path / "ray"), executor="ray", workers=1, gpus_per_worker=2))
    assert ray.exit_code == ExitCode.OK, [r.get("error") for r in ray.summary["rows"]]
    placement = ray.summary["model"]["placement"]
    assert placement["device_map"] == "auto" and sorted(placement["devices"]) == ["cuda:0", "cuda:1"], placement
    _assert_same_rows(local, ray)
