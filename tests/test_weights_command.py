"""`quantsweep weights` end to end on tiny safetensors folders: tables, row counts, strictness, errors, Parquet."""

from __future__ import annotations

import json
import math
import re
import sys
from pathlib import Path

import numpy as np
import pytest
from weights_helpers import (
    DENSE_LAYERS,
    DENSE_PROJS,
    SEED_BANK,
    exact_stats,
    header,
    read_csv,
    write_dense,
    write_moe,
)

from quantsweep.errors import InputError
from quantsweep.weights import writer
from quantsweep.weights.command import (
    INVENTORY_COLUMNS,
    QUANT_COLUMNS,
    STATS_COLUMNS,
    WeightsOptions,
    run_weights,
)
from quantsweep.weights.tables import AGGREGATES, QUANT_METRICS, WEIGHT_METRICS, delta_rows, quant_summary

TABLES = (
    "tensor_inventory",
    "matrix_stats",
    "quant_error",
    "quant_deltas",
    "weight_summary",
    "quant_summary",
    "delta_summary",
    "unmatched_tensors",
    "warnings",
)
TWO = ["wint8_afp16/default", "wint4_afp16/w_group64"]


@pytest.fixture
def no_pyarrow(monkeypatch):
    """Behave as if pyarrow were not installed, whether or not it is."""
    monkeypatch.setattr(writer, "import_pyarrow", lambda: None)


def run(model: Path | str, out: Path, **kw):
    return run_weights(WeightsOptions(model=str(model), out=out, **kw))


# --- dense ----------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def dense_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("dense")
    model = write_dense(tmp / "model")
    mp = pytest.MonkeyPatch()
    mp.setattr(writer, "import_pyarrow", lambda: None)
    try:
        # ModelOpt's own NVFP4 kernel on a CPU: every wfp4 row is an error row (the failure path, deterministic)
        res = run(model, tmp / "out", formats=[*TWO, "wfp4_afp16/default"], top=3, fake_quant_backend="modelopt")
    finally:
        mp.undo()
    return model, tmp / "out", res


def test_dense_row_counts_per_table(dense_run):
    _, out, res = dense_run
    linear = DENSE_LAYERS * len(DENSE_PROJS)  # 14
    expected = {
        "tensor_inventory": 14 + 1 + 2 + 1 + 1 + 1,  # linear, embed, 2 input norms, final norm, weird, int
        "matrix_stats": linear + 1,  # + the (tied) embedding
        "quant_error": linear * 3,  # every linear weight x 3 formats, error rows included
        "quant_deltas": 0,  # the three formats share no quant pair: no default delta
        "unmatched_tensors": 1,
    }
    rows = {t: read_csv(out / f"{t}.csv") for t in TABLES}
    for table, n in expected.items():
        assert len(rows[table]) == n, table
        assert res.doc["rows"][table] == n
    # summaries: layer scope 2 layers x (7 projs + *), block4 1 x 8, global 8; quant the same per format
    assert len(rows["weight_summary"]) == 2 * 8 + 8 + 8
    assert len(rows["quant_summary"]) == 3 * (2 * 8 + 8 + 8)
    assert len(rows["delta_summary"]) == 0
    assert header(out / "matrix_stats.csv") == list(STATS_COLUMNS)
    assert header(out / "quant_error.csv") == list(QUANT_COLUMNS)
    assert header(out / "tensor_inventory.csv") == list(INVENTORY_COLUMNS)
    assert header(out / "weight_summary.csv")[-1] == f"{WEIGHT_METRICS[-1]}__{AGGREGATES[-1]}"


def test_dense_one_stats_row_per_weight_and_exact_values(dense_run):
    model, out, _ = dense_run
    stats = read_csv(out / "matrix_stats.csv")
    lin = [r for r in stats if r["role"] == "linear"]
    assert sorted((int(r["layer"]), r["proj"]) for r in lin) == sorted(
        (layer, p) for layer in range(DENSE_LAYERS) for p in DENSE_PROJS
    )
    emb = [r for r in stats if r["role"] == "embedding"]
    assert len(emb) == 1 and "tied" in emb[0]["note"] and emb[0]["layer"] == ""
    from safetensors.torch import load_file

    tensors = load_file(str(model / "model.safetensors"))
    for r in lin + emb:
        ref = exact_stats(tensors[r["tensor"]].float().numpy())
        for k, v in ref.items():
            assert float(r[k]) == pytest.approx(v, rel=1e-12, abs=1e-15), (r["tensor"], k)
    bf16 = next(r for r in stats if r["tensor"] == "model.layers.1.mlp.down_proj.weight")
    assert bf16["dtype"] == "BF16" and (bf16["rows"], bf16["cols"]) == ("64", "128")


def test_dense_error_rows_keep_every_matrix_visible(dense_run):
    _, out, res = dense_run
    q = read_csv(out / "quant_error.csv")
    fp4 = [r for r in q if r["format"] == "wfp4_afp16/default"]
    assert len(fp4) == 14 and all("CUDA" in r["error"] and r["rel_fro"] == "" for r in fp4)
    assert all(r["error"].startswith("AssertionError: ") and r["fake_quant_backend"] == "modelopt" for r in fp4)
    ok = [r for r in q if r["format"] != "wfp4_afp16/default"]
    assert all(r["error"] == "" and 0 < float(r["rel_fro"]) < 1 for r in ok)
    assert res.doc["error_rows"] == 14
    assert any(w.startswith("wfp4_afp16/default: 14 of 14 matrices failed") for w in res.warnings)
    qs = read_csv(out / "quant_summary.csv")
    g = next(r for r in qs if r["scope"] == "global" and r["proj"] == "*" and r["format"] == "wfp4_afp16/default")
    assert (g["n"], g["n_errors"], g["rel_fro__count"]) == ("0", "14", "0")


def test_dense_unmatched_and_not_float_tensors_are_listed(dense_run):
    _, out, res = dense_run
    un = read_csv(out / "unmatched_tensors.csv")
    assert [(u["tensor"], u["reason"]) for u in un] == [
        ("model.layers.0.mlp.weird_proj.weight", "no naming rule matches the name")
    ]
    inv = {r["tensor"]: r for r in read_csv(out / "tensor_inventory.csv")}
    assert inv["model.position_ids"]["status"] == "not_float"
    assert inv["model.norm.weight"]["status"] == "not_matrix"
    assert inv["model.layers.0.mlp.weird_proj.weight"]["status"] == "unmatched"
    assert inv["model.layers.0.self_attn.k_proj.weight"]["status"] == "matrix"
    assert inv["model.layers.0.self_attn.k_proj.weight"]["bytes"] == str(32 * 64 * 4)
    assert any("match no naming rule" in w for w in res.warnings)
    assert "weird_proj" in (out / "summary.md").read_text()


def test_dense_summaries_are_the_aggregates_of_the_rows(dense_run):
    _, out, _ = dense_run
    stats = [r for r in read_csv(out / "matrix_stats.csv") if r["role"] == "linear"]
    ws = read_csv(out / "weight_summary.csv")
    layer0 = next(r for r in ws if r["scope"] == "layer" and r["layer"] == "0" and r["proj"] == "*")
    vals = np.array([float(r["max_abs"]) for r in stats if r["layer"] == "0"])
    assert int(layer0["n"]) == 7
    assert float(layer0["max_abs__median"]) == np.percentile(vals, 50)
    assert float(layer0["max_abs__p90"]) == pytest.approx(np.percentile(vals, 90), rel=1e-15)
    assert float(layer0["max_abs__max"]) == vals.max()
    glob = next(r for r in ws if r["scope"] == "global" and r["proj"] == "q_proj")
    assert glob["layer"] == "" and int(glob["n"]) == 2
    block = [r for r in ws if r["scope"] == "block4"]
    assert {r["block4"] for r in block} == {"0"}
    q = read_csv(out / "quant_error.csv")
    qs = read_csv(out / "quant_summary.csv")
    g = next(r for r in qs if r["scope"] == "global" and r["proj"] == "*" and r["format"] == TWO[1])
    vals = np.array([float(r["rel_fro"]) for r in q if r["format"] == TWO[1]])
    assert float(g["rel_fro__median"]) == np.percentile(vals, 50) and g["n_errors"] == "0"


def test_dense_summary_md_manifest_and_hostile_layers(dense_run):
    _, out, res = dense_run
    md = (out / "summary.md").read_text()
    assert "## Simulated weight quantization error" in md and "wint4_afp16/w_group64" in md
    assert "Most quantization-hostile layers" in md
    manifest = json.loads((out / "weights.json").read_text())
    assert manifest["rows"]["matrix_stats"] == 15 and manifest["parquet"] == "skipped: pyarrow is not installed"
    assert manifest["model"]["files"] == ["model.safetensors"] and manifest["model"]["model_type"] == "llama"
    assert [f["name"] for f in manifest["formats"]] == [*TWO, "wfp4_afp16/default"]
    assert len(res.hostile) == 2 and [h["rank"] for h in res.hostile] == [1, 2]
    assert res.hostile[0]["hostility"] >= res.hostile[1]["hostility"]
    assert not list(out.glob("*.parquet"))


def test_nvfp4_and_mx_use_the_pytorch_backend_on_a_cpu_by_default(tmp_path, no_pyarrow):
    model = write_dense(tmp_path / "model")
    res = run(model, tmp_path / "out", formats=["wfp4_afp16", "wmxfp4_amxfp4", "wint8_afp16"])
    q = read_csv(tmp_path / "out" / "quant_error.csv")
    assert res.doc["error_rows"] == 0 and len(q) == 3 * 14
    backends = {r["format"]: r["fake_quant_backend"] for r in q}
    assert backends == {
        "wfp4_afp16/default": "quantsweep_torch",
        "wmxfp4_amxfp4/default": "quantsweep_torch",
        "wint8_afp16/default": "modelopt",
    }
    med = {f: np.median([float(r["rel_fro"]) for r in q if r["format"] == f]) for f in backends}
    assert med["wint8_afp16/default"] < med["wfp4_afp16/default"] < 0.25 and 0 < med["wmxfp4_amxfp4/default"] < 0.3


# --- MoE ------------------------------------------------------------------------------------------------------
def test_moe_banks_splits_experts_and_shared_expert(tmp_path, no_pyarrow):
    model = write_moe(tmp_path / "moe")
    res = run(model, tmp_path / "out", formats=["wint8_afp16"])
    stats = read_csv(tmp_path / "out" / "matrix_stats.csv")
    by = {r["matrix"]: r for r in stats}
    gu = "model.layers.0.mlp.experts.gate_up_proj"
    assert [m for m in by if m.startswith(gu)] == [
        f"{gu}[0]::gate_proj",
        f"{gu}[0]::up_proj",
        f"{gu}[1]::gate_proj",
        f"{gu}[1]::up_proj",
    ]
    r = by[f"{gu}[1]::up_proj"]
    assert (r["proj"], r["expert"], r["expert_kind"], r["rows"], r["cols"], r["split"]) == (
        "up_proj",
        "1",
        "routed",
        "3",
        "4",
        "rows[3:6]",
    )
    # expert 1 rows 3..5 of arange(48).reshape(2, 6, 4) - 20: values 24 + 12 .. 24 + 23 - 20 = 16 .. 27
    assert float(r["mean"]) == pytest.approx(np.arange(16, 28).mean(), rel=1e-15)
    # the seed bank as a stacked down_proj: exact per-expert statistics
    for e in (0, 1):
        row = by[f"model.layers.0.mlp.experts.down_proj[{e}]"]
        ref = exact_stats(SEED_BANK[e])
        for k, v in ref.items():
            assert float(row[k]) == pytest.approx(v, rel=1e-12), (e, k)
        assert (row["expert"], row["proj"]) == (str(e), "down_proj")
    assert [float(by[f"model.layers.0.mlp.experts.down_proj[{e}]"]["p99_abs"]) for e in (0, 1)] == pytest.approx(
        [2.97, 3.94], abs=1e-12
    )
    per_expert = [r for r in stats if r["layer"] == "1" and r["expert_kind"] == "routed"]
    assert sorted((r["expert"], r["proj"]) for r in per_expert) == sorted(
        (str(e), p) for e in (0, 1) for p in ("gate_proj", "up_proj", "down_proj")
    )
    shared = [r for r in stats if r["expert_kind"] == "shared"]
    assert sorted(r["proj"] for r in shared) == ["down_proj", "gate_proj", "up_proj"] and all(
        r["expert"] == "" for r in shared
    )
    roles = {r["proj"]: r["role"] for r in stats if r["role"] != "linear"}
    assert roles == {"router": "router", "shared_expert_gate": "router", "embed_tokens": "embedding"}
    linear = [r for r in stats if r["role"] == "linear"]
    assert len(linear) == 4 + 2 + 6 + 3
    q = read_csv(tmp_path / "out" / "quant_error.csv")
    assert sorted(r["matrix"] for r in q) == sorted(r["matrix"] for r in linear)
    assert res.doc["model"]["files"] == ["model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"]
    assert not res.warnings
    # layer summaries aggregate experts: layer 0 gate_proj = 2 experts
    ws = read_csv(tmp_path / "out" / "weight_summary.csv")
    g0 = next(r for r in ws if r["scope"] == "layer" and r["layer"] == "0" and r["proj"] == "gate_proj")
    assert g0["n"] == "2"


def test_moe_strict_split_failure_is_an_input_error_naming_the_tensor(tmp_path, no_pyarrow):
    model = write_moe(tmp_path / "moe", bad_split=True)
    with pytest.raises(InputError) as exc:
        run(model, tmp_path / "out", formats=["none"])
    msg = str(exc.value)
    assert "model.layers.2.mlp.experts.gate_up_proj (shape [2, 5, 4], rule fused_gate_up" in msg
    assert "not divisible into 2 equal parts" in msg and "--no-strict" in msg
    assert not (tmp_path / "out").exists()  # nothing written before the check


def test_moe_non_strict_falls_back_unsplit_with_a_warning(tmp_path, no_pyarrow):
    model = write_moe(tmp_path / "moe", bad_split=True)
    res = run(model, tmp_path / "out", formats=["none"], strict=False)
    stats = read_csv(tmp_path / "out" / "matrix_stats.csv")
    fallback = [r for r in stats if r["layer"] == "2"]
    assert [(r["matrix"], r["proj"], r["rows"], r["cols"], r["split"]) for r in fallback] == [
        (f"model.layers.2.mlp.experts.gate_up_proj[{e}]", "gate_up_proj", "5", "4", "unsplit (split failed)")
        for e in (0, 1)
    ]
    warnings = read_csv(tmp_path / "out" / "warnings.csv")
    assert len(warnings) == 1 and warnings[0]["warning"].startswith("split failed, analysed unsplit as gate_up_proj")
    assert res.warnings == [warnings[0]["warning"]]
    assert read_csv(tmp_path / "out" / "quant_error.csv") == []  # --formats none: statistics only
    assert header(tmp_path / "out" / "quant_error.csv") == list(QUANT_COLUMNS)


SEED_RULES = """
rules:
  - name: packed
    pattern: 'packed_w$'
    proj: gate_proj
    split: {axis: rows, parts: [gate_proj, down_proj], sizes: [3, 3]}
"""


@pytest.mark.parametrize("shape,strict", [((2, 6, 4), True), ((2, 4, 4), True), ((2, 4, 4), False)])
def test_seed_packed_split_fixture(tmp_path, no_pyarrow, shape, strict):
    """seed-systems.md §2.15: (2,6,4) with sizes [3,3] splits; (2,4,4) fails strict, falls back non-strict."""
    import torch
    from safetensors.torch import save_file

    (tmp_path / "m").mkdir()
    save_file({"model.layers.0.mlp.packed_w": torch.randn(*shape)}, str(tmp_path / "m" / "model.safetensors"))
    (tmp_path / "rules.yaml").write_text(SEED_RULES)
    opts = dict(formats=["none"], rules=tmp_path / "rules.yaml", strict=strict)
    if shape == (2, 4, 4) and strict:
        with pytest.raises(InputError, match=r"sizes \[3, 3\] sum to 6 but rows has length 4"):
            run(tmp_path / "m", tmp_path / "out", **opts)
        return
    res = run(tmp_path / "m", tmp_path / "out", **opts)
    stats = read_csv(tmp_path / "out" / "matrix_stats.csv")
    if shape == (2, 6, 4):
        assert sorted({r["proj"] for r in stats}) == ["down_proj", "gate_proj"]
        assert len(stats) == 4 and all((r["rows"], r["cols"]) == ("3", "4") for r in stats)
        assert res.warnings == []
    else:
        assert [(r["proj"], r["rows"], r["cols"]) for r in stats] == [("gate_proj", "4", "4")] * 2
        assert len(res.warnings) == 1 and "sum to 6 but rows has length 4" in res.warnings[0]


def test_in_out_layout_is_transposed_and_interleaved_split(tmp_path, no_pyarrow):
    """GPT-OSS stores experts.gate_up_proj as (E, in, 2*out) with gate/up interleaved."""
    import torch
    from safetensors.torch import save_file

    (tmp_path / "m").mkdir()
    gu = torch.zeros(1, 4, 6)
    gu[0, :, 0::2] = 1.0  # gate columns
    gu[0, :, 1::2] = -2.0  # up columns
    save_file({"model.layers.0.mlp.experts.gate_up_proj": gu}, str(tmp_path / "m" / "model.safetensors"))
    (tmp_path / "m" / "config.json").write_text(json.dumps({"model_type": "gpt_oss"}))
    run(tmp_path / "m", tmp_path / "out", formats=["none"])
    stats = {r["proj"]: r for r in read_csv(tmp_path / "out" / "matrix_stats.csv")}
    assert (stats["gate_proj"]["rows"], stats["gate_proj"]["cols"]) == ("3", "4")  # (out, in) after transposing
    assert float(stats["gate_proj"]["mean"]) == 1.0 and float(stats["up_proj"]["mean"]) == -2.0
    assert stats["up_proj"]["split"] == "rows[1:6:2]" and "transposed" in stats["up_proj"]["note"]


# --- deltas ---------------------------------------------------------------------------------------------------
def test_deltas_seed_fixture_values():
    """seed §2.15: A 0.15/0.2 vs B 0.09/0.12 -> delta 0.06/0.08; the global median of A's rel_fro is 0.15."""
    ident = {
        "matrix": "m",
        "tensor": "m",
        "role": "linear",
        "proj": "gate_proj",
        "layer": 0,
        "block4": 0,
        "expert": 0,
        "expert_kind": "routed",
        "rows": 2,
        "cols": 2,
    }
    rows = [
        {**ident, "format": "a", "rel_fro": 0.15, "rel_max": 0.2, "sqnr_db": 1.0, "error": None},
        {**ident, "format": "b", "rel_fro": 0.09, "rel_max": 0.12, "sqnr_db": 2.0, "error": None},
    ]
    (d,) = delta_rows(rows, [("a", "b")])
    assert d["delta"] == "a - b"
    assert d["delta_rel_fro"] == pytest.approx(0.06) and d["delta_rel_max"] == pytest.approx(0.08)
    assert d["ratio_rel_fro"] == pytest.approx(0.15 / 0.09)
    glob = next(r for r in quant_summary(rows) if r["scope"] == "global" and r["proj"] == "*" and r["format"] == "a")
    assert glob["rel_fro__median"] == 0.15
    rows[1]["error"], rows[1]["rel_fro"] = "RuntimeError: boom", None
    (d,) = delta_rows(rows, [("a", "b")])
    assert d["delta_rel_fro"] is None and d["error"] == "B: RuntimeError: boom"


def test_default_and_explicit_deltas(tmp_path, no_pyarrow):
    model = write_dense(tmp_path / "model")
    res = run(model, tmp_path / "out")  # the default formats: wint4 default vs w_group64 share a pair
    assert [d["name"] for d in res.doc["deltas"]] == ["wint4_afp16/default - wint4_afp16/w_group64"]
    d = read_csv(tmp_path / "out" / "quant_deltas.csv")
    q = {(r["matrix"], r["format"]): float(r["rel_fro"]) for r in read_csv(tmp_path / "out" / "quant_error.csv")}
    assert len(d) == 14
    for r in d:
        a, b = q[(r["matrix"], "wint4_afp16/default")], q[(r["matrix"], "wint4_afp16/w_group64")]
        assert float(r["delta_rel_fro"]) == pytest.approx(a - b, rel=1e-12, abs=1e-15)
    ds = read_csv(tmp_path / "out" / "delta_summary.csv")
    assert len(ds) == 2 * 8 + 8 + 8
    res2 = run(model, tmp_path / "out2", formats=["wint8_afp16"], deltas=["wint8_afp16:wint4_afp16/w_group64"])
    assert [f["name"] for f in res2.doc["formats"]] == ["wint8_afp16/default", "wint4_afp16/w_group64"]
    assert any("added because --delta" in w for w in res2.warnings)
    d2 = read_csv(tmp_path / "out2" / "quant_deltas.csv")
    assert len(d2) == 14 and all(float(r["delta_rel_fro"]) < 0 for r in d2)  # int8 beats int4 everywhere


# --- Parquet --------------------------------------------------------------------------------------------------
def test_parquet_written_when_pyarrow_importable(tmp_path, monkeypatch):
    """Without pyarrow, a stand-in records what would be written; with it, the real files are checked below."""
    written: dict[str, int] = {}

    class FakePa:
        @staticmethod
        def array(values):
            return list(values)

        @staticmethod
        def table(data):
            return data

    class FakePq:
        @staticmethod
        def write_table(table, path):
            written[Path(path).name] = len(next(iter(table.values()))) if table else 0
            Path(path).write_bytes(b"PAR1")

    monkeypatch.setattr(writer, "import_pyarrow", lambda: (FakePa, FakePq))
    model = write_dense(tmp_path / "model")
    res = run(model, tmp_path / "out", formats=["wint8_afp16"])
    assert res.doc["parquet"] == "written"
    assert sorted(p.name for p in (tmp_path / "out").glob("*.parquet")) == sorted(f"{t}.parquet" for t in TABLES)
    assert res.doc["files"]["matrix_stats"]["parquet"].endswith("matrix_stats.parquet")
    # then without pyarrow the stale Parquet copies go away and CSV stays
    monkeypatch.setattr(writer, "import_pyarrow", lambda: None)
    res = run(model, tmp_path / "out", formats=["wint8_afp16"])
    assert res.doc["parquet"] == "skipped: pyarrow is not installed"
    assert not list((tmp_path / "out").glob("*.parquet")) and "parquet" not in res.doc["files"]["matrix_stats"]


def test_import_pyarrow_reports_absence(monkeypatch):
    import builtins

    real = builtins.__import__

    def fake(name, *a, **k):
        if name.startswith("pyarrow"):
            raise ImportError("no pyarrow here")
        return real(name, *a, **k)

    monkeypatch.setattr(builtins, "__import__", fake)
    monkeypatch.delitem(sys.modules, "pyarrow", raising=False)
    monkeypatch.delitem(sys.modules, "pyarrow.parquet", raising=False)
    assert writer.import_pyarrow() is None


def test_real_parquet_round_trip(tmp_path):
    pq = pytest.importorskip("pyarrow.parquet", reason="pyarrow is not installed (optional)")
    model = write_dense(tmp_path / "model")
    res = run(model, tmp_path / "out", formats=["wint8_afp16", "wfp4_afp16"])
    for t in TABLES:
        table = pq.read_table(tmp_path / "out" / f"{t}.parquet")
        assert table.num_rows == res.doc["rows"][t], t
    stats = pq.read_table(tmp_path / "out" / "matrix_stats.parquet").to_pylist()
    csv_rows = read_csv(tmp_path / "out" / "matrix_stats.csv")
    assert [r["matrix"] for r in stats] == [r["matrix"] for r in csv_rows]
    assert [r["p99_abs"] for r in stats] == [float(r["p99_abs"]) for r in csv_rows]


# --- sources and input errors ---------------------------------------------------------------------------------
def test_single_safetensors_file_and_synthetic_source(tmp_path, no_pyarrow):
    model = write_dense(tmp_path / "model")
    res = run(model / "model.safetensors", tmp_path / "out", formats=["none"])
    assert res.doc["rows"]["matrix_stats"] == 15 and res.doc["model"]["kind"] == "file"
    res = run("synthetic:llama-tiny", tmp_path / "syn", formats=["wint8_afp16"])
    # 2 layers x 7 projections + the tied embedding; the temporary folder is gone afterwards
    assert res.doc["rows"]["matrix_stats"] == 15 and res.doc["rows"]["quant_error"] == 14
    assert res.doc["model"]["kind"] == "synthetic" and not Path(res.doc["model"]["root"]).exists()


@pytest.mark.parametrize(
    "model,formats,message",
    [
        ("{tmp}/nope", None, "does not exist"),
        ("{tmp}/x.gguf", None, "GGUF"),
        ("synthetic:nope", None, "unknown synthetic preset"),
        ("{tmp}/empty", None, "no .safetensors files"),
        ("{tmp}/garbage.safetensors", None, "garbage.safetensors: not a safetensors file"),
        ("{tmp}/model", ["wint3_afp16"], "unknown quant pair"),
        ("{tmp}/model", ["none", "wint8_afp16"], "cannot be combined"),
    ],
)
def test_invalid_inputs_are_input_errors(tmp_path, model, formats, message):
    write_dense(tmp_path / "model")
    (tmp_path / "empty").mkdir()
    (tmp_path / "garbage.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(InputError, match=message):
        run(model.format(tmp=tmp_path), tmp_path / "out", formats=formats)


# --- CLI ------------------------------------------------------------------------------------------------------
@pytest.fixture
def cli(monkeypatch, capsys):
    from quantsweep.cli import main

    monkeypatch.setenv("NO_COLOR", "1")
    monkeypatch.setattr(writer, "import_pyarrow", lambda: None)

    def call(*args: str) -> tuple[int, str, str]:
        monkeypatch.setattr(sys, "argv", ["quantsweep", *args])
        capsys.readouterr()
        try:
            main()
            code = 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 0
        o = capsys.readouterr()
        return code, o.out, re.sub(r"\x1b\[[0-9;]*m", "", o.err)

    return call


def test_cli_json_document_and_exit_0(tmp_path, cli):
    model = write_dense(tmp_path / "model")
    code, out, err = cli(
        "weights", "--model", str(model), "--out", str(tmp_path / "o"), "-f", "wint8_afp16", "--threads", "1", "--json"
    )
    assert code == 0, err
    doc = json.loads(out)
    assert doc["rows"]["matrix_stats"] == 15 and doc["rows"]["quant_error"] == 14 and doc["error_rows"] == 0
    assert doc["formats"] == ["wint8_afp16/default"] and doc["deltas"] == []
    assert Path(doc["files"]["matrix_stats"]["csv"]).is_file() and Path(doc["summary_md"]).is_file()
    assert doc["parquet"].startswith("skipped") and isinstance(doc["warnings"], list)


def test_cli_table_output(tmp_path, cli):
    model = write_dense(tmp_path / "model")
    code, out, err = cli("weights", "--model", str(model), "--out", str(tmp_path / "o"), "-f", "wint4_afp16")
    assert code == 0, err
    assert "Most quantization-hostile layers" in out and "wrote " in out
    assert "warning: 1 float tensor(s)" in err


@pytest.mark.parametrize(
    "args,message",
    [
        (["--model", "{tmp}/nope"], "does not exist"),
        (["-f", "wint4_afp16/w_group7"], "unknown granularity 'w_group7'"),
        (["--model", "{tmp}/bad"], "strict split failure"),
        (["--delta", "wint8_afp16"], "is not A:B"),
        (["--device", "tpu"], "'tpu' is not one of 'auto', 'cpu', 'cuda'"),
    ],
)
def test_cli_invalid_input_exits_2(tmp_path, cli, args, message):
    write_dense(tmp_path / "model")
    write_moe(tmp_path / "bad", bad_split=True)
    args = [a.format(tmp=tmp_path) for a in args]
    if "--model" not in args:
        args = ["--model", str(tmp_path / "model"), *args]
    code, out, err = cli("weights", *args, "--out", str(tmp_path / "o"))
    assert code == 2 and message in err and out == ""


def test_nan_cells_and_empty_tables_round_trip_as_text(tmp_path):
    p = writer.write_csv(tmp_path / "t.csv", ["a", "b", "c"], [{"a": math.nan, "b": None, "c": math.inf}])
    assert p.read_text() == "a,b,c\nnan,,inf\n"
    assert writer.csv_text(["x"], []) == "x\n"
    assert QUANT_METRICS == ("rel_fro", "rel_max", "sqnr_db")
