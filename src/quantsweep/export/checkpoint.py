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
import math
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from ..errors import ExitCode, InputError, QuantsweepError
from ..store.atomic import check_output_dir, make_dirs
from ..export_support import check_cell_exportable
from .cell_inputs import locate

QUALITY_RTOL = 1e-3
EXPORT_FILE = "quantsweep-export.json"
LOGITS_BATCHES = 1  # held-out batches the reloaded checkpoint is run on
LOGITS_KL_REL = 0.05  # its KL to the evaluated model: at most 5 % of the cell's own KL to the baseline ...
LOGITS_UNIFIED_WORSE = 1.25  # re-derived fused layers: the checkpoint's KL to the unquantized model <= 1.25x the cell's
LOGITS_KL_ABS = 1e-6  # ... or this, for cells that barely differ from the baseline
LOGITS_TOP1_MIN = 0.99


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
    check_cell_exportable(inputs)  # the plan's exportability rules (export_support.py): refused before loading

    from ..engine.cell_model import apply_recipe, cell_calibration
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

    matrix = parse_matrix(inputs.summary["matrix"], str(inputs.summary_path))
    if device is not None:
        matrix = matrix.model_copy(update={"model": matrix.model.model_copy(update={"device": device})})
    man = inputs.manifest
    calibration = cell_calibration(man)  # the rules the lm-eval post-phase rebuilds a cell with (engine/cell_model.py)
    calib_samples, batch, steps, algorithm = (calibration.samples, calibration.batch_size, calibration.steps,
                                              calibration.algorithm)
    _check_algorithm(algorithm, inputs.cell_dir)
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
    base_check = baseline_outputs(base_model, evals[:LOGITS_BATCHES])  # for the reload check's samples
    del base_model
    model = loaded.take_model()
    config = {**load_recipe(inputs.recipe_path), "algorithm": algorithm}
    message(f"quantizing with the cell's recipe ({steps} calibration batches, algorithm {json.dumps(algorithm)})")
    model = apply_recipe(model, config, calibration, calib)
    quality = compare_to_baseline(model, evals, base)
    expected = inputs.row.get("quality") or {}
    reproduced = _check_quality(expected, quality, inputs)

    evaluated = _evaluated_layers(model)
    chosen, unchosen = _groups(man)
    check_batches = evals[:LOGITS_BATCHES]
    reference = baseline_outputs(model, check_batches)  # the evaluated model's outputs, for the reload check
    evaluated_kl = float(compare_to_baseline(model, check_batches, base_check)["kl_mean"])  # the same samples
    dtype = next(model.parameters()).dtype
    retied = _retie_unquantized_head(model)
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
        del model  # the reload below holds a second model: not both at once
        tensors = _read_tensors(tmp)
        checks, formats = _read_back(tmp, tensors, chosen, unchosen, evaluated)
        del evaluated
        message("reloading the checkpoint without ModelOpt and comparing its outputs with the evaluated model's")
        unified = checks["global_scale_unified_layers"]
        rounded = checks["rounded_in_weight_dtype_layers"]
        checks["logits"] = _compare_logits(tmp, tensors, formats, reference, check_batches, dtype, loaded.device,
                                           expected.get("kl_mean"), bool(unified or rounded), base_check,
                                           evaluated_kl)
        if rounded:
            lg = checks["logits"]
            message(f"warning: the checkpoint is not the evaluated model to the bit: ModelOpt's exporter rounds FP8 "
                    f"weights in their {str(dtype).removeprefix('torch.')} dtype before FP8 "
                    f"({len(rounded)} layers, {checks['weights_differing_by_weight_dtype_rounding']} weights a level "
                    f"apart); on {lg['samples']} held-out samples its KL to the unquantized model is "
                    f"{lg['checkpoint_kl_to_unquantized']:.3g} against the evaluated cell's "
                    f"{lg['evaluated_kl_to_unquantized']:.3g}")
        if unified:
            lg = checks["logits"]
            message(f"warning: the checkpoint is not the evaluated model to the bit: ModelOpt's exporter re-derived "
                    f"the scales of {len(unified)} layers for fusion with their neighbours "
                    f"({checks['weights_differing_by_unified_scale']} weights a level apart); on "
                    f"{lg['samples']} held-out samples its KL to the unquantized model is "
                    f"{lg['checkpoint_kl_to_unquantized']:.3g} against the evaluated cell's "
                    f"{lg['evaluated_kl_to_unquantized']:.3g} (KL {lg['kl_mean']:.3g} between the two)")
        del tensors
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
            "lm_head_tied_to_embeddings": retied,
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


def _retie_unquantized_head(model: Any) -> bool:
    """Tie lm_head to the input embedding again when the recipe left it at 16 bits and it still equals it.

    The model is untied for AutoQuantize (engine/models.py::untie_lm_head), so its config says
    `tie_word_embeddings: false`; ModelOpt's exporter then drops `lm_head.weight` as a duplicate of the embedding
    all the same, and the checkpoint has an untied config without an lm_head — which transformers and vLLM would
    load with a missing (random) lm_head. Found by the reload check below. A quantized lm_head stays untied (the
    exporter keeps both tensors then)."""
    import torch

    head, emb = model.get_output_embeddings(), model.get_input_embeddings()
    if head is None or emb is None or head.weight is emb.weight:
        return False
    q = getattr(head, "weight_quantizer", None)
    if (q is not None and getattr(q, "is_enabled", False)) or head.weight.shape != emb.weight.shape:
        return False
    if not torch.equal(head.weight, emb.weight):
        return False
    head.weight = emb.weight
    model.config.tie_word_embeddings = True
    return True


def _evaluated_layers(model: Any) -> dict[str, dict[str, Any]]:
    """Per linear with an enabled weight quantizer: its fake-quantized weight (on the CPU, in the model's dtype),
    the weight and activation families of its quantizers and its weight block size: what the evaluated model is."""
    import torch

    from .unpack import activation_family, weight_family

    out = {}
    with torch.no_grad():
        for name, module in model.named_modules():
            q = getattr(module, "weight_quantizer", None)
            fam = weight_family(q)
            if fam is None or getattr(module, "weight", None) is None:
                continue
            block = (getattr(q, "block_sizes", None) or {}).get(-1)
            iq = getattr(module, "input_quantizer", None)
            in_block = (getattr(iq, "block_sizes", None) or {}).get(-1) if activation_family(iq) != "none" else None
            scale_2 = None
            if fam == "fp4":  # the global scale the evaluated model used (ModelOpt's own reading of the quantizer)
                from modelopt.torch.quantization.qtensor.nvfp4_tensor import NVFP4QTensor

                with contextlib.suppress(AssertionError, AttributeError, TypeError):
                    scale_2 = float(NVFP4QTensor.get_weights_scaling_factor_2_from_quantizer(q).reshape(-1)[0])
            pqs = getattr(iq, "_pre_quant_scale", None) if getattr(iq, "_enable_pre_quant_scale", True) else None
            amax, bound = getattr(q, "amax", None), getattr(q, "maxbound", None)
            per_tensor = (float(amax.float().reshape(-1)[0]) / float(bound)
                          if fam in ("fp8", "int8") and amax is not None and amax.numel() == 1 and bound else None)
            exporter_levels = None
            if per_tensor is not None and fam == "fp8" and module.weight.dtype in (torch.bfloat16, torch.float16):
                exporter_levels = _exporter_fp8_levels(module.weight, per_tensor)
            out[name] = {
                "exporter_levels": exporter_levels,  # FP8 in 16 bits: the codes ModelOpt's exporter will store
                "scale_2": scale_2,
                "per_tensor_scale": per_tensor,  # FP8 / INT8 with one weight scale: amax / maxbound
                "pre_quant_scale": None if pqs is None else pqs.detach().float().cpu().reshape(-1),
                "fake": q(module.weight).detach().cpu(),
                "families": (fam, activation_family(iq)),
                "block": int(block) if block else None,
                "input_block": int(in_block) if in_block else None,
            }
    return out


def _exporter_fp8_levels(weight: Any, scale: float) -> Any:
    """The FP8 codes ModelOpt's exporter stores for a 16-bit weight with per-tensor scale `scale` (amax / 448).

    Why: its `to_quantized_weight` divides in the weight's dtype (`(W / scale).to(float8_e4m3fn)` with W in
    bf16), a rounding to bf16 before the rounding to FP8, where the fake quantization the cell was evaluated with
    (`_fp8_eager`, or the CUDA kernel) scales in float32 and rounds once. Measured on random bf16 weights
    (`benchmarks/diag/fp8_rounding.py`): 2.2 % of the codes land a level apart, on the CPU as on the GPU; in
    float32 one in a million. A checkpoint whose codes are exactly these is the exporter's rounding of the recipe,
    not an error in it, and is judged like the layers it re-derives for fusion."""
    import torch
    from modelopt.torch.export.quant_utils import to_quantized_weight

    from .unpack import _fp8_levels

    stored = to_quantized_weight(weight.detach(), torch.tensor(scale, device=weight.device, dtype=torch.float32), "fp8")
    return _fp8_levels(stored.cpu())


def _read_tensors(folder: Path) -> dict[str, Any]:
    from safetensors import safe_open

    tensors: dict[str, Any] = {}
    for shard in sorted(folder.glob("*.safetensors")):
        with safe_open(str(shard), framework="pt") as fh:
            for key in fh.keys():
                tensors[key] = fh.get_tensor(key)
    return tensors


def _rederived_for_fusion(tensors: dict[str, Any], name: str, ev: dict[str, Any]) -> bool:
    """True when the exporter gave this layer scales other than the evaluated model's (one scale per fused GEMM:
    the NVFP4 global scale, a per-tensor FP8 / INT8 weight scale, the AWQ / SmoothQuant pre-quant scale)."""
    ws = tensors.get(f"{name}.weight_scale")
    if ev.get("per_tensor_scale") is not None and ws is not None and ws.numel() == 1 and not math.isclose(
            float(ws.float().reshape(-1)[0]), ev["per_tensor_scale"], rel_tol=1e-3):
        return True
    s2 = tensors.get(f"{name}.weight_scale_2")
    if ev.get("scale_2") is not None and s2 is not None and not math.isclose(
            float(s2.float().reshape(-1)[0]), ev["scale_2"], rel_tol=1e-6):
        return True
    pqs, stored = ev.get("pre_quant_scale"), tensors.get(f"{name}.pre_quant_scale")
    if pqs is None:
        return False
    if stored is None:  # folded into the layer norm before it: compared through the logits only
        return True
    stored = stored.float().cpu().reshape(-1)
    return stored.shape != pqs.shape or not bool(((stored - pqs).abs() <= 1e-6 * pqs.abs().clamp_min(1e-30)).all())


def _read_back(folder: Path, tensors: dict[str, Any], chosen: set[str], unchosen: set[str],
               evaluated: dict[str, dict[str, Any]]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Per-layer formats and dequantized weights of the checkpoint against the evaluated model; the checks, and
    the per-layer formats (for the reload)."""
    import torch

    from .unpack import dequantize, layer_formats, levels_of

    hf_cfg_path = folder / "hf_quant_config.json"
    if not hf_cfg_path.is_file():
        raise QuantsweepError(f"{folder}: the exporter wrote no hf_quant_config.json", ExitCode.INTERNAL)
    hf_cfg = json.loads(hf_cfg_path.read_text())
    problems = []
    for name in sorted(chosen):
        if f"{name}.weight_scale" not in tensors:
            problems.append(f"{name} is quantized in the recipe but stored without a weight_scale")
    for name in sorted(unchosen):
        if f"{name}.weight_scale" in tensors:
            problems.append(f"{name} is 16-bit in the recipe but stored quantized")
    stored = {k.removesuffix(".weight_scale") for k in tensors if k.endswith(".weight_scale")}
    formats = layer_formats(hf_cfg, stored)
    labels: dict[str, int] = {}
    compared, largest, largest_levels, differing, total, skipped = 0, 0.0, 0, 0, 0, set()
    unified: list[str] = []
    rescaled = 0
    rounded: list[str] = []  # FP8 layers the exporter rounded in the weight's 16-bit dtype (_exporter_fp8_levels)
    rounded_levels = 0
    for name in sorted(stored & chosen):
        fmt = formats.get(name)
        if fmt is None:
            problems.append(f"{name} is stored quantized but hf_quant_config.json gives it no format")
            continue
        labels[fmt.algo] = labels.get(fmt.algo, 0) + 1
        ev = evaluated.get(name)
        if fmt.families is None:
            skipped.add(fmt.algo)  # a label this reader does not know (MX formats): not dequantized here
            continue
        if ev is None or fmt.families != ev["families"]:
            got = "not quantized" if ev is None else "weights {} / inputs {}".format(*ev["families"])
            problems.append(f"{name} is stored as {fmt.algo} (weights {fmt.families[0]} / inputs "
                            f"{fmt.families[1]}) but the evaluated model has {got}")
            continue
        try:
            deq = dequantize(fmt.families[0], tensors, name)
        except (ValueError, RuntimeError, KeyError) as exc:
            problems.append(f"{name} ({fmt.algo}): {exc}")
            continue
        if deq.weight.shape != ev["fake"].shape:
            problems.append(f"{name}: stored weight of shape {tuple(deq.weight.shape)} for a "
                            f"{tuple(ev['fake'].shape)} layer")
            continue
        if ev["block"] is not None and deq.block is not None and ev["block"] != deq.block:
            problems.append(f"{name}: stored in blocks of {deq.block} where the evaluated model used {ev['block']}")
        if fmt.group_size and ev["block"] is not None and fmt.group_size != ev["block"]:
            problems.append(f"{name}: hf_quant_config.json says group_size {fmt.group_size} where the evaluated "
                            f"model used blocks of {ev['block']}")
        if fmt.group_size and ev["input_block"] is not None and fmt.group_size != ev["input_block"]:
            problems.append(f"{name}: the checkpoint has one group_size ({fmt.group_size}) for weights and inputs, "
                            f"but the evaluated model quantized its inputs in blocks of {ev['input_block']}: an "
                            "engine would run another model than the one measured")
        fake = ev["fake"].float()
        diff = (deq.weight - fake).abs()
        levels = (deq.levels.int() - levels_of(fmt.families[0], fake, deq.scale).int()).abs()
        compared += 1
        largest = max(largest, float(diff.max()))
        if _rederived_for_fusion(tensors, name, ev):
            # ModelOpt's exporter gives layers an engine fuses (q/k/v, gate/up) one NVFP4 global scale (the
            # largest of theirs) and one AWQ / SmoothQuant pre-quant scale (their mean), and quantizes them again:
            # their stored weights are not the evaluated ones (a level apart). Counted apart; the reloaded logits
            # below say whether it matters.
            unified.append(name)
            rescaled += int((levels > 0).sum())
            continue  # another rounding: judged by the reloaded model's quality below, not weight by weight
        if int(levels.max()) > 1:
            problems.append(f"{name}: stored weights differ from the evaluated model's by {int(levels.max())} "
                            f"levels of {fmt.algo}")
        ex = ev.get("exporter_levels")
        if ex is not None and int(levels.max()) > 0 and ex.shape == deq.levels.shape and torch.equal(
                deq.levels.to(ex.dtype), ex):
            # every stored code is what the exporter's division in the weight's 16-bit dtype gives (see
            # _exporter_fp8_levels): another rounding of the same recipe, judged by the reloaded model's quality
            rounded.append(name)
            rounded_levels += int((levels > 0).sum())
            continue
        largest_levels = max(largest_levels, int(levels.max()))
        differing += int((levels > 0).sum())
        total += diff.numel()
    if problems:
        raise QuantsweepError(f"{folder}: the exported checkpoint does not match the recipe: " + "; ".join(problems[:5]),
                              ExitCode.INTERNAL)
    quant = hf_cfg.get("quantization") or {}
    excluded = quant.get("exclude_modules") or []
    leaked = sorted(n for n in chosen if any(fnmatch.fnmatch(n, p) for p in excluded))
    if leaked:
        raise QuantsweepError(f"{folder}: hf_quant_config excludes modules the recipe quantizes: {leaked[:5]}",
                              ExitCode.INTERNAL)
    return {
        "quant_algo": quant.get("quant_algo"),
        "layer_formats": dict(sorted(labels.items())),
        "quantized_modules": len(chosen),
        "unquantized_modules": len(unchosen),
        "dequantized_weights_compared": compared,
        "largest_weight_difference": largest,
        "largest_weight_difference_levels": largest_levels,  # on the format's grid (INT: steps; FP: codes)
        "weights_differing": differing,
        "weights_compared": total,
        # layers whose NVFP4 global scale or AWQ/SmoothQuant pre-quant scale the exporter shared with the layers
        # they are fused with, and quantized again (see _rederived_for_fusion)
        "global_scale_unified_layers": unified,
        "weights_differing_by_unified_scale": rescaled,
        # FP8 layers whose codes are the exporter's rounding in the weight's 16-bit dtype, and their codes a level
        # away from the evaluated model's (see _exporter_fp8_levels)
        "rounded_in_weight_dtype_layers": rounded,
        "weights_differing_by_weight_dtype_rounding": rounded_levels,
        "not_dequantized_formats": sorted(skipped),
    }, formats


def _compare_logits(folder: Path, tensors: dict[str, Any], formats: dict[str, Any], reference: Any,
                    batches: list[Any], dtype: Any, device: Any, cell_kl: float | None,
                    unified: bool = False, base: Any = None, evaluated_kl: float | None = None) -> dict[str, Any]:
    """The checkpoint reloaded without ModelOpt (export/reload.py) against the evaluated model's logits.

    When the checkpoint should be the evaluated model (no `global_scale_unified_layers`), its KL to the evaluated
    model must stay within 5 % of the cell's own KL to the unquantized model (or 1e-6), with top-1 agreement of
    at least 0.99. When the exporter re-derived the scales of layers an engine fuses (one NVFP4 global scale per
    fused GEMM, AWQ pre-quant scales folded into the layer norm, the weights quantized again) the checkpoint is
    another rounding of the same recipe, as far from the evaluated model as 4-bit noise goes; what matters then is
    that it is no further from the *unquantized* model than the evaluated one was: its KL to the unquantized model
    on the same samples must be at most 25 % above the evaluated model's (the command warns with both)."""
    from ..engine.quality import compare_to_baseline
    from .reload import reload_dequantized

    unread = sorted(f"{n} ({f.algo})" for n, f in formats.items() if f.families is None)
    if unread:  # a format this reader does not know (MX): the checkpoint cannot be rebuilt here, say so
        return {"samples": 0, "checked": False, "activations_not_emulated": unread,
                "reason": "formats not read back here: " + ", ".join(unread[:3])}
    try:
        model, not_emulated = reload_dequantized(folder, tensors, formats, dtype, device)
    except (ValueError, RuntimeError, KeyError, OSError) as exc:
        raise QuantsweepError(f"{folder}: the exported checkpoint cannot be loaded back as a model: {exc}",
                              ExitCode.INTERNAL) from None
    got = compare_to_baseline(model, batches, reference)
    own = float(compare_to_baseline(model, batches, base)["kl_mean"]) if base is not None else None
    del model
    kl, top1 = float(got["kl_mean"]), float(got["top1_agreement"])
    limit = max(LOGITS_KL_ABS, LOGITS_KL_REL * (cell_kl or 0.0))
    out = {"samples": sum(int(b["input_ids"].shape[0]) for b in batches), "kl_mean": kl,
           "kl_share_of_cell": kl / cell_kl if cell_kl else None, "top1_agreement": top1,
           "kl_limit": None if unified else limit, "activations_not_emulated": not_emulated,
           "checkpoint_kl_to_unquantized": own, "evaluated_kl_to_unquantized": evaluated_kl}
    if not_emulated:
        return out
    if unified and own is not None and evaluated_kl is not None:
        bound = LOGITS_UNIFIED_WORSE * evaluated_kl + LOGITS_KL_ABS
        out["checkpoint_kl_limit"] = bound
        if own > bound:
            raise QuantsweepError(
                f"{folder}: the exported checkpoint, reloaded, is further from the unquantized model than the "
                f"evaluated cell: KL {own:.3g} against {evaluated_kl:.3g} (at most {bound:.3g})", ExitCode.INTERNAL)
    elif kl > limit or top1 < LOGITS_TOP1_MIN:
        raise QuantsweepError(
            f"{folder}: the exported checkpoint, reloaded, does not give the evaluated model's outputs: KL "
            f"{kl:.3g} (limit {limit:.3g}), top-1 agreement {top1:.4f} (at least {LOGITS_TOP1_MIN})",
            ExitCode.INTERNAL,
        )
    return out
