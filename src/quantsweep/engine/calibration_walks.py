"""Two walks of ModelOpt's max calibration over every module, left out where they cannot act; the calibration is
ModelOpt's own otherwise.

AutoQuantize calibrates each candidate format with `max_calibrate` (ModelOpt 0.47), so a union call of n formats
walks the model n times for each of these, on top of the calibration itself:

* **The distributed amax sync.** With `distributed_sync=True` (`MaxCalibConfig`'s default) `max_calibrate` walks
  every quantized module three times after collecting: the data/expert-parallel sync of every quantizer, the
  tensor-parallel sync of parallel linears and the KV-cache quantizers, and an expert-parallel completeness check.
  Their syncs act only through a process group that is initialized (`DistributedProcessGroup.is_initialized` is
  `backend() == "torch"`, i.e. `torch.distributed` initialized); then it reaches the same
  `_finalize_with_shared_state` as `distributed_sync=False`. Besides the syncs the walks can only fail or warn, for
  modules quantsweep's models do not have (`sync_walks_inert`: a quantized module without its parallel state, a
  Megatron-style parallel linear, a dynamic KV-cache quantizer holding an amax). Where `torch.distributed` is not
  initialized (quantsweep never initializes it; asked at each call) and no such module exists, the call is made
  with `distributed_sync=False`: the same steps minus the walks.
* **The NVFP4 sibling check.** `_finalize_with_shared_state` ends with `_check_grouped_weight_global_amax_synced`,
  an assertion that q/k/v and gate/up siblings whose weight quantizers are calibrated NVFP4-static share one
  global amax. It finds the groups by trying seven attribute names on every module (~20 ms a format on the
  28-layer `cpu-deep` proxy on the 2-core box, mostly failed look-ups through the dynamic modules). With no calibrated NVFP4-static quantizer
  in the model no group can form and the check asserts nothing; it runs as before whenever there is one.

`short_calibration_walks()` installs both while the shared engine's ModelOpt work runs (engine/modelopt_bookkeeping.py),
only when the functions are the ones this was written against (their source's hash): another ModelOpt keeps its
own. tests/test_calibration_walks.py compares the calibrated quantizers with ModelOpt's, and the shared engine's
tests its results with the naive engine's.
"""

from __future__ import annotations

import contextlib
from typing import Any

from .calibrator_syncs import source_hash
from .reentrant_patches import ReentrantPatches

# sha256 of the sources (nvidia-modelopt 0.47.0) of max_calibrate, and of the NVFP4 sibling check with the two
# helpers it reads
KNOWN_MAX_CALIBRATE = "c79ec1e830a43e47cff96501aab4a7b06f218a984e0d37f7358eb8de8b470cfa"
KNOWN_SIBLING_CHECK = "41e005fd36de3d6bf9ed306703c12d51fa23459daa3d30da29f3886109843e96"


def _decide() -> tuple[tuple[bool, bool], list[Any]]:
    from modelopt.torch.quantization import mode
    from modelopt.torch.quantization import model_calib as mc

    sync_ok = source_hash(mc.max_calibrate) == KNOWN_MAX_CALIBRATE
    sync_ok = sync_ok and mode.MaxCalibrateModeDescriptor.__dict__.get("_calib_func") is mc.max_calibrate
    check_ok = source_hash(mc._check_grouped_weight_global_amax_synced, mc._collect_grouped_linears,
                           mc._is_calibrated_nvfp4_static) == KNOWN_SIBLING_CHECK
    replacements: list[Any] = []
    if sync_ok:
        replacements.append((mode.MaxCalibrateModeDescriptor, "_calib_func", _single_process_max_calibrate))
    if check_ok:
        replacements.append((mc, "_check_grouped_weight_global_amax_synced", _sibling_check_where_nvfp4))
    return (sync_ok, check_ok), replacements


_PATCHES = ReentrantPatches(_decide)


def short_calibration_walks() -> contextlib.AbstractContextManager[tuple[bool, bool]]:
    """Install both shortcuts (re-entrant); yields which are installed (single-process max calibration, sibling
    check). Module- and class-level: every thread sees them while installed (the shared engine's other threads run
    no ModelOpt calibration)."""
    return _PATCHES.active()


def _single_process_max_calibrate(model: Any, forward_loop: Any = None, distributed_sync: Any = True,
                                  **kwargs: Any) -> Any:
    """`max_calibrate`, told `distributed_sync=False` where its sync walks cannot act (`sync_walks_inert`)."""
    from modelopt.torch.utils import distributed

    if distributed_sync and not distributed.is_initialized() and sync_walks_inert(model):
        distributed_sync = False
    from modelopt.torch.quantization import mode

    max_calibrate = _PATCHES.original(mode.MaxCalibrateModeDescriptor, "_calib_func")
    return max_calibrate(model, forward_loop=forward_loop, distributed_sync=distributed_sync, **kwargs)


def sync_walks_inert(model: Any) -> bool:
    """Whether `max_calibrate`'s sync walks would do nothing but look, with no process group initialized: no
    quantized module without its parallel state (the walk reads `module.parallel_state.data_parallel_group`), no
    column- or row-parallel quantized linear (their walk warns about padded block quantizers before its no-op sync),
    no KV-cache quantizer whose `amax` getter would assert (a dynamic one holding an `_amax`). One look at every
    module, instead of the walks' three."""
    from modelopt.torch.quantization.nn import QuantModule, TensorQuantizer

    for module in model.modules():
        if isinstance(module, QuantModule):
            state = module.__dict__
            if state.get("_parallel_state") is None and getattr(module, "_parallel_state", None) is None:
                return False
            kind = type(module)
            if (getattr(kind, "_is_column_parallel", False) or getattr(kind, "_is_row_parallel", False)
                    or state.get("_is_column_parallel") or state.get("_is_row_parallel")):
                return False
        children = module._modules
        for attr in ("k_bmm_quantizer", "v_bmm_quantizer"):
            q = children.get(attr)
            if isinstance(q, TensorQuantizer) and q.__dict__.get("_dynamic") and "_amax" in q._buffers:
                return False
    return True


def _sibling_check_where_nvfp4(model: Any) -> None:
    """ModelOpt's check, when the model holds a calibrated NVFP4-static quantizer (the only possible members)."""
    from modelopt.torch.quantization import model_calib as mc

    if any(mc._is_calibrated_nvfp4_static(m) for m in model.modules()):
        _PATCHES.original(mc, "_check_grouped_weight_global_amax_synced")(model)
