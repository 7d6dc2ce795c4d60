"""engine/calibrator_syncs.py: ModelOpt's max calibration with its checks deferred gives ModelOpt's amax, bit for bit,
and still fails on a bad tensor."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("modelopt.torch.quantization")

from modelopt.torch.quantization.calib.max import MaxCalibrator  # noqa: E402

from quantsweep.engine import calibrator_syncs  # noqa: E402
from quantsweep.engine.calibrator_syncs import deferred_max_checks  # noqa: E402


def _batches(seed: int) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(3, 16, 64, generator=g) * (i + 1) for i in range(4)]


@pytest.mark.parametrize("axis", [None, -1, 0, (0, 2)])
def test_deferred_collect_gives_modelopts_running_amax(axis):
    batches = _batches(1)
    own = MaxCalibrator(axis=axis, track_amax=True)
    for x in batches:
        own.collect(x)
    with deferred_max_checks() as active:
        assert active and MaxCalibrator.collect is calibrator_syncs._collect
        fast = MaxCalibrator(axis=axis, track_amax=True)
        for x in batches:
            fast.collect(x)
        assert vars(fast)["_deferred_max"] is fast._calib_amax  # the running amax answers the deferred checks
        amax = fast.compute_amax()
    assert MaxCalibrator.collect is not calibrator_syncs._collect  # uninstalled
    assert amax.dtype == own.compute_amax().dtype and torch.equal(amax, own.compute_amax())
    assert [a.tolist() for a in fast.amaxs] == [a.tolist() for a in own.amaxs]
    assert "_deferred_max" not in vars(fast)  # read once, with the amax


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
@pytest.mark.parametrize("axis", [None, 0])
@pytest.mark.parametrize("reset", [False, True])
def test_a_bad_tensor_still_fails_when_the_amax_is_read(bad, axis, reset):
    """Also when the running amax is replaced after the bad tensor (reset, as a prefix snapshot would): ModelOpt
    would have failed at that tensor."""
    with deferred_max_checks():
        cal = MaxCalibrator(axis=axis)
        x = _batches(2)[0]
        cal.collect(x)
        x = x.clone()
        x[0, 0, 0] = bad
        cal.collect(x)  # ModelOpt's own collect would raise here
        if reset:
            cal.reset()
        cal.collect(_batches(3)[0])
        with pytest.raises(AssertionError, match="nan, inf or negative"):
            cal.compute_amax()


def test_an_integer_tensor_keeps_modelopts_reduction_and_checks():
    """|x| of the most negative integer overflows to a negative value: ModelOpt's negative-amax check catches it."""
    own = MaxCalibrator(axis=None)
    with pytest.raises(AssertionError, match="negative"):
        own.collect(torch.tensor([-128, -128], dtype=torch.int8))
    with deferred_max_checks():
        cal = MaxCalibrator(axis=None)
        cal.collect(torch.tensor([-128, -128], dtype=torch.int8))
        with pytest.raises(AssertionError, match="nan, inf or negative"):
            cal.compute_amax()
        fine = MaxCalibrator(axis=None)
        fine.collect(torch.tensor([-7, 3], dtype=torch.int8))
        assert fine.compute_amax().item() == 7


def test_another_modelopt_keeps_its_own_collect(monkeypatch):
    monkeypatch.setattr(calibrator_syncs, "KNOWN_COLLECT", "not this version")
    original = MaxCalibrator.collect
    with deferred_max_checks() as active:
        assert not active and MaxCalibrator.collect is original
    assert MaxCalibrator.collect is original


def test_validation_in_one_sync_answers_and_warns_as_modelopts():
    from modelopt.torch.quantization.nn import TensorQuantizer

    values = [torch.rand(4, 1), torch.tensor([1.0, float("nan")]), torch.tensor([float("inf")]), torch.tensor([-1.0]),
              torch.zeros(0)]
    q = TensorQuantizer()
    own = [q.validate_attr(attr_value=v, name="m.q") for v in values]
    with deferred_max_checks():
        assert TensorQuantizer.validate_attr is calibrator_syncs._validate_attr
        fast = [q.validate_attr(attr_value=v, name="m.q") for v in values]
        with pytest.warns(UserWarning, match=r"m\.q\.amax contains invalid values"):
            q.validate_attr(attr_value=values[1], name="m.q", warn_error=True)
        with pytest.raises(ValueError, match="contains invalid values"):
            q.validate_attr(attr_value=values[3], raise_error=True)
    assert fast == own == [True, False, False, False, True]
    assert TensorQuantizer.validate_attr is not calibrator_syncs._validate_attr


def test_the_shared_engines_shortcuts_install_it_and_an_unreadable_source_leaves_modelopts(monkeypatch):
    from quantsweep.engine.modelopt_bookkeeping import fast_modelopt_bookkeeping

    original = MaxCalibrator.collect
    with fast_modelopt_bookkeeping():
        assert MaxCalibrator.collect is calibrator_syncs._collect
    assert MaxCalibrator.collect is original
    monkeypatch.setattr(calibrator_syncs, "collect_source_hash", lambda: None)  # inspect could not read it
    with deferred_max_checks() as active:
        assert not active and MaxCalibrator.collect is original


def test_calibrates_closing_validations_are_asked_together_and_warn_as_modelopts(monkeypatch):
    """Inside the shortcuts `mtq.calibrate`'s loop of validations is queued and asked at its end: the same amax
    as ModelOpt's own call; a bad value gives ModelOpt's warnings, in its order."""
    import warnings

    import modelopt.torch.quantization as mtq
    from modelopt.torch.quantization import model_quant
    from modelopt.torch.quantization.nn import TensorQuantizer

    def model():
        torch.manual_seed(0)
        return torch.nn.Sequential(torch.nn.Linear(64, 32), torch.nn.ReLU(), torch.nn.Linear(32, 8))

    data = _batches(4)[0].reshape(-1, 64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        own = mtq.quantize(model(), mtq.INT8_DEFAULT_CFG, lambda m: m(data))
        queued = []
        real = calibrator_syncs.validate_together
        monkeypatch.setattr(calibrator_syncs, "validate_together", lambda p: queued.append(len(p)) or real(p))
        fast = model()
        with deferred_max_checks():
            assert model_quant.calibrate is calibrator_syncs._calibrate_validated_together
            mtq.quantize(fast, mtq.INT8_DEFAULT_CFG, lambda m: m(data))
        assert model_quant.calibrate is not calibrator_syncs._calibrate_validated_together
    assert queued == [4]  # two linears' input and weight amax (their output quantizers have none)
    assert own.state_dict().keys() == fast.state_dict().keys()
    assert all(torch.equal(v, fast.state_dict()[k]) for k, v in own.state_dict().items())

    q = TensorQuantizer()
    pending = [(q, torch.rand(3), "_amax", "a.q"), (q, torch.tensor([1.0, float("nan")]), "_amax", "b.q"),
               (q, torch.tensor([-2.0]), "_pre_quant_scale", "c.q"), (q, torch.tensor([float("inf")]), "_amax", "d.q")]
    with warnings.catch_warnings(record=True) as expected:
        warnings.simplefilter("always")
        for quantizer, value, attr, name in pending:
            quantizer.validate_attr(attr_value=value, attr_name=attr, warn_error=True, name=name)
    with warnings.catch_warnings(record=True) as got:
        warnings.simplefilter("always")
        real(pending)
    assert [str(w.message) for w in got] == [str(w.message) for w in expected] and len(got) == 3
    with warnings.catch_warnings(record=True) as none:
        warnings.simplefilter("always")
        real(pending[:1] + [(q, torch.zeros(2, dtype=torch.bfloat16), "_amax", "e.q")])
    assert none == []


def test_a_running_check_that_cannot_take_the_next_amax_restarts_and_float8_values_are_asked_at_once():
    """After a reset a calibrator may see another shape (ModelOpt accepts it); the deferred running maximum
    restarts there, keeping what it had seen. float8 values (torch.cat promotes none, and ModelOpt's own question
    fails on them) are asked at once, as ModelOpt asks them."""
    import warnings

    from modelopt.torch.quantization.nn import TensorQuantizer

    own = MaxCalibrator(axis=-1)
    with deferred_max_checks():
        fast = MaxCalibrator(axis=-1)
        first, second = torch.randn(4, 8), torch.randn(4, 16)
        for cal in (own, fast):
            cal.collect(first)
            cal.reset()
            cal.collect(second)
        assert torch.equal(fast.compute_amax(), own.compute_amax()) and own.compute_amax().shape == (1, 16)
        bad = MaxCalibrator(axis=-1)
        bad.collect(torch.full((4, 8), float("inf")))
        bad.reset()
        bad.collect(torch.randn(4, 16))
        with pytest.raises(AssertionError, match="nan, inf or negative"):
            bad.compute_amax()  # ModelOpt would have failed at the infinite tensor
    q = TensorQuantizer()
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        calibrator_syncs.validate_together([(q, torch.rand(3, dtype=torch.bfloat16), "_amax", "a"),
                                            (q, torch.rand(2, dtype=torch.float64), "_amax", "b")])
    assert seen == []  # mixed floating types are promoted exactly
    float8 = torch.tensor([2.0, 448.0]).to(torch.float8_e4m3fn)
    with pytest.raises(NotImplementedError):
        q.validate_attr(attr_value=float8, warn_error=True)  # ModelOpt's own question fails on float8...
    calibrator_syncs._batch.pending = []
    try:
        with deferred_max_checks(), pytest.raises(NotImplementedError):
            q.validate_attr(attr_value=float8, warn_error=True)  # ...so it is asked at once, not queued
        assert calibrator_syncs._batch.pending == []
    finally:
        calibrator_syncs._batch.pending = None
