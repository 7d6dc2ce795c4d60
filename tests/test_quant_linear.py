"""engine/quant_linear.py: the lean forward of a plain quantized linear gives ModelOpt's output bit for bit, for
weight-only, W8A8 (an enabled input quantizer) and W4A8 (a sequential weight quantizer) formats; other modules keep
ModelOpt's forward, and every forward is restored on exit."""

from __future__ import annotations

import types
import warnings

import pytest

torch = pytest.importorskip("torch")
mtq = pytest.importorskip("modelopt.torch.quantization")

from quantsweep.engine.quant_linear import lean_linear_forwards  # noqa: E402


class _Scaled(torch.nn.Linear):
    """A linear with a forward of its own: not plain, must keep ModelOpt's forward."""

    def forward(self, x):  # noqa: D102
        return super().forward(x) * 2


def _model(cfg):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(64, 96), torch.nn.ReLU(), torch.nn.Linear(96, 32), _Scaled(32, 16))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        mtq.quantize(model, cfg, lambda m: m(torch.randn(8, 64)))
    return model


@pytest.mark.parametrize(
    "cfg", ["INT4_BLOCKWISE_WEIGHT_ONLY_CFG", "FP8_DEFAULT_CFG", "W4A8_AWQ_BETA_CFG", "INT4_AWQ_CFG"]
)
def test_lean_forward_equals_modelopts(cfg, monkeypatch):
    from quantsweep.engine import quant_linear

    model = _model(getattr(mtq, cfg))
    # AutoQuantize's scoring leaves the class's forward bound on each instance: the shared engine meets it so
    model[0].forward = model[0].forward
    x = torch.randn(4, 7, 64)
    with torch.no_grad():
        want = model(x)
        before = {id(m): m.__dict__.get("forward") for m in model.modules()}
        direct = []  # the lean path quantizes input, weight and output itself; ModelOpt's forward does not call this
        real = quant_linear.quantize
        monkeypatch.setattr(quant_linear, "quantize", lambda q, t: direct.append(q) or real(q, t))
        with lean_linear_forwards(model) as switched:
            got = model(x)
            first = model[0](x)
            assert model[3].__dict__.get("forward") is before[id(model[3])]  # its own forward: left alone
        monkeypatch.undo()
        after = {id(m): m.__dict__.get("forward") for m in model.modules()}
    assert switched == 2
    assert torch.equal(got, want)
    assert after == before and after[id(model[0])] is not None  # the bound forward is put back, the same object
    assert len(direct) == 3 * 3  # model[0] and model[2] in the model's forward, model[0] alone: 3 quantizers each
    # the lean path does quantize: the first layer's output is not the unquantized product
    assert not torch.equal(first, torch.nn.functional.linear(x, model[0].weight, model[0].bias))


def test_fp8_kernel_amax_is_taken_only_where_modelopts_forward_would_call_the_kernel_alone():
    """`fp8_kernel_amax` (the direct FP8 kernel call on a GPU; bit-identity in tests/test_gpu_cuda.py): the
    quantizer's own amax where TensorQuantizer's forward would only fake-quantize through ModelOpt's kernel, and
    None for every branch that would do more or something else."""
    from quantsweep.engine.quant_linear import fp8_kernel_amax

    per_tensor = _model(mtq.FP8_DEFAULT_CFG)
    cfg = {"quant_cfg": [{"quantizer_name": "*", "enable": False},
                         {"quantizer_name": "*weight_quantizer", "cfg": {"num_bits": (4, 3), "axis": 0}}],
           "algorithm": "max"}
    per_channel = _model(cfg)
    x = torch.randn(4, 64)
    wq, iq = per_tensor[0].weight_quantizer, per_tensor[0].input_quantizer
    with torch.no_grad():
        assert fp8_kernel_amax(wq, per_tensor[0].weight) is wq._amax
        assert fp8_kernel_amax(iq, x) is iq._amax
        channel = fp8_kernel_amax(per_channel[0].weight_quantizer, per_channel[0].weight)
        assert channel is per_channel[0].weight_quantizer._amax and channel.squeeze().ndim == 1
        assert fp8_kernel_amax(per_channel[0].input_quantizer, x) is None  # disabled
        assert fp8_kernel_amax(_model(mtq.INT8_DEFAULT_CFG)[0].weight_quantizer, x) is None  # integer
        assert fp8_kernel_amax(iq, x.as_subclass(_Tagged)) is None  # not a plain tensor
        assert fp8_kernel_amax(iq, x[:0]) is None  # empty: ModelOpt returns it as it is
        iq.disable_quant()
        iq.enable_calib()
        assert fp8_kernel_amax(iq, x) is None  # calibrating
        iq.enable_quant()
        iq.disable_calib()
        handle = iq.register_forward_hook(lambda *a: None)
        assert fp8_kernel_amax(iq, x) is None  # a hook ModelOpt's call would run
        handle.remove()
        assert fp8_kernel_amax(iq, x) is iq._amax
    assert fp8_kernel_amax(iq, x) is None  # autograd: ModelOpt's Function records a backward


class _Tagged(torch.Tensor):
    pass


def _changed(q, change):
    """One of the branches of TensorQuantizer.forward that `fp8_kernel_amax` must leave to ModelOpt, switched on."""
    from modelopt.torch.quantization.nn.modules import tensor_quantizer as tq

    if change == "pre_quant_scale":
        q._enable_pre_quant_scale = True
        q.register_buffer("_pre_quant_scale", torch.ones(64))
    elif change == "rotate":
        q._rotate = True
    elif change == "backend":
        q.backend = "somebody"
    elif change == "block_sizes":
        q._block_sizes = {-1: 32}
    elif change == "constant_amax":
        q._use_constant_amax = True
    elif change == "bias":
        q._bias = {-1: None, "type": "static"}
    elif change == "instance_forward":
        q.forward = q.forward
    elif change == "global_hook":
        return torch.nn.modules.module.register_module_forward_hook(lambda *a: None)
    elif change == "amax_elsewhere":
        q._amax = q._amax.to("meta")
    elif change == "onnx_export":
        tq.GLOBALS.in_onnx_export = True
        return types.SimpleNamespace(remove=lambda: setattr(tq.GLOBALS, "in_onnx_export", False))
    return None


@pytest.mark.parametrize("change", ["pre_quant_scale", "rotate", "backend", "block_sizes", "constant_amax", "bias",
                                    "instance_forward", "global_hook", "amax_elsewhere", "onnx_export"])
def test_fp8_kernel_amax_leaves_every_other_branch_to_modelopt(change):
    from quantsweep.engine.quant_linear import fp8_kernel_amax, fp8_path_known

    assert fp8_path_known()  # the installed ModelOpt is the one the branches were read from
    q = _model(mtq.FP8_DEFAULT_CFG)[0].input_quantizer
    x = torch.randn(4, 64)
    with torch.no_grad():
        assert fp8_kernel_amax(q, x) is q._amax
        handle = _changed(q, change)
        try:
            assert fp8_kernel_amax(q, x) is None
        finally:
            if handle is not None:
                handle.remove()
