"""The baseline's outputs cached across sweeps (engine/baseline_cache.py): a second sweep reads them instead of
computing them and gets the same quality numbers to the last digit; a damaged file is ignored and rewritten; the
opt-out neither reads nor writes. The tiny model, one cell per sweep."""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path

import pytest
from pipeline_helpers import TINY_MATRIX, write_matrix

os.environ.setdefault("TQDM_DISABLE", "1")


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    """An empty baseline cache; the converted models (the tiny model's tokenizer) come from the real cache."""
    from quantsweep.engine.models import cache_dir

    real = cache_dir()
    root = tmp_path / "cache"
    root.mkdir()
    (root / "models").symlink_to(real / "models", target_is_directory=True)
    monkeypatch.setenv("QUANTSWEEP_CACHE_DIR", str(root))
    return root / "baselines"


def _matrix(folder: Path) -> Path:
    data = copy.deepcopy(TINY_MATRIX)
    data["name"] = "bcache"
    data["canary"]["enabled"] = False
    data["dataset"]["sizes"] = {"a": 4}
    data["axes"] = {"quant_pairs": ["wint4_afp16"], "granularities": ["default"], "dataset_sizes": ["a"]}
    data["evaluation"] = {"stability": {"resamples": 0}}
    return write_matrix(folder, data)


def _sweep(path: Path, root: Path, **kw) -> tuple[dict, dict]:
    from quantsweep.execution.sweep import RunOptions, run_sweep

    out = run_sweep(path, RunOptions(output_root=str(root), **kw))
    assert out.exit_code == 0
    s = json.loads(out.summary_path.read_text())
    [row] = s["rows"]
    return s["setup"]["baseline_cache"], {"quality": row["quality"], "baseline": s["baseline"]}


def test_a_second_sweep_reads_the_baseline_and_measures_exactly_the_same(tmp_path, cache):
    path = _matrix(tmp_path)
    first, measured = _sweep(path, tmp_path / "o1")
    [stored] = list(cache.glob("*.pt"))
    # 4 held-out samples x 31 predicted tokens x the 49,152-word vocabulary, float32, plus NLL and argmax
    assert first == {"enabled": True, "hit": False, "reason": "absent", "file": str(stored),
                     "bytes": stored.stat().st_size}
    assert 4 * 31 * 49152 * 4 < stored.stat().st_size < 4 * 31 * 49152 * 4 * 1.01
    second, again = _sweep(path, tmp_path / "o2")
    assert second["hit"] is True and second["file"] == str(stored)
    assert again == measured  # every quality number (and per-sequence mean) to the last digit
    assert measured["quality"]["kl_mean"] > 0 and measured["quality"]["kl_method"] == "exact"

    import torch

    original = torch.load(stored, weights_only=True)
    size = stored.stat().st_size
    stored.write_bytes(stored.read_bytes()[: size // 2])  # a torn file (a crash, a full disk)
    third, after_damage = _sweep(path, tmp_path / "o3")
    assert third["hit"] is False and third["reason"].startswith("unreadable (")
    assert after_damage == measured and stored.stat().st_size == size  # recomputed and rewritten whole
    rewritten = torch.load(stored, weights_only=True)
    assert rewritten["key"] == original["key"] and torch.equal(rewritten["nll"], original["nll"])
    assert all(torch.equal(a, b) for a, b in zip(rewritten["full"], original["full"], strict=True))

    off, without = _sweep(path, tmp_path / "o5", baseline_cache=False)
    assert off == {"enabled": False, "hit": False, "reason": "--no-baseline-cache", "file": None, "bytes": None}
    assert without == measured


def test_a_cache_file_of_another_key_or_shape_is_never_used(tmp_path):
    import torch

    from quantsweep.engine.baseline_cache import _load

    batches = [{"input_ids": torch.zeros(2, 5, dtype=torch.long)}]
    path = tmp_path / "x.pt"
    key = {"format": 1}
    torch.save({"key": json.dumps({"format": 2})}, path)
    assert _load(path, key, batches) == (None, "written for another key")
    good = {"key": json.dumps(key), "full": [torch.zeros(2, 4, 7)], "topk_logp": None, "topk_idx": None,
            "nll": torch.zeros(8), "argmax": [torch.zeros(2, 4, dtype=torch.long)], "method": "exact"}
    torch.save(good, path)
    out, reason = _load(path, key, batches)
    assert reason == "hit" and out.full[0].shape == (2, 4, 7)
    torch.save({**good, "nll": torch.zeros(6)}, path)  # the right key, tensors of another sample count
    assert _load(path, key, batches) == (None, "unreadable (another number of predicted tokens)")
    path.write_bytes(b"not a torch file")
    assert _load(path, key, batches)[1] == "unreadable (UnpicklingError)"
