"""Trust checks on the tiny model, through `run` (both engines): per-batch scores, recipe stability, layer fidelity."""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path

import pytest
from pipeline_helpers import TINY_MATRIX, write_matrix

from quantsweep.errors import ExitCode
from quantsweep.execution.sweep import RunOptions, run_sweep

os.environ.setdefault("TQDM_DISABLE", "1")


@pytest.fixture(scope="module")
def trust_runs(tmp_path_factory):
    folder = tmp_path_factory.mktemp("trust")
    data = copy.deepcopy(TINY_MATRIX)
    data["name"] = "trust"
    data["canary"]["enabled"] = False
    data["dataset"]["sizes"] = {"a": 8}
    data["autoquant"] = {"batch_size": 2, "effective_bits": [8.0]}  # 4 score batches
    data["axes"] = {"quant_pairs": ["wint4_afp16"], "granularities": ["default"], "dataset_sizes": ["a"]}
    data["evaluation"] = {"stability": {"resamples": 20, "seed": 3}, "layer_fidelity": {"k": 2, "seed": 1}}
    path = write_matrix(folder, data)
    naive = run_sweep(path, RunOptions(output_root=str(folder / "naive"), engine="naive"))
    shared = run_sweep(path, RunOptions(output_root=str(folder / "shared"), engine="shared"))
    return naive, shared


def _manifest(row):
    return json.loads((Path(row["path"]) / "manifest.json").read_text())


def test_both_engines_record_the_same_per_batch_scores_and_stability(trust_runs):
    naive, shared = trust_runs
    assert naive.exit_code == shared.exit_code == ExitCode.OK
    (n,), (s,) = naive.summary["rows"], shared.summary["rows"]
    assert n["status"] == s["status"] == "ok"
    n_layers, s_layers = _manifest(n)["layers"], _manifest(s)["layers"]
    assert len(n_layers) == len(s_layers) == 9  # 2 layers x (q/k/v, o, gate/up, down) + lm_head
    for g, h in zip(n_layers, s_layers, strict=True):
        assert g["name"] == h["name"] and len(g["batch_scores"]) == len(g["formats"])
        for per_batch, raw in zip(g["batch_scores"], g["raw_scores"], strict=True):
            assert len(per_batch) == 4  # one contribution per score batch
            assert sum(per_batch) == pytest.approx(raw, rel=1e-6, abs=1e-30)  # they add up to the raw score
        flat = [x for per_batch in g["batch_scores"] for x in per_batch]
        assert [x for per_batch in h["batch_scores"] for x in per_batch] == pytest.approx(flat, rel=1e-5, abs=1e-30)
    st_n, st_s = n["trust"]["stability"], s["trust"]["stability"]
    assert st_n["computable"] is True and st_n["batches"] == 4 and st_n["resamples"] == 20 and st_n["seed"] == 3
    assert st_n["solved"] == 20 and st_n["groups"] == 9
    assert st_n["full_solve_flips"] == 0  # the full data re-solved gives the cell's own recipe
    assert 0 <= st_n["flip_share"] <= 1 and 0 <= st_n["jaccard_min"] <= st_n["jaccard_mean"] <= 1
    assert st_n["stable"] is (st_n["flip_share"] <= 0.05)
    assert st_n["total_score"] == pytest.approx(n["total_score"], rel=1e-6)
    for key in ("flip_share", "jaccard_mean", "groups_ever_flipped", "stable"):
        assert st_s[key] == st_n[key], key  # the same bootstrap on the same scores
    kpi = naive.summary["stability_kpis"]["recipe_stability_rate"]
    assert kpi == {"value": float(st_n["stable"]), "numerator": int(st_n["stable"]), "denominator": 1}


def _textbook_spearman(x, y):
    """1 - 6 sum d^2 / (n (n^2 - 1)): exact when neither side has ties."""
    rx = {v: i + 1 for i, v in enumerate(sorted(x))}
    ry = {v: i + 1 for i, v in enumerate(sorted(y))}
    n = len(x)
    return 1 - 6 * sum((rx[a] - ry[b]) ** 2 for a, b in zip(x, y, strict=True)) / (n * (n * n - 1))


def test_layer_fidelity_measures_top_k_and_k_random_groups(trust_runs):
    naive, shared = trust_runs
    (n,), (s,) = naive.summary["rows"], shared.summary["rows"]
    lf = n["trust"]["layer_fidelity"]
    assert lf["k"] == 2 and lf["seed"] == 1 and lf["measured"] == lf["n"] == 4
    assert [g["picked"] for g in lf["groups"]] == ["top", "top", "random", "random"]
    proxy = {g["name"]: g["raw_scores"][g["formats"].index("wint4_afp16/default")] for g in _manifest(n)["layers"]}
    top2 = sorted(proxy, key=proxy.get, reverse=True)[:2]
    assert [g["name"] for g in lf["groups"][:2]] == top2
    assert len({g["name"] for g in lf["groups"]}) == 4  # the random ones are drawn from the others
    for g in lf["groups"]:
        assert g["proxy_score"] == pytest.approx(proxy[g["name"]], rel=1e-12)
        assert g["kl_mean"] > 0  # one group at W4: measurably different from the unquantized model
        assert g["kl_mean"] < n["quality"]["kl_mean"] * 10
    xs, ys = [g["proxy_score"] for g in lf["groups"]], [g["kl_mean"] for g in lf["groups"]]
    assert lf["computable"] is True and lf["rho"] == pytest.approx(_textbook_spearman(xs, ys), abs=1e-12)
    other = s["trust"]["layer_fidelity"]  # the shared engine measures the same groups the same way
    assert [g["name"] for g in other["groups"]] == [g["name"] for g in lf["groups"]]
    assert [g["kl_mean"] for g in other["groups"]] == pytest.approx(ys, rel=1e-3)
