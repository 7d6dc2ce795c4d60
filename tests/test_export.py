"""`quantsweep export` on the CPU: a real tiny sweep, its cells exported with ModelOpt's exporter and checked."""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path

import pytest
from pipeline_helpers import TINY_MATRIX, cli, write_matrix

from quantsweep.errors import InputError
from quantsweep.execution.sweep import RunOptions, run_sweep
from quantsweep.export.cell_inputs import locate

os.environ.setdefault("TQDM_DISABLE", "1")


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    folder = tmp_path_factory.mktemp("export")
    data = copy.deepcopy(TINY_MATRIX)
    data["name"] = "exp"
    data["canary"]["enabled"] = False
    data["autoquant"]["effective_bits"] = 12.0  # some groups quantized, some left at 16 bits
    data["axes"] = {"quant_pairs": ["wint8_afp16", "wfp8_afp8", "wint4_afp16"], "granularities": ["default"],
                    "dataset_sizes": ["a"]}
    path = write_matrix(folder, data)
    outcome = run_sweep(path, RunOptions(output_root=str(folder / "runs"), engine="shared"))
    rows = {r["pair"]: r for r in outcome.summary["rows"]}
    assert all(r["status"] == "ok" for r in rows.values())
    return folder, rows


@pytest.mark.parametrize("pair,algo", [("wint8_afp16", "W8A16"), ("wfp8_afp8", "FP8")])
def test_export_reproduces_the_cell_and_the_stored_weights_match(sweep, pair, algo):
    folder, rows = sweep
    row = rows[pair]
    res = cli("export", "--cell", row["path"], "--out", str(folder / f"out-{pair}"), "--json", cwd=folder)
    assert res.returncode == 0, res.stderr
    doc = json.loads(res.stdout)
    assert doc["checks"]["quant_algo"] == algo
    manifest = json.loads((Path(row["path"]) / "manifest.json").read_text())
    chosen = [g for g in manifest["layers"] if g["chosen"] != "none"]
    assert 0 < len(chosen) < len(manifest["layers"])  # a mixed recipe: 16-bit groups must stay unquantized
    assert doc["checks"]["quantized_modules"] == sum(len(g["module_names"]) for g in chosen)
    assert doc["checks"]["dequantized_weights_compared"] == doc["checks"]["quantized_modules"]
    # the exporter rounds w / scale where the fake quantizer rounds w * (1 / scale): at most one level apart, rarely
    assert doc["checks"]["largest_weight_difference_steps"] <= 1.0 + 1e-3
    assert doc["checks"]["weights_differing"] <= 0.01 * doc["checks"]["weights_compared"]
    for metric in ("kl_mean", "ppl_ratio", "top1_agreement"):  # the exported model is the measured one
        assert doc["quality"]["reproduced"][metric] == pytest.approx(row["quality"][metric], rel=1e-3)
    out = folder / f"out-{pair}"
    assert {"config.json", "hf_quant_config.json", "quantsweep-export.json", "tokenizer.json"} <= {p.name for p in out.iterdir()}
    umask = os.umask(0)
    os.umask(umask)
    assert all((f.stat().st_mode & 0o777) == (0o666 & ~umask) for f in out.iterdir())  # not private temp files
    assert (out.stat().st_mode & 0o777) == (0o777 & ~umask)
    record = json.loads((out / "quantsweep-export.json").read_text())
    assert record["cell"]["id"] == row["cell_id"] and record["recipe"]["algorithm"] == "max"


def test_export_errors_leave_nothing_behind(sweep):
    folder, rows = sweep
    # INT4 blocks of 128 do not divide the tiny model's 64 inputs: ModelOpt cannot pack them, and says so
    res = cli("export", "--cell", rows["wint4_afp16"]["path"], "--out", str(folder / "out-int4"), cwd=folder)
    assert res.returncode == 2 and "cannot pack format wint4_afp16/default" in res.stderr, res.stderr
    assert not (folder / "out-int4").exists() and not list(folder.glob(".out-int4.*"))
    (folder / "full").mkdir()
    (folder / "full" / "x").write_text("x")
    res = cli("export", "--cell", rows["wint8_afp16"]["path"], "--out", str(folder / "full"), cwd=folder)
    assert res.returncode == 2 and "not an empty folder" in res.stderr
    with pytest.raises(InputError, match="no cell manifest here"):
        locate(folder)
