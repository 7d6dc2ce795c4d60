"""The Ray executor on a real local Ray instance (2 CPU workers, the tiny model): its rows equal the local
executor's for both engines, a worker killed mid-run loses nothing, and a killed driver resumes.

Each Ray run starts worker processes that import torch and ModelOpt (~20 s on a 2-core machine), so the module
keeps to four Ray sweeps.
"""

from __future__ import annotations

import copy
import json
import os
import signal
import sys
from pathlib import Path
from typing import Any

import pytest
from pipeline_helpers import TINY_MATRIX, assert_resumed, cli, kill_run_after_rows, load_rows, write_matrix

from quantsweep.errors import ExitCode, InputError
from quantsweep.execution.progress import Reporter
from quantsweep.execution.sweep import RunOptions, run_sweep

pytest.importorskip("ray", reason="ray is in the dev group; `uv sync` installs it")

os.environ.setdefault("TQDM_DISABLE", "1")


def _tiny(name: str) -> dict[str, Any]:
    """8 cells of weight-only formats: one data-free union call of 4 formats, split over the two workers."""
    data = copy.deepcopy(TINY_MATRIX)
    data["name"] = name
    return data


def _matrix(name: str) -> dict[str, Any]:
    """12 cells: two weight-only formats and FP8 W8A8 (calibrated once for both sizes) in one union call; two
    budgets."""
    data = copy.deepcopy(TINY_MATRIX)
    data["name"] = name
    data["autoquant"]["effective_bits"] = [8.0, 12.0]
    data["axes"] = {
        "quant_pairs": ["wint8_afp16", "wint4_afp16", "wfp8_afp8"],
        "granularities": ["default"],
        "dataset_sizes": ["a", "b"],
    }
    return data


def _ray_options(root: Path, engine: str, **kw: Any) -> RunOptions:
    return RunOptions(output_root=str(root), engine=engine, executor="ray", workers=2, **kw)


def _manifest(row: dict[str, Any]) -> dict[str, Any]:
    return json.loads((Path(row["path"]) / "manifest.json").read_text())


def assert_same_rows(local: dict[str, Any], ray: dict[str, Any]) -> None:
    """Every row of `ray` equals the local executor's: raw per-layer scores, recipe, bits, quality."""
    assert [r["cell_id"] for r in ray["rows"]] == [r["cell_id"] for r in local["rows"]]  # same cells, plan order
    assert ray["plan"]["cell_ids"] == local["plan"]["cell_ids"]
    for a, b in zip(local["rows"], ray["rows"], strict=True):
        assert a["status"] == b["status"] == "ok", (b["key"], b.get("error"))
        assert b["engine"] == a["engine"]
        ma, mb = _manifest(a), _manifest(b)
        la, lb = {g["name"]: g for g in ma["layers"]}, {g["name"]: g for g in mb["layers"]}
        assert set(la) == set(lb) and la
        for name, g in la.items():
            assert lb[name]["chosen"] == g["chosen"], (a["key"], name)
            assert lb[name]["raw_scores"] == pytest.approx(g["raw_scores"], rel=1e-6, abs=0), (a["key"], name)
        assert b["achieved_bits"] == a["achieved_bits"]
        assert b["total_score"] == pytest.approx(a["total_score"], rel=1e-6)
        for k in ("kl_mean", "ppl_quant", "ppl_ratio", "top1_agreement"):
            assert b["quality"][k] == pytest.approx(a["quality"][k], rel=1e-6, abs=1e-12), (a["key"], k)
        assert json.loads((Path(b["path"]) / "recipe.json").read_text()) == json.loads(
            (Path(a["path"]) / "recipe.json").read_text()
        )


@pytest.fixture(scope="module")
def shared_pair(tmp_path_factory):
    """The shared engine, local vs Ray (artifacts written by the workers: they share this filesystem)."""
    folder = tmp_path_factory.mktemp("ray-shared")
    path = write_matrix(folder, _tiny("rayshared"))
    # one torch thread, as each of the two Ray workers on a 2-CPU machine has: the thread count changes the order of
    # float reductions, and the canary's fingerprints are compared bit for bit
    local = run_sweep(path, RunOptions(output_root=str(folder / "local"), engine="shared", threads=1))
    ray = run_sweep(path, _ray_options(folder / "ray", "shared", threads=1))
    return path, folder, local, ray


def test_ray_rows_equal_local_rows_shared_engine(shared_pair):
    _path, _folder, local, ray = shared_pair
    assert local.exit_code == ray.exit_code == ExitCode.OK
    assert len(ray.summary["rows"]) == 8
    assert_same_rows(local.summary, ray.summary)
    rc, lc = ray.summary["canary"], local.summary["canary"]
    assert rc["passed"] is lc["passed"] is True and rc["cell_id"] == lc["cell_id"]
    assert rc["determinism"]["identical_recipe"] and rc["determinism"]["deterministic"]
    assert [r["fingerprint"] for r in rc["runs"]] == [r["fingerprint"] for r in lc["runs"]]
    assert [r["from_canary"] for r in ray.summary["rows"]].count(True) == 1
    assert ray.summary["baseline"] == local.summary["baseline"]


def test_ray_execution_is_recorded_and_the_data_free_call_was_split(shared_pair):
    _path, _folder, local, ray = shared_pair
    ex = ray.summary["execution"]
    assert local.summary["execution"]["executor"] == "local"
    assert ex["executor"] == "ray" and ex["ray_address"] == "local" and ex["gpus_per_worker"] == 0
    workers = ex["workers"]
    assert len(workers) == 2 and all(w["shared_fs"] for w in workers)
    assert len({w["pid"] for w in workers}) == 2
    # 7 cells after the canary, all in one data-free call of 4 formats: split by formats over the two workers
    assert ex["work_units"] == 2 and ex["units_split"] == 1
    assert sum(w["cells"] for w in workers) == 7 and [w["units"] for w in workers] == [1, 1]
    assert ex["retries"] == 0 and ex["lost_cells"] == 0
    formats = [r["telemetry"]["shared"]["formats"] for r in ray.summary["rows"] if not r["from_canary"]]
    assert sorted(set(formats)) == [2] and len(formats) == 7  # each half scored 2 of the 4 formats
    assert not (Path(ray.summary_path).parent / ".fs-probe").exists()  # the probe is cleaned up


@pytest.mark.parametrize("engine,units,split", [("naive", 12, 0), ("shared", 2, 1)])
def test_ray_rows_equal_local_rows_with_calibrated_formats_and_artifacts_sent_to_the_driver(tmp_path, engine, units,
                                                                                           split):
    """FP8 W8A8 (static activation scales: one calibration pass for both sizes) and two budgets, both engines."""
    data = _matrix(f"ray{engine}")
    data["canary"]["enabled"] = False
    data["execution"] = {"artifacts": "driver"}  # as on a cluster without a shared filesystem
    path = write_matrix(tmp_path, data)
    local = run_sweep(path, RunOptions(output_root=str(tmp_path / "local"), engine=engine))
    ray = run_sweep(path, _ray_options(tmp_path / "ray", engine))
    assert local.exit_code == ray.exit_code == ExitCode.OK
    assert_same_rows(local.summary, ray.summary)
    ex = ray.summary["execution"]
    # shared: one call (FP8 calibrated once for both sizes, the weight-only formats beside it), split by formats
    # over the two workers; each half is planned again by its worker, so the rows are still the local ones
    assert ex["artifacts"] == "driver" and ex["work_units"] == units and ex["units_split"] == split
    assert sum(w["cells"] for w in ex["workers"]) == 12
    # every unit ran once; which worker took it depends on when the second one finished starting (no canary here to
    # give it time), so the split over workers is asserted where the canary runs first (the test above)
    assert sum(w["units"] for w in ex["workers"]) == units


class KillFirstWorkerOnAssignment(Reporter):
    """Kills (SIGKILL) the first worker the moment it is handed its first work unit: a worker process dying
    mid-work, as when the OOM killer takes it."""

    def __init__(self) -> None:
        self.pids: dict[str, int] = {}
        self.killed: str | None = None

    def worker_started(self, name: str, info: dict[str, Any]) -> None:
        self.pids[name] = info["pid"]

    def worker_status(self, name: str, text: str) -> None:
        if self.killed is None and "cells" in text and name in self.pids:
            self.killed = name
            os.kill(self.pids[name], signal.SIGKILL)


def test_a_worker_killed_mid_run_loses_and_duplicates_nothing(shared_pair):
    path, folder, local, _ray = shared_pair
    reporter = KillFirstWorkerOnAssignment()
    outcome = run_sweep(path, _ray_options(folder / "killed", "shared"), reporter)
    assert reporter.killed is not None
    assert outcome.exit_code == ExitCode.OK
    rows = load_rows(Path(outcome.summary_path).parent / "rows.jsonl")
    ids = [r["cell_id"] for r in rows]
    assert len(ids) == len(set(ids)) == 8  # nothing lost, nothing twice
    ex = outcome.summary["execution"]
    assert ex["retries"] == 1 and ex["lost_cells"] == 0
    dead = [w for w in ex["workers"] if w["state"] == "dead"]
    assert [w["name"] for w in dead] == [reporter.killed] and "Actor" in dead[0]["error"]
    assert len(ex["workers"]) == 3  # a replacement was started in its place
    assert_same_rows(local.summary, outcome.summary)  # the retried unit gives the same results


def test_resume_after_the_driver_is_killed(tmp_path):
    data = _tiny("raydriver")
    data["canary"]["enabled"] = False
    path = write_matrix(tmp_path, data)
    root = tmp_path / "runs"
    rows_file = root / "raydriver" / "rows.jsonl"
    args = ["run", "--matrix", str(path), "--output-root", str(root), "--executor", "ray", "--workers", "2"]
    # the driver only: its local Ray instance and workers are left to fend for themselves
    proc = kill_run_after_rows(args, tmp_path, rows_file)
    first = load_rows(rows_file)
    assert 2 <= len(first) < 8
    try:
        res = cli(*args, "--json", cwd=tmp_path)
    finally:
        try:  # whatever the killed driver's Ray instance left behind
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    assert_resumed(res, rows_file, first, 8)


def test_ray_executor_without_the_extra_is_a_clear_input_error(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` raises ImportError, as when it is not installed
    path = write_matrix(tmp_path, _matrix("noray"))
    with pytest.raises(InputError, match=r"quantsweep\[ray\]"):
        run_sweep(path, _ray_options(tmp_path / "runs", "shared"))


def test_asking_for_more_gpus_than_the_cluster_has_exits_2(tmp_path):
    path = write_matrix(tmp_path, _matrix("toomany"))
    res = cli("run", "--matrix", str(path), "--output-root", str(tmp_path / "runs"), "--executor", "ray",
              "--gpus-per-worker", "1", cwd=tmp_path)
    assert res.returncode == 2, res.stderr[-2000:]
    assert "execution.gpus_per_worker" in res.stderr and "has 0 GPUs" in res.stderr
    assert not (tmp_path / "runs" / "toomany" / "rows.jsonl").exists()


def test_a_model_the_workers_cannot_load_is_the_same_one_line_input_error(tmp_path):
    data = _tiny("badmodel")
    data["model"] = {"source": "hf", "path": str(tmp_path / "no-such-model")}
    path = write_matrix(tmp_path, data)
    res = cli("run", "--matrix", str(path), "--output-root", str(tmp_path / "runs"), "--executor", "ray",
              "--workers", "2", cwd=tmp_path)
    assert res.returncode == 2, res.stderr[-2000:]
    assert "model.path" in res.stderr and "is not a Hugging Face model folder" in res.stderr
    assert "Traceback" not in res.stderr and "RayTaskError" not in res.stderr
