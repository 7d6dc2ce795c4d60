"""Simulated quantization error of one weight matrix with ModelOpt's own fake quantizer.

A format is a catalogue name ``PAIR/GRANULARITY`` (``PAIR`` alone means ``PAIR/default``). Its effective ModelOpt
config is `apply_overlay(resolve_pair(PAIR).config, resolve_granularity(GRANULARITY).overrides)`, exactly as a
sweep cell gets it; the attributes of its ``*weight_quantizer`` entry build a
`modelopt.torch.quantization.nn.TensorQuantizer` (through `QuantizerAttributeConfig`), one fresh quantizer per
matrix (static block quantizers remember the shape they saw).

Calibration is ModelOpt's max calibration on the matrix itself (`enable_stats_collection` /
`finish_stats_collection` done by hand: calibrate with quantization off, load amax, quantize); dynamic formats
compute their scales on the fly. Data-dependent algorithms (AWQ, SmoothQuant) need activations, so their weights
are simulated with max calibration and the format carries a warning. The matrix is fake-quantized in float32
on `device` (the CPU by default). ModelOpt fake-quantizes NVFP4 and MX only on CUDA; as in `quantsweep run`,
the fake-quant backend ``auto`` routes those quantizers to quantsweep's pure-PyTorch backend
(`quantsweep.engine.torch_formats`, which reproduces ModelOpt's kernels) on a CPU and keeps ModelOpt's kernels on
CUDA; ``modelopt`` forces ModelOpt's, which then raises on a CPU, and the caller turns any such failure into an
error row.

Errors (W the matrix, Q its fake-quantized copy, eps = 1e-12; Q - W formed in float32, sums in float64):
``rel_fro`` = ||Q - W||_F / (||W||_F + eps), ``rel_max`` = max|Q - W| / (max|W| + eps),
``max_abs_err`` = max|Q - W|, ``sqnr_db`` = 10 log10(||W||_F^2 / ||Q - W||_F^2) (inf when Q == W).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any

import torch

from ..catalogue import GRANULARITIES, QUANT_PAIRS, WEIGHT_KEY
from ..errors import InputError
from ..overlay import OverlayError, apply_overlay, to_jsonable
from ..planning import resolve_granularity, resolve_pair
from ..quant_summary import calibration_method, describe_quantizer, format_bits

EPS = 1e-12
DEFAULT_FORMATS = ("wint8_afp16/default", "wint4_afp16/default", "wint4_afp16/w_group64", "wfp8_afp16/default")
ERROR_COLUMNS = ("rel_fro", "rel_max", "max_abs_err", "sqnr_db")


@dataclass(frozen=True)
class WeightFormat:
    name: str  # PAIR/GRANULARITY
    pair: str
    granularity: str
    attributes: Any  # the weight quantizer attributes (a dict, or a list for a sequential quantizer)
    description: str
    format_bits: float
    calibration: str | None
    needs_gpu: bool
    warnings: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "pair": self.pair,
            "granularity": self.granularity,
            "weight_quantizer": self.description,
            "attributes": to_jsonable({"a": self.attributes})["a"],
            "format_bits": self.format_bits,
            "calibration": self.calibration,
            "needs_gpu": self.needs_gpu,
            "warnings": list(self.warnings),
        }


def _weight_attributes(config: dict[str, Any]) -> Any:
    """The last enabled `*weight_quantizer` entry's cfg (ModelOpt applies entries in order, last wins)."""
    attrs: Any = None
    for entry in config.get("quant_cfg", []):
        if entry.get("quantizer_name") != WEIGHT_KEY or "parent_class" in entry:
            continue
        attrs = None if entry.get("enable", True) is False or entry.get("cfg") is None else entry["cfg"]
    return attrs


def split_format_list(values: list[str] | None) -> list[str]:
    """`--formats` values: repeated flags and/or comma/space separated; ``PAIR`` means ``PAIR/default``."""
    out: list[str] = []
    for v in values or []:
        for token in re.split(r"[,\s]+", v.strip()):
            if not token:
                continue
            name = token if "/" in token else f"{token}/default"
            if name not in out:
                out.append(name)
    return out


def resolve_format(name: str) -> WeightFormat:
    """A `PAIR/GRANULARITY` (or `PAIR`) catalogue name as a WeightFormat; InputError (exit 2) on an unknown name."""
    if "/" not in name:
        name = f"{name}/default"
    if name.count("/") != 1:
        raise InputError(f"--formats: {name!r} is not PAIR/GRANULARITY (e.g. wint4_afp16/w_group64)")
    pair_name, gran_name = name.split("/")
    if pair_name not in QUANT_PAIRS:
        raise InputError(
            f"--formats: unknown quant pair {pair_name!r} in {name!r}; known: {', '.join(QUANT_PAIRS)} "
            "(`quantsweep catalogue` lists them)"
        )
    if gran_name not in GRANULARITIES:
        raise InputError(f"--formats: unknown granularity {gran_name!r} in {name!r}; known: {', '.join(GRANULARITIES)}")
    pair = resolve_pair(pair_name)
    gran = resolve_granularity(gran_name)
    try:
        config, overlay_warnings = apply_overlay(pair.config, gran.overrides)
    except OverlayError as exc:
        raise InputError(f"--formats: {name}: {exc}") from exc
    attrs = _weight_attributes(config)
    if attrs is None:
        raise InputError(f"--formats: {name} does not quantize weights; nothing to simulate")
    warnings = [f"{name}: {w}" for w in overlay_warnings]
    calib = calibration_method(config)
    if calib not in (None, "max"):
        warnings.append(
            f"{name}: calibration {calib!r} needs activations; the weights-only simulation uses max calibration"
        )
    return WeightFormat(
        name=name,
        pair=pair_name,
        granularity=gran_name,
        attributes=attrs,
        description=describe_quantizer(config, WEIGHT_KEY),
        format_bits=format_bits(config),
        calibration=calib,
        needs_gpu=pair.needs_gpu,
        warnings=tuple(warnings),
    )


def _quantizer(attrs: dict[str, Any]):
    from modelopt.torch.quantization.config import QuantizerAttributeConfig
    from modelopt.torch.quantization.nn import TensorQuantizer

    return TensorQuantizer(QuantizerAttributeConfig(**attrs))


BACKENDS = ("auto", "modelopt", "torch")


def uses_torch_backend(fmt: WeightFormat, backend: str, device: torch.device | str) -> bool:
    """Whether NVFP4/MX quantizers of `fmt` go to quantsweep's pure-PyTorch backend (`engine/torch_formats.py`):
    always with ``torch``, on a non-CUDA device with ``auto`` (as `run` does), never with ``modelopt``."""
    from ..engine.torch_formats import needs_torch_backend

    if backend == "modelopt" or (backend == "auto" and torch.device(device).type == "cuda"):
        return False
    items = fmt.attributes if isinstance(fmt.attributes, list) else [fmt.attributes]
    return any(needs_torch_backend(a) for a in items)


def backend_name(fmt: WeightFormat, backend: str, device: torch.device | str) -> str:
    from ..engine.torch_formats import BACKEND_NAME

    return BACKEND_NAME if uses_torch_backend(fmt, backend, device) else "modelopt"


@torch.no_grad()
def fake_quantize(w: torch.Tensor, attributes: Any, torch_backend: bool = False) -> torch.Tensor:
    """Max-calibrate a fresh TensorQuantizer (or a sequence of them) on `w` and return its fake-quantized copy.

    `torch_backend`: NVFP4/MX quantizers use quantsweep's pure-PyTorch backend instead of ModelOpt's CUDA kernels.
    """
    out = w
    for attrs in attributes if isinstance(attributes, list) else [attributes]:
        if torch_backend:
            from ..engine import torch_formats

            if torch_formats.needs_torch_backend(attrs):
                torch_formats.register()
                attrs = {**attrs, "backend": torch_formats.BACKEND_NAME}
        tq = _quantizer(attrs).to(w.device)
        if not tq._disabled:
            if tq._calibrator is not None and not tq._dynamic:
                tq.disable_quant()
                tq.enable_calib()
                tq(out)
                tq.load_calib_amax()
                tq.enable_quant()
                tq.disable_calib()
            out = tq(out)
    return out


def reference(w: torch.Tensor) -> tuple[float, float]:
    """(||W||_F^2, max|W|) in float64, shared by every format of one matrix."""
    w = w.detach()
    return float(torch.linalg.vector_norm(w, dtype=torch.float64)) ** 2, float(w.abs().max()) if w.numel() else 0.0


def quant_errors(
    w: torch.Tensor, q: torch.Tensor, ref: tuple[float, float] | None = None, eps: float = EPS
) -> dict[str, float]:
    """Errors of Q against W; the difference is formed in W's dtype (float32: exact when Q and W are within a
    factor of 2 of each other, Sterbenz) and squared and summed in float64."""
    ref_sq, max_w = ref if ref is not None else reference(w)
    diff = q.detach() - w.detach()
    err_sq = float(torch.linalg.vector_norm(diff, dtype=torch.float64)) ** 2 if diff.numel() else 0.0
    max_err = float(diff.abs().max()) if diff.numel() else 0.0
    if err_sq == 0.0:
        sqnr = math.inf
    elif ref_sq == 0.0:
        sqnr = -math.inf
    else:
        sqnr = 10.0 * math.log10(ref_sq / err_sq)
    return {
        "rel_fro": math.sqrt(err_sq) / (math.sqrt(ref_sq) + eps),
        "rel_max": max_err / (max_w + eps),
        "max_abs_err": max_err,
        "sqnr_db": sqnr,
    }


def simulate(
    w: torch.Tensor,
    fmt: WeightFormat,
    device: torch.device | str = "cpu",
    ref: tuple[float, float] | None = None,
    backend: str = "auto",
) -> dict[str, float]:
    """The ERROR_COLUMNS of one (out, in) matrix under one format; raises whatever ModelOpt raises."""
    w32 = w.detach().to(device=device, dtype=torch.float32).contiguous()
    q = fake_quantize(w32, fmt.attributes, uses_torch_backend(fmt, backend, device))
    if q.shape != w32.shape:
        raise RuntimeError(f"fake quantization changed the shape {tuple(w32.shape)} -> {tuple(q.shape)}")
    return quant_errors(w32, q, ref)


def error_text(exc: BaseException, fmt: WeightFormat, device: torch.device | str = "cpu", backend: str = "auto") -> str:
    text = f"{type(exc).__name__}: {exc}".strip()
    if fmt.needs_gpu and torch.device(device).type != "cuda" and not uses_torch_backend(fmt, backend, device):
        text += (
            " (ModelOpt fake-quantizes this format only on CUDA: use --fake-quant-backend auto/torch, "
            "or --device cuda on a GPU)"
        )
    return text
