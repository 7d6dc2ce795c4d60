"""ModelOpt's max calibrator without its three host syncs per collected tensor.

`MaxCalibrator.collect(x)` (ModelOpt 0.47) reduces |x| to the running amax on the device, then asserts that the
new amax has no NaN, no negative value and no infinity: three `bool(tensor)` reads, each a device-to-host sync that
waits for everything queued so far. Every weight quantizer of every format is collected once
(`weight_only_quantize`), and every collecting quantizer once per calibration batch, so a union call makes
thousands of them; on a GPU each one stops the host from queueing the next kernels while the device drains. On the
8B-shaped matrix most of the weight-only calibration phase's host time was spent in `collect`.

`deferred_max_checks()` replaces `collect` with the same arithmetic (the same reduction, the same running maximum,
the same shape check and `track_amax` list) that folds the three checks into one boolean tensor kept on the
calibrator, and `compute_amax` raises an `AssertionError` (ModelOpt's type, a message of its own) from it when the
amax is read (`load_calib_amax`, once per quantizer when the format's calibration pass ends). The amax is bit for
bit ModelOpt's; a bad tensor still fails the calibration, at the end of its pass instead of at the batch. It is
installed only when ModelOpt's `collect` and `compute_amax` are the ones this was written against (their source's
hash): another version keeps its own.

After each format's calibration, `mtq.calibrate` validates every quantizer's amax and pre-quant scale with
`TensorQuantizer.validate_attr`: three more syncs each (non-negative, no infinity, no NaN). `_validate_attr` asks
the same question with one (the three reductions combined on the device), same answer, same warning or error.
Inside `model_quant.calibrate` (the function AutoQuantize's searcher imports; while installed, replaced by
`_calibrate_validated_together`; a call through the `mtq.calibrate` name keeps ModelOpt's loop) its validations —
warn, never raise, return value unused — are asked together when the call ends: every value's elements in one
tensor per device, one sync (~2,400 quantizers a union call on the reference matrix, one sync each before). When
any value is invalid, each is asked again one by one, which gives ModelOpt's warnings, in its order.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import inspect
import threading
from typing import Any

import torch

from .reentrant_patches import ReentrantPatches

# sha256 of the source of MaxCalibrator.collect + compute_amax, and of TensorQuantizer.validate_attr, in
# nvidia-modelopt 0.47.0: the methods replaced here
KNOWN_COLLECT = "96e5926caf33cc9c4e964fed2e40c8693e2a8efb6291d0c6833214d1c2537335"
KNOWN_VALIDATE = "bd2a8c2dd287a787def77b7d287d79d0b37bbb740f68915d3ab64eb7553364d7"
# ...and of mtq.calibrate (model_quant.calibrate), whose closing validations are asked together
KNOWN_CALIBRATE = "b1c5ed5f5cd48e392dcb66a37795b7c138f637f8b35b0121c48e001b7703d8db"

@functools.cache
def collect_source_hash() -> str | None:
    from modelopt.torch.quantization.calib.max import MaxCalibrator

    return source_hash(MaxCalibrator.collect, MaxCalibrator.compute_amax)


@functools.cache
def validate_source_hash() -> str | None:
    from modelopt.torch.quantization.nn import TensorQuantizer

    return source_hash(TensorQuantizer.validate_attr)


@functools.cache
def source_hash(*functions: Any) -> str | None:
    """The functions' source hashed (once per process), or None where it cannot be read (then nothing is
    replaced): the guard of every replacement of a ModelOpt function in the shared engine."""
    try:
        text = "".join(inspect.getsource(f) for f in functions)
    except (OSError, TypeError):
        return None
    return hashlib.sha256(text.encode()).hexdigest()


def _decide() -> tuple[bool, list[Any]]:
    from modelopt.torch.quantization import model_quant
    from modelopt.torch.quantization.calib.max import MaxCalibrator
    from modelopt.torch.quantization.nn import TensorQuantizer

    collect_ok = collect_source_hash() == KNOWN_COLLECT  # all read before anything is replaced
    validate_ok = validate_source_hash() == KNOWN_VALIDATE
    together = validate_ok and source_hash(model_quant.calibrate) == KNOWN_CALIBRATE
    replacements: list[Any] = []
    if collect_ok:
        replacements += [(MaxCalibrator, "collect", _collect), (MaxCalibrator, "compute_amax", _compute_amax)]
    if validate_ok:
        replacements.append((TensorQuantizer, "validate_attr", _validate_attr))
    if together:
        replacements.append((model_quant, "calibrate", _calibrate_validated_together))
    return collect_ok, replacements


_PATCHES = ReentrantPatches(_decide)


def deferred_max_checks() -> contextlib.AbstractContextManager[bool]:
    """Install the sync-free `collect` (re-entrant); yields whether it is installed (False: another ModelOpt).

    Class-level, so every thread sees it while it is installed; the shared engine's only other thread solves
    stability bootstraps (numpy and HiGHS, no ModelOpt), and the naive engine never runs inside it."""
    return _PATCHES.active()


@torch.no_grad()
def _collect(self: Any, x: torch.Tensor) -> None:
    """MaxCalibrator.collect (ModelOpt 0.47), its three asserts deferred to `compute_amax`.

    The amax is ModelOpt's `reduce_amax` (max(|max x|, |min x|), without a copy of `x`). For a floating-point `x`
    (every tensor a quantizer calibrates on) it is never negative, so ModelOpt's three checks ask whether it is
    finite; a non-finite value survives every later maximum, so `_deferred_max`, the running maximum of the local
    amaxes (the running amax itself until something else sets `_calib_amax`: `reset`, a twin's copy), answers them
    for every collected tensor at once: six device operations a collect instead of thirteen. A running maximum that
    cannot take the next amax (its shape or device changed after a reset) is folded into `_deferred_invalid` and
    restarted. Integer tensors (|x| of the most negative value overflows) keep a per-call flag of the three checks."""
    from modelopt.torch.quantization import utils as quant_utils

    reduce_axis = quant_utils.convert_quantization_axis_to_reduce_axis(x, self._axis)
    local_amax = quant_utils.reduce_amax(x, axis=reduce_axis).detach()
    if x.device.type == "meta":
        self._calib_amax = local_amax
        return
    state = self.__dict__
    floating = x.is_floating_point()
    running = state.get("_deferred_max") if floating else None
    tied = running is not None and running is self._calib_amax
    if not floating:
        _flag(self, (torch.isnan(local_amax) | (local_amax < 0) | torch.isinf(local_amax)).any())
    elif running is not None and not tied and (running.shape != local_amax.shape or running.device != local_amax.device):
        _flag(self, ~torch.isfinite(running).all())
        running = None
    if self._calib_amax is None:
        self._calib_amax = local_amax
    else:
        if local_amax.shape != self._calib_amax.shape:
            raise RuntimeError("amax shape changed!")
        self._calib_amax = torch.max(self._calib_amax, local_amax)
    if floating:
        if running is None:
            self._deferred_max = local_amax  # the running amax itself after a first collect: tied from here on
        elif tied:
            self._deferred_max = self._calib_amax
        else:
            self._deferred_max = torch.maximum(running, local_amax)
    if self._track_amax:
        self._amaxs.append(local_amax.cpu().numpy())


def _flag(calibrator: Any, invalid: torch.Tensor) -> None:
    pending = calibrator.__dict__.get("_deferred_invalid")
    calibrator._deferred_invalid = invalid if pending is None else pending | invalid


def _compute_amax(self: Any) -> Any:
    """MaxCalibrator.compute_amax, after the checks `_collect` deferred (one sync per quantizer)."""
    running = self.__dict__.pop("_deferred_max", None)
    pending = self.__dict__.pop("_deferred_invalid", None)
    if running is not None:
        finite = torch.isfinite(running).all()
        pending = ~finite if pending is None else pending | ~finite
    if pending is not None and bool(pending):
        raise AssertionError("detected nan, inf or negative values in amax (checked when the amax was read)")
    return self._calib_amax


def _validate_attr(
    self: Any, attr_value: Any = None, attr_name: str = "amax", raise_error: bool = False, warn_error: bool = False,
    name: str = "",
) -> bool:
    """TensorQuantizer.validate_attr (ModelOpt 0.47) with its three checks read in one sync."""
    import warnings

    attr_value = attr_value if attr_value is not None else getattr(self, attr_name, None)
    if attr_value is None or (isinstance(attr_value, torch.Tensor) and attr_value.is_meta):
        return True
    pending = getattr(_batch, "pending", None)
    if (
        pending is not None and isinstance(attr_value, torch.Tensor) and warn_error and not raise_error
        and attr_value.dtype not in _FP8_DTYPES  # asked now: ModelOpt's comparison is not implemented for them
    ):
        pending.append((self, attr_value, attr_name, name))  # mtq.calibrate's loop: asked when the call ends
        return True
    if isinstance(attr_value, torch.Tensor):
        is_valid = bool(((attr_value >= 0).all() & ~torch.isinf(attr_value).any() & ~torch.isnan(attr_value).any()))
    else:
        is_valid = (
            torch.all(attr_value >= 0)
            and not torch.any(torch.isinf(attr_value))
            and not torch.any(torch.isnan(attr_value))
        )
    if is_valid:
        return True
    name = f"{name}." if name else ""
    msg = f"{name}{attr_name} contains invalid values: {attr_value}"
    if warn_error:
        warnings.warn(msg)
    if raise_error:
        raise ValueError(msg)
    return False


_batch = threading.local()  # .pending: the validations of the `mtq.calibrate` call running on this thread


def _calibrate_validated_together(*args: Any, **kwargs: Any) -> Any:
    """`mtq.calibrate` whose closing validations (`validate_attr(..., warn_error=True)` of every quantizer's amax
    and pre-quant scale) are asked together when it returns (`validate_together`)."""
    from modelopt.torch.quantization import model_quant

    calibrate = _PATCHES.original(model_quant, "calibrate")
    if getattr(_batch, "pending", None) is not None:  # a calibrate inside a calibrate: the outer one asks
        return calibrate(*args, **kwargs)
    _batch.pending = []
    try:
        model = calibrate(*args, **kwargs)
        pending = _batch.pending
    finally:
        _batch.pending = None
    validate_together(pending)
    return model


_FP8_DTYPES = tuple(getattr(torch, n) for n in ("float8_e4m3fn", "float8_e5m2", "float8_e4m3fnuz", "float8_e5m2fnuz")
                    if hasattr(torch, n))  # torch.cat promotes none of them


def validate_together(pending: list[tuple[Any, torch.Tensor, str, str]]) -> None:
    """Warn as `validate_attr(value, attr_name, warn_error=True, name=name)` would for each pending value: all of
    them checked with one sync per device (an element that is negative, NaN or infinite: `x >= 0` fails for NaN);
    only when one fails, each is asked again by ModelOpt's question, one by one, for its warning."""
    groups: dict[torch.device, list[torch.Tensor]] = {}
    for _, value, _, _ in pending:
        groups.setdefault(value.device, []).append(value.reshape(-1))
    flags = []
    for values in groups.values():
        flat = torch.cat(values) if len(values) > 1 else values[0]  # promotes mixed floats exactly
        flags.append((~(flat >= 0) | torch.isinf(flat)).any())
    if not any(bool(f) for f in flags):
        return
    for quantizer, value, attr_name, name in pending:
        _validate_attr(quantizer, attr_value=value, attr_name=attr_name, warn_error=True, name=name)
