"""engine/calibration_walks.py: max calibration without its distributed-sync walks (no process group) and without
the NVFP4 sibling check where no NVFP4-static quantizer exists gives ModelOpt's quantizers, attribute for
attribute; the check still runs, and still fails, where one exists."""

from __future__ import annotations

import warnings

import pytest

torch = pytest.importorskip("torch")
mtq = pytest.importorskip("modelopt.torch.quantization")

from modelopt.torch.quantization import mode  # noqa: E402
from modelopt.torch.quantization import model_calib as mc  # noqa: E402

from quantsweep.engine import calibration_walks  # noqa: E402
from quantsweep.engine.calibration_walks import short_calibration_walks  # noqa: E402


class _Attention(torch.nn.Module):
    """q/k/v siblings: the names ModelOpt's shared-state patterns and sibling check group."""

    def __init__(self) -> None:
        super().__init__()
        self.q_proj, self.k_proj, self.v_proj = (torch.nn.Linear(64, 64) for _ in range(3))

    def forward(self, x):  # noqa: D102
        return self.q_proj(x) + self.k_proj(x) * self.v_proj(x)


def _calibrated(cfg):
    torch.manual_seed(0)
    model = torch.nn.Sequential(_Attention(), torch.nn.Linear(64, 16))
    data = torch.randn(8, 64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        mtq.quantize(model, cfg, lambda m: m(data))
    return model


def _quantizer_states(model):
    from modelopt.torch.quantization.nn import TensorQuantizer

    out = {}
    for name, q in model.named_modules():
        if isinstance(q, TensorQuantizer):
            state = {k: v for k, v in vars(q).items() if k not in ("_calibrator", "_forward_hooks")}
            tensors = {k: v for k, v in q.state_dict().items()}
            out[name] = (type(q), repr(sorted(state.items(), key=lambda kv: kv[0])), tensors)
    return out


@pytest.mark.parametrize("cfg", ["INT4_BLOCKWISE_WEIGHT_ONLY_CFG", "FP8_DEFAULT_CFG", "INT8_DEFAULT_CFG"])
def test_calibration_without_the_walks_gives_modelopts_quantizers(cfg, monkeypatch):
    from modelopt.torch.quantization.nn import TensorQuantizer

    syncs = []
    real_sync = TensorQuantizer.sync_amax_across_distributed_group
    monkeypatch.setattr(TensorQuantizer, "sync_amax_across_distributed_group",
                        lambda self, group: syncs.append(group) or real_sync(self, group))
    own = _quantizer_states(_calibrated(getattr(mtq, cfg)))
    assert syncs  # ModelOpt's own calibration walks its (uninitialized) groups...
    syncs.clear()
    calls = []
    real = calibration_walks._single_process_max_calibrate
    monkeypatch.setattr(calibration_walks, "_single_process_max_calibrate",
                        lambda *a, **k: calls.append(k.get("distributed_sync")) or real(*a, **k))
    original = mode.MaxCalibrateModeDescriptor._calib_func
    with short_calibration_walks() as installed:
        assert installed == (True, True)
        fast = _quantizer_states(_calibrated(getattr(mtq, cfg)))
    assert mode.MaxCalibrateModeDescriptor._calib_func is original
    assert calls == [True]  # the config's distributed_sync, turned off inside for this process
    assert syncs == []  # ...this one does not
    assert fast.keys() == own.keys() and len(own) == 12
    for name, (cls, state, tensors) in own.items():
        f_cls, f_state, f_tensors = fast[name]
        assert f_cls is cls and f_state == state, name
        assert f_tensors.keys() == tensors.keys() and all(torch.equal(v, f_tensors[k]) for k, v in tensors.items())


def test_the_sibling_check_runs_and_fails_where_an_nvfp4_static_quantizer_exists(monkeypatch):
    class Fake(torch.nn.Module):
        def __init__(self, amax: float) -> None:
            super().__init__()
            self.global_amax = torch.tensor(amax)

    attention = _Attention()
    for i, name in enumerate(("q_proj", "k_proj", "v_proj")):
        getattr(attention, name).weight_quantizer = Fake(1.0 + i)  # siblings that disagree
    looked = []
    real_collect = mc._collect_grouped_linears
    with short_calibration_walks():  # installed first: the spy below would change the sources it checks
        monkeypatch.setattr(mc, "_collect_grouped_linears", lambda m: looked.append(m) or real_collect(m))
        mc._check_grouped_weight_global_amax_synced(attention)  # no calibrated NVFP4-static quantizer: nothing
        assert looked == []  # not even ModelOpt's search for groups
        monkeypatch.setattr(mc, "_is_calibrated_nvfp4_static", lambda q: isinstance(q, Fake))
        with pytest.raises(AssertionError, match="not unified"):
            mc._check_grouped_weight_global_amax_synced(attention)


def test_another_modelopt_keeps_its_own_walks(monkeypatch):
    monkeypatch.setattr(calibration_walks, "KNOWN_MAX_CALIBRATE", "not this version")
    monkeypatch.setattr(calibration_walks, "KNOWN_SIBLING_CHECK", "not this version")
    original = (mode.MaxCalibrateModeDescriptor._calib_func, mc._check_grouped_weight_global_amax_synced)
    with short_calibration_walks() as installed:
        assert installed == (False, False)
        assert (mode.MaxCalibrateModeDescriptor._calib_func, mc._check_grouped_weight_global_amax_synced) == original


def test_the_sync_walks_run_where_they_could_warn_or_fail():
    """A Megatron-style parallel linear, a dynamic KV-cache quantizer holding an amax: modules whose walks act
    without a process group keep them."""
    from modelopt.torch.quantization.nn import TensorQuantizer

    from quantsweep.engine.calibration_walks import sync_walks_inert

    model = _calibrated(mtq.INT8_DEFAULT_CFG)
    assert sync_walks_inert(model)
    model[1]._is_column_parallel = True
    assert not sync_walks_inert(model)
    del model[1]._is_column_parallel
    holder = torch.nn.Module()
    holder.k_bmm_quantizer, holder.v_bmm_quantizer = TensorQuantizer(), TensorQuantizer()
    model.append(holder)
    assert sync_walks_inert(model)
    holder.k_bmm_quantizer._dynamic = True
    holder.k_bmm_quantizer.register_buffer("_amax", torch.tensor(1.0))
    assert not sync_walks_inert(model)
