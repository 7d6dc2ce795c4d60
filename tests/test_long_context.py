"""evaluation.seq_lens: held-out samples of each length cut from text calibration never used, the matrix refused
when the text is too short, and a real run of the tiny model at two lengths -> one ceiling per cell, a plot."""

from __future__ import annotations

import json

import pytest
import torch
from pipeline_helpers import TINY_MATRIX, cli, load_rows, write_matrix

from quantsweep.engine.data import TokenSamples
from quantsweep.engine.long_context import free_stretches, long_samples
from quantsweep.errors import InputError, MatrixError
from quantsweep.matrix_io import parse_matrix
from quantsweep.planning import expand


def _samples() -> TokenSamples:
    stream = torch.arange(100)
    return TokenSamples(eval_ids=torch.zeros(1, 10, dtype=torch.long), pool_ids=torch.zeros(3, 10, dtype=torch.long),
                        seq_len=10, fingerprint="x", total_tokens=100, stream=stream, pool_windows=(7, 2, 3))


def test_long_samples_never_touch_calibration_windows():
    s = _samples()
    assert free_stretches(s) == [(0, 20), (40, 70), (80, 100)]
    ids = long_samples(s, 15, 4, seed=0, source="text")
    assert sorted(int(r[0]) for r in ids) == [0, 40, 55, 80]  # every place a 15-token sample fits
    used = {t for w in (2, 3, 7) for t in range(10 * w, 10 * w + 10)}
    assert not used & {int(t) for t in ids.flatten()}
    assert all(torch.equal(r, torch.arange(int(r[0]), int(r[0]) + 15)) for r in ids)  # contiguous text
    with pytest.raises(InputError) as e:
        long_samples(s, 15, 5, seed=0, source="text")
    assert str(e.value) == (
        "evaluation.seq_lens: 15 tokens: the dataset (text) is 100 tokens long; after its 3 calibration samples of "
        "10 tokens, its longest stretch of text not used for calibration is 30 tokens, which yields 4 held-out "
        "samples of 15 tokens, but evaluation.samples_per_length is 5; use shorter lengths, fewer samples per "
        "length, or more text")


def test_seq_lens_change_ids_only_when_given():
    plain = expand(parse_matrix(TINY_MATRIX, "m"))
    empty = expand(parse_matrix({**TINY_MATRIX, "evaluation": {"seq_lens": []}}, "m"))
    longer = expand(parse_matrix({**TINY_MATRIX, "evaluation": {"seq_lens": [256, 64]}}, "m"))
    assert [c.id for c in plain.cells] == [c.id for c in empty.cells]
    assert not {c.id for c in plain.cells} & {c.id for c in longer.cells}
    assert longer.matrix.evaluation.seq_lens == [64, 256]
    assert longer.estimate()["long_context_seq_lens"] == [64, 256]
    with pytest.raises(MatrixError, match=r"evaluation.seq_lens: duplicate length in \[64, 64\]"):
        parse_matrix({**TINY_MATRIX, "evaluation": {"seq_lens": [64, 64]}}, "m")
    with pytest.raises(MatrixError, match=r"m: evaluation.seq_lens\[0\]: Input should be greater than or equal to 8"):
        parse_matrix({**TINY_MATRIX, "evaluation": {"seq_lens": [4]}}, "m")


LONG = {**TINY_MATRIX, "name": "long", "canary": {"enabled": False},
        "axes": {"quant_pairs": ["wint8_afp16", "wint4_afp16"], "granularities": ["default"], "dataset_sizes": ["a"]},
        "evaluation": {"seq_lens": [64, 256], "samples_per_length": 2}}


def test_run_two_lengths_gives_one_ceiling_per_cell_and_a_plot(tmp_path):
    m = write_matrix(tmp_path, {**LONG, "output_root": str(tmp_path / "runs")})
    res = cli("run", "--matrix", str(m), "--json", cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    rows = load_rows(tmp_path / "runs" / "long" / "rows.jsonl")
    assert len(rows) == 2
    for r in rows:
        lc = r["long_context"]
        assert (lc["seq_lens"], lc["samples_per_length"], lc["kv_cache"]) == ([64, 256], 2, "none")
        assert [m["seq_len"] for m in lc["by_length"]] == [64, 256]
        assert [m["eval_tokens"] for m in lc["by_length"]] == [2 * 63, 2 * 255]
        for m in lc["by_length"]:
            assert 0 <= m["kl_mean"] < 0.5 and 0.5 < m["ppl_ratio"] < 2 and 0 < m["top1_agreement"] <= 1
            assert m["peak_device_mb"] is None  # a CPU run
        assert r["telemetry"]["phases"]["long_context"] > 0
        assert r["telemetry"]["gpu"]["reason"] == "no GPU in use (the model runs on the CPU)"
        assert r["telemetry"]["host"]["cpu_s"] > 0
    summary = tmp_path / "runs" / "long" / "sweep-summary.json"
    res = cli("context-ceiling", "--summary", str(summary), "--kl-max", "0.5", "--json", cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    doc = json.loads(res.stdout)
    assert sorted(c["key"] for c in doc["cells"]) == ["wint4_afp16/default/a", "wint8_afp16/default/a"]
    assert [c["ceiling"] for c in doc["cells"]] == [256, 256]
    assert [b["cells_meeting"] for b in doc["best_per_length"]] == [2, 2]
    res = cli("context-ceiling", "--summary", str(summary), "--kl-max", "1e-9", "--json", cwd=tmp_path)
    assert [c["ceiling"] for c in json.loads(res.stdout)["cells"]] == [None, None]
    res = cli("render-report", "--summary", str(summary), "--out", str(tmp_path / "rep"), "--json", cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    out = json.loads(res.stdout)
    assert out["plots"]["quality-vs-length"] == {"series": 2, "lengths": 2}
    assert (tmp_path / "rep" / "quality-vs-length.png").stat().st_size > 10_000
    md = (tmp_path / "rep" / "report.md").read_text()
    assert "## Quality vs context length" in md and "![Quality vs context length, one line per cell]" in md


def test_text_too_short_for_a_length_is_refused_before_any_cell(tmp_path):
    text = tmp_path / "t.txt"
    text.write_text(" ".join(f"word{i} and more words." for i in range(600)))
    bad = {**LONG, "dataset": {**LONG["dataset"], "source": "text", "path": str(text)},
           "evaluation": {"seq_lens": [1024], "samples_per_length": 4}, "output_root": str(tmp_path / "runs")}
    res = cli("run", "--matrix", str(write_matrix(tmp_path, bad)), cwd=tmp_path)
    assert res.returncode == 2, res.stderr[-3000:]
    assert "evaluation.seq_lens: 1024 tokens: the dataset (text) is " in res.stderr
    assert "tokens long; after its 4 calibration samples of 32 tokens" in res.stderr
    assert "Traceback" not in res.stderr
    assert not (tmp_path / "runs" / "long" / "rows.jsonl").exists()
