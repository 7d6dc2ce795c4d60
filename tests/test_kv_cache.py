"""The KV-cache axis: expansion (ids, paths, keys; unchanged when absent), ModelOpt's KV configs, and KV-cache
cells run on the tiny model on the CPU (FP8 through ModelOpt, NVFP4 through the PyTorch backend), scoped to
their own cell in the shared engine."""

from __future__ import annotations

import json
import typing
from pathlib import Path

import pytest
from pipeline_helpers import TINY_MATRIX, cli, load_rows, write_matrix

from quantsweep.engine.kv_cache import KV_CONFIGS
from quantsweep.errors import MatrixError
from quantsweep.kpis import group_key
from quantsweep.matrix_io import parse_matrix
from quantsweep.planning import expand
from quantsweep.schema import KvCacheName


def test_axis_expands_and_is_invisible_when_absent():
    plain = expand(parse_matrix(TINY_MATRIX, "m"))
    default = expand(parse_matrix({**TINY_MATRIX, "axes": {**TINY_MATRIX["axes"], "kv_cache": ["none"]}}, "m"))
    assert [(c.id, str(c.path), c.key) for c in plain.cells] == [(c.id, str(c.path), c.key) for c in default.cells]
    assert "kv_cache" not in plain.cells[0].summary()
    kv = expand(parse_matrix({**TINY_MATRIX, "axes": {**TINY_MATRIX["axes"], "kv_cache": ["none", "fp8"]}}, "m"))
    assert len(kv.cells) == 2 * len(plain.cells) == 16
    first, second = kv.cells[0], kv.cells[1]
    assert (first.key, second.key) == ("wint8_afp16/default/a/kv-none", "wint8_afp16/default/a/kv-fp8")
    assert str(second.path) == "runs/tiny/wint8_afp16/default/a/kv-fp8"
    assert second.summary()["kv_cache"] == "fp8"
    assert first.search_hash == second.search_hash  # one search, two evaluations: never DUPLICATE_RESULT
    assert first.config_hash != second.config_hash and first.id != second.id
    assert not {c.id for c in plain.cells} & {c.id for c in kv.cells}
    with pytest.raises(MatrixError, match=r"axes.kv_cache: duplicate KV-cache setting in \['fp8', 'fp8'\]"):
        parse_matrix({**TINY_MATRIX, "axes": {**TINY_MATRIX["axes"], "kv_cache": ["fp8", "fp8"]}}, "m")
    with pytest.raises(MatrixError, match=r"axes.kv_cache\[0\]: Input should be 'none', 'fp8'"):
        parse_matrix({**TINY_MATRIX, "axes": {**TINY_MATRIX["axes"], "kv_cache": ["int3"]}}, "m")


def test_kv_names_are_modelopt_configs():
    from modelopt.torch.quantization import config as mtq_config

    assert set(typing.get_args(KvCacheName)) == {"none", *KV_CONFIGS}
    for attr in KV_CONFIGS.values():
        entries = getattr(mtq_config, attr)["quant_cfg"]
        assert {e["quantizer_name"] for e in entries} == {"*[kv]_bmm_quantizer"}  # only the KV cache
    assert group_key({"model": "m", "dataset_size": "a", "granularity": "default"}) == "m|a|default"
    assert group_key({"model": "m", "dataset_size": "a", "granularity": "default", "kv_cache": "fp8"}) == \
        "m|a|default|kv-fp8"


KV = {**TINY_MATRIX, "name": "kv", "canary": {"enabled": False},
      "axes": {"quant_pairs": ["wint8_afp16"], "granularities": ["default"], "dataset_sizes": ["a"],
               "kv_cache": ["fp8", "nvfp4", "none"]},  # none last: evaluated on the model the KV cells used
      "evaluation": {"seq_lens": [64, 128], "samples_per_length": 2}}


def _run(tmp_path: Path, engine: str) -> list[dict]:
    m = write_matrix(tmp_path / engine, {**KV, "output_root": str(tmp_path / engine / "runs")})
    res = cli("run", "--matrix", str(m), "--engine", engine, "--json", cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    return {r["kv_cache"]: r for r in load_rows(tmp_path / engine / "runs" / "kv" / "rows.jsonl")}


def test_kv_cache_cells_run_on_the_tiny_model(tmp_path):
    shared, naive = _run(tmp_path, "shared"), _run(tmp_path, "naive")
    for rows in (shared, naive):
        assert set(rows) == {"none", "fp8", "nvfp4"}
        assert all(r["status"] == "ok" and r["reasons"] == [] for r in rows.values())
        assert len({r["result_fingerprint"] for r in rows.values()}) == 1  # the same search and recipe
        kl = {k: r["quality"]["kl_mean"] for k, r in rows.items()}
        assert kl["none"] < kl["fp8"] < kl["nvfp4"]  # a quantized cache costs quality, 4 bits more than 8
        for k, r in rows.items():
            assert r["long_context"]["kv_cache"] == k
            by = [m["kl_mean"] for m in r["long_context"]["by_length"]]
            assert len(by) == 2
            if k != "none":
                assert all(x > y for x, y in zip(by, [m["kl_mean"] for m in rows["none"]["long_context"]["by_length"]],
                                                  strict=True))
    # the shared engine evaluated `none` after the KV cells on the same model: the KV quantizers were switched off
    assert shared["none"]["quality"]["kl_mean"] == pytest.approx(naive["none"]["quality"]["kl_mean"], rel=1e-9)
    assert shared["fp8"]["quality"]["kl_mean"] == pytest.approx(naive["fp8"]["quality"]["kl_mean"], rel=1e-6)
    manifest = json.loads((tmp_path / "shared" / "runs" / "kv" / "wint8_afp16" / "default" / "a" / "kv-fp8"
                           / "manifest.json").read_text())
    kv = manifest["quantization"]["kv_cache"]
    assert (kv["modelopt_config"], kv["quantizers"], kv["fake_quant_backend"]) == ("FP8_KV_CFG", 4, "modelopt")
    summary = tmp_path / "shared" / "runs" / "kv" / "sweep-summary.json"
    res = cli("frontier", "--summary", str(summary), "--out", str(tmp_path / "f.json"), "--json", cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-2000:]
    groups = json.loads((tmp_path / "f.json").read_text())["groups"]
    assert sorted(g["kv_cache"] for g in groups) == ["fp8", "none", "nvfp4"]


def test_compare_tells_kv_variants_apart(tmp_path):
    from report_helpers import row, summary, write

    from quantsweep.reports.compare import CompareGate, compare

    def rows(kl_fp8):
        none = row("wint8_afp16", "default", "small", kl=0.01)
        fp8 = row("wint8_afp16", "default", "small", kl=kl_fp8)
        fp8.update(key="wint8_afp16/default/small/kv-fp8", cell_id="ckvfp8", kv_cache="fp8",
                   result_fingerprint=none["result_fingerprint"], search_hash="s", config_hash="hfp8")
        none.update(kv_cache="none", search_hash="s")
        return [none, fp8]

    a = write(tmp_path / "a.json", summary(rows(0.02)))
    b = write(tmp_path / "b.json", summary(rows(0.03)))
    doc = compare(a, b, CompareGate())
    assert [e["cell"] for e in doc["matched"]] == ["wint8_afp16/default/small@8",
                                                   "wint8_afp16/default/small/kv-fp8@8"]
    assert doc["only_in_a"] == doc["only_in_b"] == []
