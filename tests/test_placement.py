"""Where the model lives: one model in memory (the master handed to the first call, later calls rebuilt
bit for bit), synthetic models built on the meta device and seeded per parameter, and accelerate device maps
(`model.device_map`), which must not change a single row."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
from pipeline_helpers import TINY_MATRIX, cli, write_matrix

from quantsweep.errors import ExitCode


def test_synthetic_model_is_the_same_rebuilt_or_placed_by_a_device_map():
    import torch

    from quantsweep.engine.models import load_model
    from quantsweep.schema import ModelSpec

    single = load_model(ModelSpec(source="synthetic", preset="llama-tiny"))
    mapped = load_model(ModelSpec(source="synthetic", preset="llama-tiny", device_map="auto"))
    master = single.model
    assert master.lm_head.weight is master.model.embed_tokens.weight  # the preset ties them, as before
    first, rebuilt, placed = single.take_model(), single.take_model(), mapped.take_model()
    assert first is master and single.model is None  # the master itself, handed over once
    assert rebuilt is not first and single.model is None  # the second take was rebuilt, not the master again
    assert first.lm_head.weight is not first.model.embed_tokens.weight  # untied for AutoQuantize
    ref = first.state_dict()
    for other in (rebuilt, placed):
        sd = other.state_dict()
        assert list(sd) == list(ref)
        for name, t in ref.items():
            assert torch.equal(sd[name], t), name
    emb = ref["model.embed_tokens.weight"]
    assert 0.015 < float(emb.std()) < 0.025  # normal(0, initializer_range=0.02)
    assert torch.equal(ref["model.norm.weight"], torch.ones_like(ref["model.norm.weight"]))
    assert mapped.info["placement"]["device_map"] == "auto" and mapped.info["placement"]["devices"] == ["cpu"]
    seeded = load_model(ModelSpec(source="synthetic", preset="llama-tiny", seed=1)).model
    assert not torch.equal(seeded.model.embed_tokens.weight, emb)


@pytest.fixture(scope="module")
def sharded_folder(tmp_path_factory) -> Path:
    from quantsweep.engine.models import load_model
    from quantsweep.schema import ModelSpec

    folder = tmp_path_factory.mktemp("sharded")
    loaded = load_model(ModelSpec(source="synthetic", preset="llama-tiny", device="cpu", dtype="float32"))
    loaded.model.save_pretrained(folder, max_shard_size="4MB")
    loaded.tokenizer.save_pretrained(folder)
    return folder


def _run(tmp_path: Path, folder: Path, name: str, **model) -> dict:
    data = copy.deepcopy(TINY_MATRIX)
    data["name"] = name
    data["model"] = {"source": "hf", "path": str(folder), **model}
    data["axes"] = {"quant_pairs": ["wint4_afp16"], "granularities": ["default", "w_group64"], "dataset_sizes": ["a"]}
    path = write_matrix(tmp_path, data, f"{name}.yaml")
    res = cli("run", "--matrix", str(path), "--output-root", str(tmp_path / "runs"), "--json", cwd=tmp_path)
    assert res.returncode == ExitCode.OK, res.stderr[-2000:]
    return json.loads((tmp_path / "runs" / name / "sweep-summary.json").read_text())


def test_sharded_folder_with_device_map_auto_gives_the_same_rows(tmp_path, sharded_folder):
    assert len(list(sharded_folder.glob("*.safetensors"))) >= 2  # really sharded
    plain = _run(tmp_path, sharded_folder, "plain")
    mapped = _run(tmp_path, sharded_folder, "mapped", device_map="auto", max_memory={"cpu": "8GiB"})
    assert plain["model"]["placement"]["device_map"] == "none"
    assert mapped["model"]["placement"] == {
        "device_map": "auto", "devices": ["cpu"], "max_memory": {"cpu": "8GiB"},
        "modules_per_device": {"cpu": 1}, "offloaded_to_cpu": False,
    }
    # the canary's second run gets a model rebuilt from the shards: the same scores to the last bit
    for s in (plain, mapped):
        assert s["canary"]["passed"] and s["canary"]["determinism"]["max_rel_score_diff"] == 0.0
    a = {r["cell_id"]: r for r in plain["rows"]}
    b = {r["cell_id"]: r for r in mapped["rows"]}
    assert set(a) == set(b) and len(a) == 2  # placement is not part of a cell's identity
    for cid, x in a.items():
        y = b[cid]
        assert x["status"] == y["status"] == "ok"
        assert (x["total_score"], x["achieved_bits"]) == (y["total_score"], y["achieved_bits"])
        assert x["quality"]["kl_mean"] == y["quality"]["kl_mean"]
        assert x["quality"]["per_sequence"] == y["quality"]["per_sequence"]
        assert "model" in y["telemetry"]["phases"] and y["telemetry"]["peak_host_rss_mb"] > 0


@pytest.mark.parametrize(
    ("model", "message"),
    [
        ({"max_memory": {"0": "10GiB"}}, "model: `max_memory` needs `device_map` auto, balanced or sequential"),
        ({"device_map": "auto", "max_memory": {"0": "lots"}}, "model.max_memory.0: "),
        ({"device_map": "everywhere"}, "model.device_map: "),
        ({"device": "cpu", "device_map": "auto", "max_memory": {"1": "1GB"}}, "names GPUs but `device` is 'cpu'"),
    ],
)
def test_bad_placement_is_a_one_line_error_naming_the_field(tmp_path, model, message):
    data = copy.deepcopy(TINY_MATRIX)
    data["model"].update(model)
    path = write_matrix(tmp_path, data)
    res = cli("dry-run", "--matrix", str(path), cwd=tmp_path)
    assert res.returncode == ExitCode.INVALID_INPUT
    assert message in res.stderr and "Traceback" not in res.stderr
