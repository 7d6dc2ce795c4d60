"""The frontier explorer artifact and the artifact schemas (pure: hand-built summaries, no model runs)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
from report_helpers import cli, orket_frontier_rows, summary, write

from quantsweep.errors import InputError
from quantsweep.reports.artifacts import SCHEMAS, check_artifact
from quantsweep.reports.frontier_artifact import build_artifact, write_artifact

SCHEMA_DIR = Path(__file__).resolve().parents[1] / "docs" / "schemas"


def test_committed_schemas_are_generated_from_the_models():
    for name, model in SCHEMAS.items():
        committed = json.loads((SCHEMA_DIR / f"{name}.schema.json").read_text())
        assert committed == json.loads(json.dumps(model.model_json_schema())), f"regenerate docs/schemas/{name}"


def test_frontier_artifact_has_the_frontier_roles_key_and_provenance(tmp_path):
    doc = summary(orket_frontier_rows(), name="orket")
    doc["labels"] = {"execution_lane": "lab", "profile": "safe"}
    doc["commit"] = {"sha": "0123456789abcdef", "dirty": True}  # what `run` records
    path = write(tmp_path / "s" / "sweep-summary.json", doc)
    art = build_artifact(path, provenance_ref="ci:nightly#7", generated_at="2026-11-30T00:00:00+00:00")
    assert art["key"] == {"hardware_fingerprint": "Linux|test-cpu|2c|8gb|none", "lane": "lab", "profile": "safe"}
    assert art["provenance"]["summary_sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert art["provenance"]["provenance_ref"] == "ci:nightly#7" and art["provenance"]["matrix_name"] == "orket"
    assert art["provenance"]["commit"] == "0123456789abcdef" and art["provenance"]["dirty"] is True
    (group,) = art["groups"]
    # the seed's fixture: 8 bits baseline, 7 bits best value, 6 bits minimum viable, 4 bits on the frontier but failing
    roles = {p["pair"]: (p["achieved_bits"], p["role"]) for p in group["frontier"]}
    assert roles == {"wint4_afp16": (4.0, "frontier"), "w6_afp16": (6.0, "minimum_viable"),
                     "w7_afp16": (7.0, "best_value"), "wint8_afp16": (8.0, "baseline")}
    out = tmp_path / "frontier.json"
    files = write_artifact(art, out, tmp_path / "history")
    assert files[1] == str(tmp_path / "history" / "Linux_test-cpu_2c_8gb_none" / "lab" / "safe"
                           / "2026-11-30T000000_0000.json")
    assert check_artifact("frontier", out)["valid"]
    bad = dict(art, groups=[dict(group, cells=-1)])
    (tmp_path / "bad.json").write_text(json.dumps(bad))
    with pytest.raises(InputError, match=r"bad.json: groups\[0\].cells: Input should be greater than or equal to 0"):
        check_artifact("frontier", tmp_path / "bad.json")


def test_cli_frontier_and_check_artifacts(tmp_path):
    path = write(tmp_path / "s" / "sweep-summary.json", summary(orket_frontier_rows(), name="orket"))
    res = cli("frontier", "--summary", str(path), "--out", "f.json", "--storage-root", "hist", "--json", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout)["groups"] == 1 and len(list((tmp_path / "hist").rglob("*.json"))) == 1
    res = cli("check-artifacts", "--frontier", "f.json", "--json", cwd=tmp_path)
    assert res.returncode == 0 and json.loads(res.stdout) == [{"file": "f.json", "kind": "frontier", "valid": True}]
    (tmp_path / "rec.json").write_text(json.dumps({"id": "x"}))
    res = cli("check-artifacts", "--baseline-record", "rec.json", cwd=tmp_path)
    assert res.returncode == 2 and "rec.json: created_at: Field required" in res.stderr and "Traceback" not in res.stderr
    res = cli("check-artifacts", cwd=tmp_path)
    assert res.returncode == 2 and "at least one --frontier" in res.stderr
    (tmp_path / "adir").mkdir()
    res = cli("frontier", "--summary", str(path), "--out", "adir", cwd=tmp_path)
    assert res.returncode == 2 and "is a folder" in res.stderr
    (tmp_path / "afile").write_text("x")
    res = cli("frontier", "--summary", str(path), "--out", "g.json", "--storage-root", "afile", cwd=tmp_path)
    assert res.returncode == 2 and "--storage-root afile: is a file, not a folder" in res.stderr
    assert not (tmp_path / "g.json").exists()  # nothing written on an error path
