"""`quantsweep weights` on the embedded SmolLM2-135M (its cached Hugging Face folder): one row per linear weight.

SmolLM2 ties its lm_head to the input embedding, so the checkpoint holds no lm_head tensor: the embedding is one
statistics row (role `embedding`, noted as tied) and gets no quantization rows (ModelOpt's configs leave
embeddings and lm_head unquantized).
"""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
from weights_helpers import exact_stats, read_csv

from quantsweep.weights import writer
from quantsweep.weights.command import WeightsOptions, run_weights

PROJS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
FORMATS = ["wint8_afp16/default", "wint4_afp16/w_group64"]


@pytest.fixture(scope="module")
def smol(tmp_path_factory):
    out = tmp_path_factory.mktemp("smol") / "out"
    mp = pytest.MonkeyPatch()
    mp.setattr(writer, "import_pyarrow", lambda: None)
    try:
        res = run_weights(WeightsOptions(model="embedded", formats=FORMATS, out=out, threads=1))
    finally:
        mp.undo()
    return out, res


def test_one_stats_row_per_linear_weight_and_the_tied_embedding(smol):
    out, res = smol
    stats = read_csv(out / "matrix_stats.csv")
    linear = [r for r in stats if r["role"] == "linear"]
    assert len(linear) == 30 * 7 == 210
    assert Counter((int(r["layer"]), r["proj"]) for r in linear) == Counter(
        (layer, p) for layer in range(30) for p in PROJS
    )
    (emb,) = [r for r in stats if r["role"] != "linear"]
    assert (emb["tensor"], emb["role"], emb["rows"], emb["cols"]) == (
        "model.embed_tokens.weight",
        "embedding",
        "49152",
        "576",
    )
    assert "tied" in emb["note"]
    assert len(stats) == 211 and res.doc["rows"]["unmatched_tensors"] == 0
    inv = read_csv(out / "tensor_inventory.csv")
    assert len(inv) == 272 and Counter(r["status"] for r in inv) == {"matrix": 211, "not_matrix": 61}
    shapes = {r["proj"]: (r["rows"], r["cols"]) for r in linear if r["layer"] == "0"}
    assert shapes["k_proj"] == ("192", "576") and shapes["down_proj"] == ("576", "1536")


def test_one_error_row_per_weight_and_format(smol):
    out, res = smol
    q = read_csv(out / "quant_error.csv")
    assert len(q) == 210 * len(FORMATS) and res.doc["error_rows"] == 0
    assert Counter((r["matrix"], r["format"]) for r in q).most_common(1)[0][1] == 1
    by = {(r["matrix"], r["format"]): float(r["rel_fro"]) for r in q}
    for m in {r["matrix"] for r in q}:
        assert 0 < by[(m, FORMATS[0])] < by[(m, FORMATS[1])] < 0.5
    assert res.doc["rows"]["quant_summary"] == len(FORMATS) * (30 * 8 + 8 * 8 + 8)  # layers, blocks of 4, global
    assert len(res.hostile) == 10


def test_statistics_equal_numpy_on_the_whole_matrix(smol):
    from safetensors import safe_open

    from quantsweep.engine.models import embedded_model_folder

    out, _ = smol
    stats = {r["tensor"]: r for r in read_csv(out / "matrix_stats.csv")}
    with safe_open(str(embedded_model_folder() / "model.safetensors"), framework="numpy") as st:
        for name in ("model.layers.0.self_attn.q_proj.weight", "model.layers.29.mlp.down_proj.weight"):
            ref = exact_stats(st.get_tensor(name))
            for k, v in ref.items():
                assert float(stats[name][k]) == pytest.approx(v, rel=1e-9), (name, k)
    assert np.isfinite(float(stats["model.embed_tokens.weight"]["p999_abs"]))
