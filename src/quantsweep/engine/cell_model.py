"""A finished cell's fake-quantized model, rebuilt from what its folder keeps: the unquantized model, the cell's
`recipe.json` and the calibration the cell used (its manifest).

Why one module: `export` (export/checkpoint.py) and the lm-eval post-phase (execution/lm_eval_phase.py) both need
the model a cell *measured*, long after the AutoQuantize call that built it is gone; two copies of the recipe's
calibration rules would drift apart. The rules: the first `calib_steps` batches of the cell's `calib_samples`
(AWQ a quarter of them, as AutoQuantize calibrates AWQ formats), and the format's own calibration algorithm
(AutoQuantize's recipe config says `max` whatever the format used; `records.with_calibration` writes the real one
into `recipe.json`, the manifest keeps it too).
"""

from __future__ import annotations

import contextlib
import io
import json
from dataclasses import dataclass
from typing import Any

from torch import nn


@dataclass(frozen=True)
class CellCalibration:
    """How a cell's model was calibrated (plain data: it crosses to a Ray worker)."""

    samples: int  # the cell's calib_samples
    batch_size: int
    steps: int  # calibration batches, AWQ's quarter already applied
    algorithm: Any  # ModelOpt's `algorithm` entry (a name, an object or a list)


def cell_calibration(manifest: dict[str, Any]) -> CellCalibration:
    """The calibration of a cell from its manifest (validated by the caller: reports/manifest_io.py)."""
    steps = int(manifest["autoquant"]["calib_steps"])
    algorithm = (manifest.get("quantization") or {}).get("effective_config", {}).get("algorithm") or "max"
    if "awq" in json.dumps(algorithm):
        steps = max(1, steps // 4)  # what AutoQuantize calibrates AWQ formats with
    return CellCalibration(int(manifest["dataset"]["calib_samples"]), int(manifest["autoquant"]["batch_size"]),
                           steps, algorithm)


def apply_recipe(model: nn.Module, recipe: dict[str, Any], calibration: CellCalibration,
                 calib_batches: list[dict[str, Any]]) -> nn.Module:
    """`model` (unquantized, modified in place) fake-quantized with the cell's recipe (a config as
    `recipe.read_recipe` returns it), calibrated on `calib_batches` (the first `calibration.steps` batches of the
    cell's calibration samples). quantsweep's PyTorch fake-quant backend is registered when the recipe names it."""
    import modelopt.torch.quantization as mtq

    from .torch_formats import BACKEND_NAME, register

    config = dict(recipe)
    config["algorithm"] = calibration.algorithm
    if BACKEND_NAME in json.dumps(config, default=str):  # a CPU sweep's NVFP4/MX recipe names quantsweep's backend
        register()
    batches = calib_batches[: calibration.steps]
    with contextlib.redirect_stdout(io.StringIO()):
        return mtq.quantize(model, config, lambda m: [m(input_ids=b["input_ids"]) for b in batches])
