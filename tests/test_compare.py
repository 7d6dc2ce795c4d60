"""`quantsweep compare`: cells matched by axes (not ids), exact deltas, recipe flips, gate exit codes (pure)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from report_helpers import cli, error_row, row, summary, write

from quantsweep.errors import InputError
from quantsweep.reports.compare import CompareGate, compare


def _manifest(sweep_dir: Path, r: dict, chosen: dict[str, str]) -> None:
    folder = sweep_dir.joinpath(*Path(r["path"]).parts[2:])
    folder.mkdir(parents=True, exist_ok=True)
    layers = [{"name": n, "chosen": c, "formats": [c, "none"]} for n, c in chosen.items()]
    (folder / "manifest.json").write_text(json.dumps({"cell": {"id": r["cell_id"]}, "layers": layers}))


@pytest.fixture
def two_sweeps(tmp_path):
    # A and B: two models (so every cell id differs), same axes except one cell each side
    a_rows = [row("wint8_afp16", bits=8.0, kl=0.010, model="m1", sweep="a"),
              row("wint4_afp16", bits=4.5, kl=0.050, model="m1", sweep="a"),
              row("wfp8_afp8", bits=8.0, kl=0.020, model="m1", sweep="a")]
    b_rows = [row("wint8_afp16", bits=8.0, kl=0.012, model="m2", sweep="b"),
              row("wint4_afp16", bits=4.75, kl=0.040, model="m2", sweep="b"),
              error_row("wfp8_afp8", model="m2", sweep="b"),
              row("wint4_afp16", "w_group64", bits=4.5, kl=0.03, model="m2", sweep="b")]
    _manifest(tmp_path / "a", a_rows[1], {"l0": "wint4_afp16/default", "l1": "none", "l2": "wint4_afp16/default"})
    _manifest(tmp_path / "b", b_rows[1], {"l0": "wint4_afp16/default", "l1": "wint4_afp16/default", "l2": "none"})
    pa = write(tmp_path / "a" / "sweep-summary.json", summary(a_rows, name="a"))
    pb = write(tmp_path / "b" / "sweep-summary.json", summary(b_rows, name="b"))
    return pa, pb


def test_cells_are_matched_by_axes_with_exact_deltas_flips_and_one_sided_cells(two_sweeps):
    pa, pb = two_sweeps
    doc = compare(pa, pb, CompareGate())
    by = {e["cell"]: e for e in doc["matched"]}
    assert sorted(by) == ["wfp8_afp8/default/small@8", "wint4_afp16/default/small@8", "wint8_afp16/default/small@8"]
    int4 = by["wint4_afp16/default/small@8"]
    assert int4["delta"]["achieved_bits"] == pytest.approx(0.25)
    assert int4["delta"]["kl_mean"] == pytest.approx(-0.010)
    assert int4["a"]["kl_mean"] == 0.05 and int4["b"]["kl_mean"] == 0.04
    assert int4["recipe_flips"] == [{"layer": "l1", "a": "none", "b": "wint4_afp16/default"},
                                    {"layer": "l2", "a": "wint4_afp16/default", "b": "none"}]
    assert by["wint8_afp16/default/small@8"]["delta"]["kl_mean"] == pytest.approx(0.002)
    assert by["wint8_afp16/default/small@8"]["recipe_flips"] is None  # no manifests there
    assert by["wfp8_afp8/default/small@8"]["status"] == {"a": "ok", "b": "error"}
    assert doc["only_in_a"] == [] and doc["only_in_b"] == ["wint4_afp16/w_group64/small@8"]
    # an ok cell that errors in B is a regression whatever the thresholds
    assert doc["gate"]["failures"] == ["wfp8_afp8/default/small@8: ok in A, error in B"] and doc["exit_code"] == 3


def test_gate_thresholds_and_missing_cells(two_sweeps):
    pa, pb = two_sweeps
    doc = compare(pb, pa, CompareGate(max_kl_increase=0.005, max_bits_increase=0.1, fail_on_missing=True))
    assert doc["gate"]["failures"] == [
        "wint4_afp16/default/small@8: kl_mean up by 0.01 (> 0.005)",
        "wint4_afp16/w_group64/small@8: in A, missing from B",
    ]
    # error in A, ok in B is not a regression; a 0.25-bit drop passes max_bits_increase
    doc = compare(pb, pa, CompareGate(max_kl_increase=0.02))
    assert doc["gate"]["passed"] and doc["exit_code"] == 0


def test_cli_compare_exit_codes_files_and_errors(two_sweeps, tmp_path):
    pa, pb = two_sweeps
    res = cli("compare", "--summary", str(pa), "--summary", str(pb), "--out", "cmp", "--json", cwd=tmp_path)
    assert res.returncode == 3, res.stderr
    doc = json.loads(res.stdout)
    assert doc["kind"] == "quantsweep.compare" and len(doc["matched"]) == 3
    assert json.loads((tmp_path / "cmp" / "compare.json").read_text()) == doc
    md = (tmp_path / "cmp" / "compare.md").read_text()
    assert "| wint4_afp16/default/small@8 | ok → ok | +0.25 | -0.01 |" in md and "gate: **FAILED**" in md
    assert "compare gate FAILED" in res.stderr
    res = cli("compare", "--summary", str(pa), cwd=tmp_path)
    assert res.returncode == 2 and "two --summary files" in res.stderr
    res = cli("compare", "--summary", str(pa), "--summary", str(pb), "--max-kl-increase", "-1", cwd=tmp_path)
    assert res.returncode == 2 and "--max-kl-increase must be a number >= 0" in res.stderr
    bad = write(tmp_path / "bad.json", {"kind": "quantsweep.sweep_summary", "rows": [{"key": "k"}]})
    res = cli("compare", "--summary", str(pa), "--summary", str(bad), cwd=tmp_path)
    assert res.returncode == 2 and "bad.json: rows[0].status: missing" in res.stderr and "Traceback" not in res.stderr
    (tmp_path / "afile").write_text("x")
    res = cli("compare", "--summary", str(pa), "--summary", str(pb), "--out", "afile", cwd=tmp_path)
    assert res.returncode == 2 and "--out afile: is a file, not a folder" in res.stderr


def test_a_missing_summary_is_an_input_error_naming_it(tmp_path, two_sweeps):
    pa, _ = two_sweeps
    with pytest.raises(InputError, match="nope.json: file not found"):
        compare(pa, tmp_path / "nope.json", CompareGate())


def test_gate_fails_on_an_uncomparable_gated_metric_and_passes_a_delta_equal_to_its_threshold(tmp_path):
    a = [row("wint8_afp16", bits=8.0, kl=0.0052677524, sweep="a"), row("wint4_afp16", bits=4.5, kl=0.05, sweep="a")]
    b = [row("wint8_afp16", bits=8.0, kl=0.0082677524, sweep="b"), row("wint4_afp16", bits=4.5, kl=float("nan"), sweep="b")]
    pa = write(tmp_path / "a" / "sweep-summary.json", summary(a))
    pb = write(tmp_path / "b" / "sweep-summary.json", summary(b))
    doc = compare(pa, pb, CompareGate(max_kl_increase=0.003))
    assert doc["gate"]["failures"] == ["wint4_afp16/default/small@8: kl_mean cannot be compared: missing or not finite in B"]
    assert "kl_mean" not in {e["cell"]: e for e in doc["matched"]}["wint4_afp16/default/small@8"]["delta"]
