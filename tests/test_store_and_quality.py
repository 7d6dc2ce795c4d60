"""Store (atomic writes, append-only rows with torn-line repair), validity reasons, KPI null semantics, quality."""

from __future__ import annotations

import json

import pytest
import torch

from quantsweep.engine.quality import baseline_outputs, compare_to_baseline
from quantsweep.store.atomic import atomic_write_json
from quantsweep.store.rows import RowLog, latest_by_cell, read_rows
from quantsweep.store.validity import finalize_rows, missing_telemetry, row_reasons

GOOD_TELEMETRY = {
    "device": "cpu",
    "wall_s": 1.0,
    "peak_host_rss_mb": 10.0,
    "tokens_processed": 5,
    "phases": {"calibrate": 0.1, "score": 0.2, "search": 0.01, "evaluate": 0.1},
}


def ok_row(cell_id: str, **kw):
    row = {
        "cell_id": cell_id,
        "config_hash": "h" + cell_id,
        "status": "ok",
        "total_score": 1.0,
        "scores_finite": True,
        "satisfied": True,
        "quality": {"kl_mean": 0.1, "ppl_quant": 10.0, "ppl_ratio": 1.1},
        "telemetry": dict(GOOD_TELEMETRY),
        "result_fingerprint": "fp" + cell_id,
    }
    row.update(kw)
    return row


def test_atomic_write_leaves_no_temporary_files(tmp_path):
    atomic_write_json(tmp_path / "a.json", {"x": 1})
    atomic_write_json(tmp_path / "a.json", {"x": 2})
    assert json.loads((tmp_path / "a.json").read_text()) == {"x": 2}
    assert [p.name for p in tmp_path.iterdir()] == ["a.json"]


def test_rows_torn_last_line_is_ignored_then_repaired(tmp_path):
    log = RowLog(tmp_path / "rows.jsonl")
    log.append({"cell_id": "a", "v": 1})
    log.append({"cell_id": "b", "v": 1})
    with (tmp_path / "rows.jsonl").open("ab") as fh:
        fh.write(b'{"cell_id": "c", "v"')
    assert [r["cell_id"] for r in read_rows(tmp_path / "rows.jsonl")] == ["a", "b"]
    assert log.repair() == len(b'{"cell_id": "c", "v"')
    log.append({"cell_id": "a", "v": 2})
    rows = read_rows(tmp_path / "rows.jsonl")
    assert [r["cell_id"] for r in rows] == ["a", "b", "a"]
    assert latest_by_cell(rows)["a"]["v"] == 2
    assert log.repair() == 0


def test_row_reasons():
    assert row_reasons(ok_row("a")) == []
    assert row_reasons({"status": "error", "error_type": "OOM"}) == ["OOM"]
    assert row_reasons({"status": "error", "error_type": "ValueError"}) == ["ERROR"]
    assert row_reasons(ok_row("a", total_score=float("nan"))) == ["NONFINITE_SCORE"]
    assert row_reasons(ok_row("a", satisfied=False)) == ["CONSTRAINT_UNSATISFIED"]
    tel = dict(GOOD_TELEMETRY, phases={"calibrate": 0.1, "score": float("inf"), "search": 0.0, "evaluate": 1.0})
    assert row_reasons(ok_row("a", telemetry=tel)) == ["MISSING_TELEMETRY"]
    assert missing_telemetry(tel) == ["phases.score"]
    assert missing_telemetry(dict(GOOD_TELEMETRY, device="cuda:0")) == ["peak_device_mb"]


def test_duplicate_results_across_different_configs_are_flagged():
    a = ok_row("a", result_fingerprint="same", reasons=[])
    b = ok_row("b", result_fingerprint="same", reasons=[])
    c = ok_row("c", reasons=[])
    same_config = ok_row("d", config_hash="ha", result_fingerprint="same", reasons=[])
    out = finalize_rows([a, b, c])
    assert [r["reasons"] for r in out] == [["DUPLICATE_RESULT"], ["DUPLICATE_RESULT"], []]
    assert [r["valid"] for r in out] == [False, False, True]
    # the same configuration twice (e.g. a rerun) is not suspicious
    assert [r["reasons"] for r in finalize_rows([a, same_config])] == [[], []]


class _Fixed(torch.nn.Module):
    """A 'model' returning fixed logits, to check the metric arithmetic exactly."""

    def __init__(self, logits):
        super().__init__()
        self.logits = logits

    def forward(self, input_ids, use_cache=True):  # quality.py asks for no KV cache, as of a transformers model
        assert use_cache is False
        return type("Out", (), {"logits": self.logits})()


def test_quality_identical_model_has_zero_kl_and_ratio_one():
    torch.manual_seed(0)
    logits = torch.randn(2, 5, 11)
    ids = torch.randint(0, 11, (2, 5))
    batches = [{"input_ids": ids}]
    base = baseline_outputs(_Fixed(logits), batches)
    q = compare_to_baseline(_Fixed(logits), batches, base)
    assert q["kl_mean"] == pytest.approx(0.0, abs=1e-7) and q["kl_max"] == pytest.approx(0.0, abs=1e-6)
    assert q["ppl_ratio"] == pytest.approx(1.0) and q["top1_agreement"] == 1.0
    assert q["eval_tokens"] == 8
    nll = -torch.log_softmax(logits[:, :-1], -1).gather(-1, ids[:, 1:, None]).mean()
    assert q["ppl_base"] == pytest.approx(float(torch.exp(nll)), rel=1e-5)


def test_quality_kl_matches_hand_computation_and_topk_is_a_lower_bound():
    torch.manual_seed(1)
    base_logits = torch.randn(1, 4, 600)
    quant_logits = base_logits + 0.3 * torch.randn(1, 4, 600)
    ids = torch.randint(0, 600, (1, 4))
    batches = [{"input_ids": ids}]
    p = torch.log_softmax(base_logits[:, :-1], -1)
    q = torch.log_softmax(quant_logits[:, :-1], -1)
    expected = (p.exp() * (p - q)).sum(-1).flatten()
    exact = compare_to_baseline(_Fixed(quant_logits), batches, baseline_outputs(_Fixed(base_logits), batches))
    assert exact["kl_method"] == "exact"
    assert exact["kl_mean"] == pytest.approx(float(expected.mean()), rel=1e-5)
    assert exact["kl_max"] == pytest.approx(float(expected.max()), rel=1e-5)
    agree = float((p.argmax(-1) == q.argmax(-1)).float().mean())
    assert exact["top1_agreement"] == pytest.approx(agree)
    approx = compare_to_baseline(
        _Fixed(quant_logits), batches, baseline_outputs(_Fixed(base_logits), batches, max_cache_bytes=0)
    )
    assert approx["kl_method"] == "top256+tail"
    assert approx["kl_mean"] <= exact["kl_mean"] + 1e-7
    assert approx["kl_mean"] == pytest.approx(exact["kl_mean"], rel=0.25)
    assert approx["ppl_ratio"] == pytest.approx(exact["ppl_ratio"])


def test_two_budgets_of_one_search_choosing_the_same_recipe_are_not_duplicates():
    a = ok_row("a", config_hash="c1", search_hash="s", result_fingerprint="same", reasons=[])
    b = ok_row("b", config_hash="c2", search_hash="s", result_fingerprint="same", reasons=[])
    c = ok_row("c", config_hash="c3", search_hash="t", result_fingerprint="same", reasons=[])
    assert [r["reasons"] for r in finalize_rows([a, b])] == [[], []]
    assert [r["reasons"] for r in finalize_rows([a, b, c])] == [["DUPLICATE_RESULT"]] * 3
