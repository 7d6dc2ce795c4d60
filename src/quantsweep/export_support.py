"""Plan-time exportability: can `quantsweep export` write a cell's format as a unified Hugging Face checkpoint that
*is* the model the sweep measured? Answered from the format and the model's layer shapes alone (pure: no torch).

Why: a sweep can rank first a cell that ModelOpt's unified exporter (`modelopt.torch.export.export_hf_checkpoint`,
ModelOpt 0.47) then refuses (INT8 in groups of 64 made it try to allocate 618 GB; INT4 groups of 128 cannot pack
SmolLM2's 576-wide layers), or exports under a label that describes another model (FP8 weight-only is written as
`FP8`, i.e. with FP8 activations; `quantsweep export`'s read-back check then refuses it). The user should learn that
from `dry-run`, reports should never recommend such a cell, and `export` should refuse it before loading a model.

Every rule below is ModelOpt 0.47 behaviour, read from `modelopt/torch/export/quant_utils.py` (`qu`) and
`unified_export_hf.py` (`ue`), or a check of `quantsweep export` itself (`export/checkpoint.py`, `export/unpack.py`),
and each was confirmed by running the real exporter on the tiny model (tests/test_export_support.py):

1. **The label.** `qu.get_quantization_format` labels a linear from its *weight* quantizer alone: `num_bits` 8 ->
   INT8 (`W8A16` without input quantizer, else `W8A8_SQ_PER_CHANNEL`); 4 -> `W4A16_AWQ` whatever the inputs;
   E4M3 -> `MXFP8` (dynamic blocks, E8M0 scales), block-wise FP8 (other blocks), `FP8_PER_CHANNEL_PER_TOKEN`
   (axis 0) or `FP8`; E2M1 -> `W4A16_NVFP4` (no input quantizer), `W4A8_NVFP4_FP8` (per-tensor FP8 inputs),
   `NVFP4` (E4M3 block scales) or `MXFP4` / `W4A8_MXFP4_FP8` (E8M0 scales); any other `num_bits` (FP6, INT2 ...)
   raises `NotImplementedError`.
2. **The label must describe the measured activations.** An engine quantizes the inputs as the label says
   (`export/unpack.py` `ALGOS`), and `quantsweep export` refuses a checkpoint whose label disagrees with the
   evaluated model (exit 1): `W8A16`/`W4A16_*` need unquantized inputs, `W8A8_SQ_PER_CHANNEL` static per-tensor
   INT8 inputs, `FP8` static per-tensor FP8 inputs, `FP8_PER_CHANNEL_PER_TOKEN` per-token dynamic FP8 inputs,
   `W4A8_NVFP4_FP8` per-tensor FP8 inputs, `NVFP4` NVFP4 inputs in blocks of the weight's block size (the
   checkpoint has one `group_size` for both: `export/checkpoint.py` `_read_back`).
3. **INT8 weights: one scale per output channel.** `qu.to_quantized_weight` divides by `scale[:, None]`: a
   per-tensor scale (0-d) cannot be indexed, a per-input-channel or block scale broadcasts into a 3-D tensor (the
   618 GB allocation). Only `axis: 0` without blocks exports.
4. **INT4 weights: blocks only, that divide every input width, on an even number of output rows.**
   `qu.get_quantization_format` asserts INT4 `block_sizes` (none: `TypeError`), `qu._validate_int4_block_size`
   refuses partial blocks ("Cannot pack weight with input dimension 64 and block size 128"),
   `qu.pack_int4_in_uint8` packs two output rows per byte (asserts an even row count).
5. **FP8 weights: per tensor or per output channel.** Block-wise FP8 (`FP8_PB_WO`) is packed with square 2-D
   blocks against 1-D block scales ("Mismatch in expected scale shape"); a per-input-channel scale is stored as
   `[1, in]`, which the checkpoint format (a scalar or one scale per output row) cannot hold.
6. **FP4 weights: in blocks.** `qu.get_quantization_format` reads `block_sizes.get("scale_bits")`: an E2M1
   weight quantizer without blocks fails there.
7. **MX formats.** The catalogue's MX pairs quantize activations in dynamic E8M0 blocks; exporting MXFP8 so fails
   inside ModelOpt 0.47 (`TypeError`, measured); MXINT8 is an INT8 weight in blocks (rule 3) and MXFP6 an
   unsupported `num_bits` (rule 1).
8. **AWQ / SmoothQuant on layers that share an input.** `ue.requantize_resmooth_fused_llm_layers` ->
   `qu.preprocess_linear_fusion` replaces the `pre_quant_scale` of linears fed by the same tensor (q/k/v, gate/up)
   with their mean and re-quantizes their weights: the stored weights are no longer the measured ones (measured on
   the tiny model: SmoothQuant 96 INT8 levels apart, AWQ-lite 2 INT4 levels). Not refused at plan time: the
   checkpoint is another rounding of the recipe, and `quantsweep export` judges it by the reloaded checkpoint's
   own KL to the unquantized model (at most 1.25x the evaluated cell's; docs/export.md). `shared_input_layers`
   names such layers.

A cell is exportable when every layer its recipe may quantize (the model's searched linears, minus
`autoquant.disabled_layers`) passes: shape rules are checked against the plan's layer shapes
(`model_shapes.py`). `None` means unknown: the format passes the shape-free rules but the shapes could not be
read. Exit codes of a refused export are documented in docs/export.md.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from .catalogue import INPUT_KEY, WEIGHT_KEY
from .model_shapes import Linear, ModelShapes
from .quant_summary import _quantizer_state, describe_attributes

NVFP4_SCALE = (4, 3)
MX_SCALE = (8, 0)


@dataclass(frozen=True)
class Exportability:
    """`exportable`: True, False (with a one-line `reason`) or None (unknown: shapes not readable)."""

    exportable: bool | None
    reason: str | None = None
    quant_algo: str | None = None  # the unified checkpoint's label for the format (hf_quant_config.json)

    def to_dict(self) -> dict[str, Any]:
        return {"exportable": self.exportable, "reason": self.reason, "quant_algo": self.quant_algo}


@dataclass(frozen=True)
class _Format:
    """What the exporter will make of a format, before looking at shapes."""

    algo: str | None  # None: the format cannot be exported at all (reason says why)
    reason: str | None = None
    block: int | None = None  # weight block along the input dimension, when the shape rules need it
    int4: bool = False  # packed two output rows per byte (rule 4)


# --- reading quantizer attributes (ModelOpt's config as written in matrices, recipes and the catalogue) --------
def _enabled(attrs: Any) -> bool:
    return isinstance(attrs, Mapping) and attrs.get("enable", True) is not False


def _bits(attrs: Mapping[str, Any]) -> Any:
    nb = attrs.get("num_bits", 8)
    return tuple(nb) if isinstance(nb, list | tuple) else nb


def _block(attrs: Mapping[str, Any]) -> dict[Any, Any] | None:
    b = attrs.get("block_sizes")
    return b if isinstance(b, Mapping) and b else None


def _last_block(attrs: Mapping[str, Any]) -> int | None:
    """The block size along the input dimension (`block_sizes[-1]`; JSON writes the key as "-1")."""
    b = _block(attrs)
    if b is None:
        return None
    v = b.get(-1, b.get("-1"))
    return int(v) if isinstance(v, int) and not isinstance(v, bool) and v > 0 else None


def _scale_bits(attrs: Mapping[str, Any]) -> tuple[int, ...] | None:
    b = _block(attrs) or {}
    sb = b.get("scale_bits")
    return tuple(sb) if isinstance(sb, list | tuple) else None


def _dynamic(attrs: Mapping[str, Any]) -> bool:
    return attrs.get("type") == "dynamic" or (_block(attrs) or {}).get("type") == "dynamic"


def _per_token(attrs: Mapping[str, Any]) -> bool:
    """Per-token dynamic activations: blocks over the last dimension with no size (`{-1: None}`), or an axis."""
    b = _block(attrs)
    if b is not None:
        sizes = [v for k, v in b.items() if k not in ("type", "scale_bits")]
        return bool(sizes) and all(v is None for v in sizes) and _dynamic(attrs)
    return attrs.get("axis") is not None and _dynamic(attrs)


def _per_tensor_static(attrs: Mapping[str, Any]) -> bool:
    return _block(attrs) is None and attrs.get("axis") is None and not _dynamic(attrs)


# --- the format rules (1-3, 5-7 of the module docstring) -----------------------------------------------------
def _expect_inputs(algo: str, inputs: Mapping[str, Any] | None, ok: bool, wanted: str) -> _Format | None:
    """Rule 2: None when the measured inputs are what the label says, else the refusal."""
    if ok:
        return None
    have = "unquantized" if inputs is None else describe_attributes(inputs)
    return _Format(None, f"the exporter labels this weight format {algo}, which means {wanted} activations, but "
                         f"the cell's activations are {have}: the checkpoint would be another model than the one "
                         "measured")


def classify_format(weight: Any, inputs: Any) -> _Format:
    """The exporter's label for a (weight, input) quantizer pair, or why it cannot be exported (shape-free)."""
    if isinstance(weight, list) or isinstance(inputs, list):
        return _Format(None, "a sequential (multi-stage) quantizer, which the exporter supports only as W4A8_AWQ "
                             "(INT4 then FP8 weights), is not a catalogue format quantsweep exports")
    if not _enabled(weight):
        return _Format("none")  # nothing quantized: the checkpoint is the 16-bit model
    act = inputs if _enabled(inputs) else None
    if act is not None and _scale_bits(act) == MX_SCALE and _bits(weight) == (2, 1):
        # measured with MXFP8 (TypeError); MXFP4 with MX inputs goes through the same input-scale code
        return _Format(None, "MX activations: ModelOpt 0.47's exporter fails on MX input quantizers (TypeError "
                             "measured with MXFP8)")
    bits = _bits(weight)
    wdesc = describe_attributes(weight)
    if bits == 8:  # rules 1, 3, 7 (MXINT8)
        if _block(weight) is not None or weight.get("axis") != 0:
            return _Format(None, f"INT8 weights ({wdesc}) export only with one scale per output channel: the "
                                 "exporter divides by scale[:, None] (blocks broadcast into a huge 3-D tensor)")
        if act is None:
            return _Format("W8A16")
        algo = "W8A8_SQ_PER_CHANNEL"
        bad = _expect_inputs(algo, act, _bits(act) == 8 and _per_tensor_static(act), "static per-tensor INT8")
        return bad or _Format(algo)
    if bits == 4:  # rules 1, 4
        block = _last_block(weight)
        if block is None:
            return _Format(None, f"INT4 weights ({wdesc}) export only in blocks (W4A16_AWQ): the exporter asserts "
                                 "INT4 block sizes")
        algo = "W4A16_AWQ"
        bad = _expect_inputs(algo, act, act is None, "unquantized (16-bit)")
        return bad or _Format(algo, block=block, int4=True)
    if bits == (4, 3):  # rules 1, 2, 5, 7 (MXFP8)
        block = _last_block(weight)
        if _block(weight) is not None:
            if _scale_bits(weight) == MX_SCALE and _dynamic(weight):
                return _Format(None, "MXFP8 weights with MX activations: ModelOpt 0.47's exporter fails on them "
                                     "(TypeError while writing the MX input scales)")
            return _Format(None, f"block-wise FP8 weights ({wdesc}) are not exportable: the exporter packs them in "
                                 "square 2-D blocks against 1-D block scales ('Mismatch in expected scale shape')")
        axis = weight.get("axis")
        if axis == 0:
            algo = "FP8_PER_CHANNEL_PER_TOKEN"
            ok = act is not None and _bits(act) == (4, 3) and _per_token(act)
            return _expect_inputs(algo, act, ok, "per-token dynamic FP8") or _Format(algo)
        if axis is None:
            ok = act is not None and _bits(act) == (4, 3) and _per_tensor_static(act)
            return _expect_inputs("FP8", act, ok, "static per-tensor FP8") or _Format("FP8")
        return _Format(None, f"FP8 weights ({wdesc}) export only per tensor or per output channel: a per-input-"
                             "channel scale does not fit the checkpoint's weight_scale")
    if bits == (2, 1):  # rules 1, 2, 6, 7 (MXFP4)
        block = _last_block(weight)
        if block is None:
            return _Format(None, f"FP4 weights ({wdesc}) export only in blocks: the exporter reads their block "
                                 "scale type")
        if _scale_bits(weight) == MX_SCALE:
            fp8_inputs = act is not None and _bits(act) == (4, 3) and _block(act) is None
            return _Format("W4A8_MXFP4_FP8" if fp8_inputs else "MXFP4", block=block)
        if act is None:
            return _Format("W4A16_NVFP4", block=block)
        if _bits(act) == (4, 3) and _block(act) is None and _dynamic(weight):
            return _Format("W4A8_NVFP4_FP8", block=block)
        ok = _bits(act) == (2, 1) and _last_block(act) == block
        if not ok and _bits(act) == (2, 1) and _last_block(act) is not None:
            return _Format(None, f"NVFP4 weight blocks ({block}) must equal the input blocks ({_last_block(act)}): "
                                 "the checkpoint has one group_size for both")
        return _expect_inputs("NVFP4", act, ok, f"NVFP4 (blocks of {block})") or _Format("NVFP4", block=block)
    return _Format(None, f"weights {wdesc}: the exporter supports no format with num_bits {list(bits) if isinstance(bits, tuple) else bits} "
                         "(NotImplementedError)")


# --- the shape rules (4, and block divisibility of the block formats) ------------------------------------------
def _shape_problem(fmt: _Format, layer: Linear) -> str | None:
    if fmt.block is not None and layer.in_features % fmt.block:
        return f"input width {layer.in_features} is not a multiple of the weight block {fmt.block}"
    if fmt.int4 and layer.out_features % 2:
        return f"{layer.out_features} output rows (INT4 packs two rows per byte: an even count is needed)"
    return None


def _shape_dependent(fmt: _Format) -> bool:
    return fmt.block is not None or fmt.int4


# linears fed by one tensor in the Llama-family decoders model_shapes.py describes (rule 8)
SHARED_INPUT_SETS = (("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"), ("mlp.gate_proj", "mlp.up_proj"))
SMOOTHING_METHODS = ("awq", "smoothquant")  # calibrations that fold a pre_quant_scale into the inputs


def smoothing_calibration(algorithm: Any) -> str | None:
    """The calibration method if it is AWQ (any variant) or SmoothQuant, else None."""
    method = algorithm.get("method") if isinstance(algorithm, Mapping) else algorithm
    return method if isinstance(method, str) and method.startswith(SMOOTHING_METHODS) else None


def shared_input_layers(layers: Sequence[Linear]) -> list[Linear]:
    """The layers that share their input with another of `layers` (q/k/v of one attention, gate/up of one MLP)."""
    names = {x.name for x in layers}
    out = []
    for x in layers:
        for group in SHARED_INPUT_SETS:
            suffix = next((g for g in group if x.name.endswith("." + g)), None)
            if suffix is not None:
                prefix = x.name[: -len(suffix)]
                if sum(prefix + g in names for g in group) > 1:
                    out.append(x)
    return out


def exportable_layers(shapes: ModelShapes, disabled: Sequence[str] = ()) -> list[Linear]:
    """The linears a recipe may quantize: every searched linear not kept at 16 bits by `disabled_layers`."""
    return [x for x in shapes.linears if not any(fnmatch.fnmatch(x.name, p) for p in disabled)]


def config_exportability(config: Mapping[str, Any], shapes: ModelShapes | None, disabled: Sequence[str] = (),
                         quantized: Iterable[str] | None = None) -> Exportability:
    """Exportability of one format (a ModelOpt quantization config, as the plan resolves it) on a model.

    The layers checked are those a recipe may quantize (`exportable_layers`); `quantized` narrows them to the
    module names a finished recipe does quantize (export's own check)."""
    fmt = classify_format(_quantizer_state(config, WEIGHT_KEY), _quantizer_state(config, INPUT_KEY))
    if fmt.algo is None:
        if quantized is not None and not set(quantized):
            return Exportability(True, None, None)  # the recipe quantizes nothing: a 16-bit checkpoint
        return Exportability(False, fmt.reason)
    smoothing = smoothing_calibration(config.get("algorithm"))
    if not _shape_dependent(fmt) and smoothing is None:
        return Exportability(True, None, fmt.algo)
    if shapes is None:
        return Exportability(None, "the model's layer shapes could not be read at plan time", fmt.algo)
    layers = exportable_layers(shapes, disabled)
    if quantized is not None:
        chosen = set(quantized)
        layers = [x for x in layers if x.name in chosen]
        if not layers:
            return Exportability(True, None, fmt.algo)
    bad = [(x, p) for x in layers if (p := _shape_problem(fmt, x)) is not None]
    if bad:
        first, problem = bad[0]
        return Exportability(False, f"{fmt.algo}: {len(bad)} of {len(layers)} layers cannot be packed ({first.name}: "
                                    f"{problem})", fmt.algo)
    # AWQ / SmoothQuant on layers that share an input (rule 8) are not refused: the exporter re-smooths them, and
    # `quantsweep export` judges the result by the reloaded checkpoint's quality (docs/export.md)
    return Exportability(True, None, fmt.algo)


def combined(results: Iterable[Exportability]) -> Exportability:
    """Exportability of a cell whose recipe may use any of several formats: the first refusal, else unknown if any
    is unknown, else exportable (labels joined)."""
    results = list(results)
    for r in results:
        if r.exportable is False:
            return r
    for r in results:
        if r.exportable is None:
            return r
    algos = sorted({r.quant_algo for r in results if r.quant_algo})
    return Exportability(True, None, "+".join(algos) or None)


def recipe_exportability(config: Mapping[str, Any], layers: Sequence[Mapping[str, Any]], shapes: ModelShapes | None,
                         disabled: Sequence[str], chosen: set[str]) -> Exportability:
    """A finished cell's exportability: its format on the modules its recipe quantizes; a format menu's
    (menus.py), each member on the modules of the groups that chose it (a mixed recipe is exported as
    MIXED_PRECISION, each layer in its own format), and only with one calibration algorithm for all members."""
    from .menus import is_menu_config, menu_members

    if not is_menu_config(config):
        return config_exportability(config, shapes, disabled, chosen)
    if config.get("algorithm") is None:
        return Exportability(False, "the menu's formats calibrate with different algorithms; one checkpoint is "
                                    "rebuilt with one calibration algorithm")
    verdicts = []
    for label, member in menu_members(config):
        modules = {n for g in layers if g.get("chosen") == label
                   for n in (g.get("module_names") or [g.get("name")]) if isinstance(n, str)}
        if modules:
            verdicts.append(config_exportability(member, shapes, disabled, modules))
    return combined(verdicts) if verdicts else Exportability(True, None, None)


def check_cell_exportable(inputs: Any) -> None:
    """`quantsweep export`'s first check (before a model is loaded): the plan's rules applied to the cell's format
    and to the layers its recipe quantizes. A QuantsweepError (exit 2) with the reason when it cannot be exported.

    `inputs` is export/cell_inputs.py's `ExportInputs` (manifest, summary, row), already validated."""
    from .errors import ExitCode, QuantsweepError
    from .matrix_io import parse_matrix
    from .model_shapes import plan_shapes

    matrix = parse_matrix(inputs.summary["matrix"], str(inputs.summary_path))
    man = inputs.manifest
    config = (man.get("quantization") or {}).get("effective_config")
    if not isinstance(config, Mapping):
        return  # nothing to judge by: the exporter itself decides
    chosen = {n for g in man.get("layers") or [] if g.get("chosen") != "none"
              for n in (g.get("module_names") or [g.get("name")]) if isinstance(n, str)}
    from .overlay import from_jsonable

    config = from_jsonable(config)  # integer block-size axes, as the plan had them (the same reason text)
    verdict = recipe_exportability(config, man.get("layers") or [], plan_shapes(matrix.model),
                                   matrix.autoquant.disabled_layers, chosen)
    if verdict.exportable is False:
        cell = man.get("cell") or {}
        raise QuantsweepError(f"{inputs.cell_dir}: quantsweep export cannot pack format {cell.get('pair')}/"
                              f"{cell.get('granularity')} (known at plan time, exportable: false): {verdict.reason}",
                              ExitCode.INVALID_INPUT)
