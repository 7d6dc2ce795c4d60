"""`quantsweep export`: a cell's chosen recipe as a unified Hugging Face checkpoint, checked before it is handed over.

The model is rebuilt from the sweep's own matrix (the summary keeps it): the same source, dtype and device (or
`--device`), the same calibration samples and batches the cell used (the first `calib_steps` batches of its
`calib_samples`; AWQ a quarter of them, as AutoQuantize does), its `recipe.json` with the format's own
calibration algorithm (AutoQuantize's recipe config says `max` whatever the format used). Then, in order, each a
hard error when it fails, and nothing is left in `--out` unless all pass:

1. **quality**: the rebuilt fake-quantized model is evaluated on the cell's held-out samples against the
   unquantized model, and must reproduce the row's `kl_mean`, `ppl_ratio` and `top1_agreement` (relative 1e-3):
   the model that is exported is the one that was measured;
2. **export**: ModelOpt's `export_hf_checkpoint` (formats it cannot pack on this device, e.g. INT4 blocks that do
   not divide a layer's input dimension, fail with its message and the cell's format);
3. **read back**: every module of a group the recipe quantizes is stored with a `weight_scale`, every module of a
   group left at 16 bits without one; for INT8 and FP8 weights the stored weights, dequantized, are compared with
   the fake-quantized weights of the evaluated model. ModelOpt's exporter divides by the scale where its fake
   quantizer multiplies by the reciprocal, so a weight on a rounding boundary can land one level apart: reported
   (`weights_differing`, `largest_weight_difference_steps`), an error beyond one step or on more than 1 % of the
   weights. Packed formats (INT4, FP4) are not dequantized here (`not_dequantized_dtypes`).

The folder gets the checkpoint (`config.json`, `hf_quant_config.json`, safetensors), the tokenizer and
`quantsweep-export.json` (cell, recipe, expected and reproduced quality, checks, versions). It is built in a
temporary folder beside `--out` and renamed into place at the end.
"""

from __future__ import annotations

import contextlib
import fnmatch
import io
import json
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from ..errors import ExitCode, InputError, QuantsweepError
from ..store.atomic import check_output_dir, make_dirs
from .cell_inputs import locate

QUALITY_RTOL = 1e-3
EXPORT_FILE = "quantsweep-export.json"


def _check_algorithm(algorithm: Any, cell_dir: Path) -> None:
    """A calibration algorithm ModelOpt knows, before the model is loaded (ModelOpt would assert mid-way)."""
    from modelopt.torch.quantization.mode import CalibrateModeRegistry

    method = algorithm.get("method") if isinstance(algorithm, dict) else algorithm
    if method is not None and (not isinstance(method, str) or CalibrateModeRegistry.get(f"{method}_calibrate") is None):
        raise InputError(f"{Path(cell_dir) / 'manifest.json'}: quantization.effective_config.algorithm: "
                         f"{json.dumps(algorithm)[:80]} is not a calibration algorithm ModelOpt knows")


def export_cell(cell_dir: str | Path, out_dir: str | Path, device: str | None = None,
                message: Any = lambda _m: None) -> dict[str, Any]:
    out = Path(out_dir)
    if out.is_symlink() or (out.exists() and (not out.is_dir() or any(out.iterdir()))):
        raise InputError(f"{out}: --out exists and is not an empty folder (an export never overwrites)")
    check_output_dir(out, "--out")  # before the slow rebuild: a place that cannot be written fails at once
    inputs = locate(cell_dir)

    from ..engine.data import build_samples, make_batches
    from ..engine.models import load_model
    from ..engine.quality import baseline_outputs, compare_to_baseline
    from ..execution.context import import_modelopt
    from ..execution.telemetry import library_versions
    from ..matrix_io import parse_matrix
    from ..overlay import to_jsonable
    from ..recipe import load_recipe

    t0 = time.perf_counter()
    import_modelopt()
    import modelopt.torch.quantization as mtq

    matrix = parse_matrix(inputs.summary["matrix"], str(inputs.summary_path))
    if device is not None:
        matrix = matrix.model_copy(update={"model": matrix.model.model_copy(update={"device": device})})
    man = inputs.manifest
    calib_samples = int(man["dataset"]["calib_samples"])
    batch = int(man["autoquant"]["batch_size"])
    steps = int(man["autoquant"]["calib_steps"])
    algorithm = (man.get("quantization") or {}).get("effective_config", {}).get("algorithm") or "max"
    _check_algorithm(algorithm, inputs.cell_dir)
    if "awq" in json.dumps(algorithm):
        steps = max(1, steps // 4)  # what AutoQuantize calibrates AWQ formats with
    if matrix.model.trust_remote_code:
        message(f"warning: model.trust_remote_code is true in {inputs.summary_path}: the model folder's own Python "
                "code will run in this process")
    message(f"loading model ({matrix.model.source})")
    loaded = load_model(matrix.model)
    needed = max(calib_samples, int(man["dataset"].get("score_samples") or calib_samples))
    samples = build_samples(matrix.dataset, loaded.tokenizer, needed)
    calib = make_batches(samples.pool(calib_samples), batch, loaded.device, labels=False)[:steps]
    evals = make_batches(samples.eval_ids, batch, loaded.device, labels=False)

    message("computing the unquantized model's outputs on the held-out samples")
    base_model = loaded.take_model()
    base = baseline_outputs(base_model, evals)
    del base_model
    model = loaded.take_model()
    config = load_recipe(inputs.recipe_path)
    config["algorithm"] = algorithm
    message(f"quantizing with the cell's recipe ({steps} calibration batches, algorithm {json.dumps(algorithm)})")
    with contextlib.redirect_stdout(io.StringIO()):
        model = mtq.quantize(model, config, lambda m: [m(input_ids=b["input_ids"]) for b in calib])
    quality = compare_to_baseline(model, evals, base)
    expected = inputs.row.get("quality") or {}
    reproduced = _check_quality(expected, quality, inputs)

    fake = _fake_quantized_weights(model)
    chosen, unchosen = _groups(man)
    if getattr(model.config, "architectures", None) is None:
        model.config.architectures = [type(model).__name__]
    make_dirs(out.parent)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        message("exporting with ModelOpt's export_hf_checkpoint")
        from modelopt.torch.export import export_hf_checkpoint

        try:
            with contextlib.redirect_stdout(io.StringIO()):
                export_hf_checkpoint(model, export_dir=str(tmp))
        except (NotImplementedError, ValueError, AssertionError, RuntimeError, KeyError) as exc:
            fmt = f"{man['cell'].get('pair')}/{man['cell'].get('granularity')}"
            raise QuantsweepError(
                f"{inputs.cell_dir}: ModelOpt's exporter cannot pack format {fmt} on {loaded.device}: {exc}",
                ExitCode.INVALID_INPUT,
            ) from None
        loaded.tokenizer.save_pretrained(str(tmp))
        checks = _read_back(tmp, chosen, unchosen, fake)
        doc = {
            "kind": "quantsweep.export",
            "cell": man["cell"],
            "source_cell": str(inputs.cell_dir),
            "summary": str(inputs.summary_path),
            "recipe": to_jsonable(config),
            "calibration": {"algorithm": algorithm, "samples": calib_samples, "batches": steps, "batch_size": batch},
            "quality": {"expected": {k: expected.get(k) for k in reproduced}, "reproduced": reproduced},
            "checks": checks,
            "device": str(loaded.device),
            "versions": library_versions(),
            "seconds": round(time.perf_counter() - t0, 3),
        }
        (tmp / EXPORT_FILE).write_text(json.dumps(doc, indent=2, sort_keys=True, default=str) + "\n")
        _usual_permissions(tmp)  # mkdtemp (and the exporter's own temporaries) make them private
        if out.exists():
            out.rmdir()  # empty (checked above)
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return {**doc, "out": str(out)}


def _usual_permissions(folder: Path) -> None:
    from ..store.atomic import _umask

    mask = _umask()
    folder.chmod(0o777 & ~mask)
    for path in folder.rglob("*"):
        path.chmod((0o777 if path.is_dir() else 0o666) & ~mask)


def _check_quality(expected: dict[str, Any], quality: dict[str, Any], inputs: Any) -> dict[str, float]:
    out = {}
    for metric in ("kl_mean", "ppl_ratio", "top1_agreement"):
        a, b = expected.get(metric), quality.get(metric)
        if not isinstance(a, int | float) or b is None:
            continue
        out[metric] = float(b)
        if abs(a - b) > QUALITY_RTOL * max(abs(a), abs(b)) + 1e-7:
            raise QuantsweepError(
                f"{inputs.cell_dir}: the rebuilt model does not reproduce the cell's {metric} ({b:.6g} against "
                f"{a:.6g} in {inputs.summary_path}): nothing exported",
                ExitCode.INTERNAL,
            )
    return out


def _groups(manifest: dict[str, Any]) -> tuple[set[str], set[str]]:
    """Module names of the decision groups the recipe quantizes, and of those it leaves at 16 bits."""
    chosen, unchosen = set(), set()
    for g in manifest.get("layers") or []:
        names = set(g.get("module_names") or [g.get("name")])
        (unchosen if g.get("chosen") == "none" else chosen).update(names)
    return chosen, unchosen


def _fake_quantized_weights(model: Any) -> dict[str, Any]:
    """Per quantized linear with an enabled weight quantizer: its fake-quantized weight (float32, on the CPU)."""
    import torch

    out = {}
    with torch.no_grad():
        for name, module in model.named_modules():
            q = getattr(module, "weight_quantizer", None)
            if q is None or not getattr(q, "is_enabled", False) or getattr(module, "weight", None) is None:
                continue
            out[name] = q(module.weight).detach().float().cpu()
    return out


def _read_back(folder: Path, chosen: set[str], unchosen: set[str], fake: dict[str, Any]) -> dict[str, Any]:
    import torch
    from safetensors import safe_open

    hf_cfg_path = folder / "hf_quant_config.json"
    if not hf_cfg_path.is_file():
        raise QuantsweepError(f"{folder}: the exporter wrote no hf_quant_config.json", ExitCode.INTERNAL)
    hf_cfg = json.loads(hf_cfg_path.read_text())
    tensors: dict[str, Any] = {}
    for shard in sorted(folder.glob("*.safetensors")):
        with safe_open(str(shard), framework="pt") as fh:
            for key in fh.keys():
                tensors[key] = fh.get_tensor(key)
    problems = []
    for name in sorted(chosen):
        if f"{name}.weight_scale" not in tensors:
            problems.append(f"{name} is quantized in the recipe but stored without a weight_scale")
    for name in sorted(unchosen):
        if f"{name}.weight_scale" in tensors:
            problems.append(f"{name} is 16-bit in the recipe but stored quantized")
    compared, largest, largest_steps, differing, total, skipped = 0, 0.0, 0.0, 0, 0, set()
    for name in sorted(chosen):
        w, scale = tensors.get(f"{name}.weight"), tensors.get(f"{name}.weight_scale")
        if w is None or scale is None or name not in fake:
            continue
        if w.dtype not in (torch.int8, torch.float8_e4m3fn) or w.shape != fake[name].shape:
            skipped.add(str(w.dtype))  # packed formats (INT4, FP4): not dequantized here
            continue
        s = scale.float()
        s = s.reshape(-1, 1) if s.numel() == w.shape[0] else s
        deq = w.float() * s
        diff = (deq - fake[name]).abs()
        steps = diff / s.abs().clamp_min(1e-30) if w.dtype == torch.int8 else diff / (s.abs() * 2**-3)  # FP8: 3 bits
        compared += 1
        largest = max(largest, float(diff.max()))
        largest_steps = max(largest_steps, float(steps.max()))
        differing += int((steps > 1e-3).sum())
        total += diff.numel()
        if float(steps.max()) > 1.0 + 1e-3:
            problems.append(f"{name}: stored weights differ from the evaluated model's by {float(steps.max()):.3g} "
                            "quantization steps")
    if total and differing / total > 0.01:
        problems.append(f"{differing} of {total} stored weights differ from the evaluated model's")
    if problems:
        raise QuantsweepError(f"{folder}: the exported checkpoint does not match the recipe: " + "; ".join(problems[:5]),
                              ExitCode.INTERNAL)
    algo = (hf_cfg.get("quantization") or {}).get("quant_algo")
    excluded = (hf_cfg.get("quantization") or {}).get("exclude_modules") or []
    leaked = sorted(n for n in chosen if any(fnmatch.fnmatch(n, p) for p in excluded))
    if leaked:
        raise QuantsweepError(f"{folder}: hf_quant_config excludes modules the recipe quantizes: {leaked[:5]}",
                              ExitCode.INTERNAL)
    return {
        "quant_algo": algo,
        "quantized_modules": len(chosen),
        "unquantized_modules": len(unchosen),
        "dequantized_weights_compared": compared,
        "largest_weight_difference": largest,
        "largest_weight_difference_steps": largest_steps,  # in quantization steps (FP8: of the top binade's)
        "weights_differing": differing,
        "weights_compared": total,
        "not_dequantized_dtypes": sorted(skipped),
    }
