"""The plan's exportability flags against what ModelOpt's exporter really does, on the tiny model on the CPU.

One tiny sweep (shared engine, budget 8 bits: the 49152 x 64 lm_head, 96 % of the weights, is quantized in every
cell) of cells covering both outcomes of the INT8-scale (3), label (2), INT4-block (4) and FP8 (5) rules; each
cell is then exported with the plan's own check switched off, so the outcome is the real exporter's and
`quantsweep export`'s read-back; the exit status must agree with the row's `exportable`."""

from __future__ import annotations

import copy
import os

import pytest
from pipeline_helpers import TINY_MATRIX, cli, write_matrix

from quantsweep.errors import QuantsweepError
from quantsweep.execution.sweep import RunOptions, run_sweep

os.environ.setdefault("TQDM_DISABLE", "1")

CELLS = {  # (pair, granularity): the plan's flag
    ("wint8_afp16", "default"): True,
    ("wint8_afp16", "w_group64"): False,  # INT8 blocks (rule 3)
    ("wfp8_afp8", "default"): True,
    ("wfp8_afp16", "default"): False,  # labelled FP8: activations it does not have (rule 2)
    ("wint4_afp16", "w_group64"): True,
    ("wint4_afp16", "default"): False,  # blocks of 128 on 64-wide layers (rule 4)
}


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    folder = tmp_path_factory.mktemp("expo")
    data = copy.deepcopy(TINY_MATRIX)
    data["name"] = "expo"
    data["canary"]["enabled"] = False
    data["axes"] = {"quant_pairs": sorted({p for p, _ in CELLS}), "granularities": ["default", "w_group64"],
                    "dataset_sizes": ["a"]}
    outcome = run_sweep(write_matrix(folder, data), RunOptions(output_root=str(folder / "runs"), engine="shared"))
    rows = {(r["pair"], r["granularity"]): r for r in outcome.summary["rows"] if (r["pair"], r["granularity"]) in CELLS}
    assert all(r["status"] == "ok" for r in rows.values())
    return folder, rows


def test_flags_match_the_real_exporter(sweep, monkeypatch):
    import quantsweep.export.checkpoint as checkpoint

    folder, rows = sweep
    assert {k: r["exportable"] for k, r in rows.items()} == CELLS
    monkeypatch.setattr(checkpoint, "check_cell_exportable", lambda inputs: None)  # observe ModelOpt itself
    outcomes = {}
    for key, row in rows.items():
        try:
            checkpoint.export_cell(row["path"], folder / f"real-{key[0]}-{key[1]}")
            outcomes[key] = True
        except QuantsweepError:
            outcomes[key] = False
    assert outcomes == CELLS


def test_export_refuses_a_flagged_cell_before_loading_the_model(sweep):
    folder, rows = sweep
    row = rows[("wint8_afp16", "w_group64")]
    res = cli("export", "--cell", row["path"], "--out", str(folder / "refused"), cwd=folder)
    assert res.returncode == 2, res.stderr
    said = "".join(res.stderr.split())  # long messages wrap on stderr, even inside a word
    assert "".join(("cannot pack format wint8_afp16/w_group64 (known at plan time, exportable: false): INT8 weights "
                    "(int8 group64 static) export only with one scale per output channel").split()) in said
    assert row["export_reason"].startswith("INT8 weights (int8 group64 static) export only with one scale")
    assert "loading model" not in res.stderr and not (folder / "refused").exists()
