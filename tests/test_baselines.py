"""Baselines: records grouped by matrix/model/hardware/lane/profile, pinned records win and survive prune (pure)."""

from __future__ import annotations

import copy
import json
from datetime import UTC, datetime, timedelta

import pytest
from report_helpers import cli, row, summary, write

from quantsweep.errors import InputError
from quantsweep.store.baselines import BaselineStore

T0 = datetime(2026, 11, 1, tzinfo=UTC)


def _doc(kl: float = 0.01, hardware: str = "Linux|test-cpu|2c|8gb|none", lane: str = "ci") -> dict:
    doc = summary([row("wint8_afp16", kl=kl)], name="nightly")
    doc["hardware"] = {"fingerprint": hardware}
    doc["labels"] = {"execution_lane": lane, "vram_profile": "safe"}  # as the shipped matrices name them
    return doc


def test_resolve_prefers_the_newest_pinned_record_and_prune_keeps_pins(tmp_path):
    store = BaselineStore(tmp_path / "bl")
    old = store.add("a.json", _doc(0.01), pinned=True, now=T0)
    mid = store.add("b.json", _doc(0.02), pinned=False, now=T0 + timedelta(days=1))
    new = store.add("c.json", _doc(0.03), pinned=False, now=T0 + timedelta(days=2))
    other_hw = store.add("d.json", _doc(0.04, hardware="Linux|h200|16c|128gb|1xH200"), pinned=False,
                         now=T0 + timedelta(days=3))
    assert [r.id for r in store.records()] == [old.id, mid.id, new.id, other_hw.id]
    rec, why = store.resolve(_doc())
    assert rec.id == old.id and "pinned" in why
    # resolution is by hardware fingerprint (and lane): the H200 sweep gets its own record, a new lane none
    assert store.resolve(_doc(hardware="Linux|h200|16c|128gb|1xH200"))[0].id == other_hw.id
    assert store.resolve(_doc(lane="nightly"))[0] is None
    # keep the newest unpinned per group: the middle record goes, the pinned oldest stays
    assert store.prune(keep_last=1, dry_run=True) == [mid.id]
    assert [r.id for r in store.records()] == [old.id, mid.id, new.id, other_hw.id]  # dry run removed nothing
    assert store.prune(keep_last=1) == [mid.id]
    assert [r.id for r in store.records()] == [old.id, new.id, other_hw.id]
    assert store.prune(keep_last=0) == sorted([new.id, other_hw.id]) and [r.id for r in store.records()] == [old.id]
    store.set_pinned(old.id, False)
    assert store.resolve(_doc())[1] == "the newest record of the group (none is pinned)"
    # the stored summary is the one added, and the record holds to its published schema
    assert json.loads(store.summary_path(old).read_text())["rows"][0]["quality"]["kl_mean"] == 0.01
    from quantsweep.reports.artifacts import check_artifact

    assert check_artifact("baseline-record", store.records_dir / old.id / "record.json")["valid"]


def test_health_counts_ages_and_interrupted_writes(tmp_path):
    store = BaselineStore(tmp_path / "bl")
    a = store.add("a.json", _doc(), pinned=True, now=T0)
    store.add("b.json", _doc(0.2), pinned=False, now=T0 + timedelta(days=4))
    doc = copy.deepcopy(_doc(0.3))
    doc["hardware"] = None
    store.add("c.json", doc, pinned=False, now=T0 + timedelta(days=5))
    (store.records_dir / "20261101T000000-deadbeef").mkdir()  # a write interrupted before record.json
    h = store.health(now=T0 + timedelta(days=10))
    assert h["records"] == 3 and h["pinned"] == 1 and h["missing_hardware_fingerprint"] == 1
    g = next(x for x in h["groups"] if x["hardware_fingerprint"] is not None)
    assert g["records"] == 2 and g["pinned"] == 1 and g["newest_age_days"] == 6.0 and g["oldest_age_days"] == 10.0
    assert g["matrix_hashes"] == 1
    assert "20261101T000000-deadbeef" in store.prune(keep_last=10)
    assert store.get(a.id).pinned
    with pytest.raises(InputError, match="no baseline record 'nope'"):
        store.get("nope")
    # a copied record folder (same id inside) must not let prune remove the pinned original
    import shutil

    shutil.copytree(store.records_dir / a.id, store.records_dir / f"{a.id}-copy")
    with pytest.raises(InputError, match=rf"{a.id}-copy/record.json: id: '{a.id}' is not its folder's name"):
        store.prune(keep_last=0)
    assert (store.records_dir / a.id / "record.json").is_file()


def test_cli_baseline_commands_and_errors(tmp_path):
    s1 = write(tmp_path / "s1" / "sweep-summary.json", _doc(0.01))
    s2 = write(tmp_path / "s2" / "sweep-summary.json", _doc(0.02))
    root = str(tmp_path / "bl")
    res = cli("baseline", "pin", "--storage-root", root, "--summary", str(s1), "--json", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    pinned = json.loads(res.stdout)
    assert pinned["pinned"] is True and pinned["matrix_name"] == "nightly" and pinned["lane"] == "ci"
    assert pinned["profile"] == "safe"
    res = cli("baseline", "add", "--storage-root", root, "--summary", str(s2), "--json", cwd=tmp_path)
    added = json.loads(res.stdout)
    res = cli("baseline", "list", "--storage-root", root, "--json", cwd=tmp_path)
    assert [r["id"] for r in json.loads(res.stdout)] == sorted([pinned["id"], added["id"]])
    res = cli("baseline", "resolve", "--storage-root", root, "--summary", str(s2), "--json", cwd=tmp_path)
    resolved = json.loads(res.stdout)
    assert resolved["record"]["id"] == pinned["id"] and resolved["matrix_changed"] is False
    res = cli("baseline", "prune", "--storage-root", root, "--keep-last", "0", "--json", cwd=tmp_path)
    assert json.loads(res.stdout)["removed"] == [added["id"]]
    res = cli("baseline", "pin", "--storage-root", root, cwd=tmp_path)
    assert res.returncode == 2 and "exactly one of --record ID or --summary FILE" in res.stderr
    res = cli("baseline", "unpin", "--storage-root", root, "--record", "nope", cwd=tmp_path)
    assert res.returncode == 2 and "no baseline record 'nope'" in res.stderr
    other = _doc()
    other["hardware"] = {"fingerprint": "elsewhere"}
    s3 = write(tmp_path / "s3.json", other)
    res = cli("baseline", "resolve", "--storage-root", root, "--summary", str(s3), cwd=tmp_path)
    assert res.returncode == 2 and "no baseline" in res.stderr and "Traceback" not in res.stderr
    (tmp_path / "file").write_text("x")
    res = cli("baseline", "list", "--storage-root", str(tmp_path / "file"), cwd=tmp_path)
    assert res.returncode == 2 and "--storage-root is a file" in res.stderr


def test_run_with_a_baseline_root_compares_the_finished_sweep_with_its_pinned_baseline(tmp_path):
    """A real (tiny) sweep, pinned, then run again with --rerun: same cell, same result, zero deltas, no flips."""
    from pipeline_helpers import TINY_MATRIX, write_matrix

    data = copy.deepcopy(TINY_MATRIX)
    data["name"] = "withbaseline"
    data["canary"]["enabled"] = False
    data["axes"] = {"quant_pairs": ["wint4_afp16"], "granularities": ["default"], "dataset_sizes": ["a"]}
    path = write_matrix(tmp_path, data)
    runs, root = str(tmp_path / "runs"), str(tmp_path / "bl")
    res = cli("run", "--matrix", str(path), "--output-root", runs, "--baseline-root", root, "--json", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout)["baseline"]["record"] is None  # nothing recorded yet
    summary_path = tmp_path / "runs" / "withbaseline" / "sweep-summary.json"
    res = cli("baseline", "pin", "--storage-root", root, "--summary", str(summary_path), "--json", cwd=tmp_path)
    pinned = json.loads(res.stdout)["id"]
    res = cli("run", "--matrix", str(path), "--output-root", runs, "--rerun", "--baseline-root", root, "--json",
              cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    against = json.loads(res.stdout)["baseline"]
    assert against["record"] == pinned and "pinned" in against["why"]
    (cell,) = against["comparison"]["matched"]
    assert cell["cell"] == "wint4_afp16/default/a@8" and cell["status"] == {"a": "ok", "b": "ok"}
    assert cell["delta"]["kl_mean"] == 0.0 and cell["delta"]["achieved_bits"] == 0.0
    assert cell["recipe_flips"] == []  # the record's own copy of the first run's manifest and the rerun's agree
    record_dir = tmp_path / "bl" / "records" / pinned
    stored = json.loads((record_dir / "summary.json").read_text())["rows"][0]
    assert stored["path"] == f"cells/{stored['cell_id']}" and (record_dir / stored["path"] / "manifest.json").is_file()
