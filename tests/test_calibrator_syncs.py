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
        assert "_deferred_invalid" in vars(fast)
        amax = fast.compute_amax()
    assert MaxCalibrator.collect is not calibrator_syncs._collect  # uninstalled
    assert amax.dtype == own.compute_amax().dtype and torch.equal(amax, own.compute_amax())
    assert [a.tolist() for a in fast.amaxs] == [a.tolist() for a in own.amaxs]
    assert "_deferred_invalid" not in vars(fast)  # read once, with the amax


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_a_bad_tensor_still_fails_when_the_amax_is_read(bad):
    with deferred_max_checks():
        cal = MaxCalibrator(axis=None)
        x = _batches(2)[0]
        cal.collect(x)
        x = x.clone()
        x[0, 0, 0] = bad
        cal.collect(x)  # ModelOpt's own collect would raise here
        cal.collect(_batches(3)[0])
        with pytest.raises(AssertionError, match="nan, inf or negative"):
            cal.compute_amax()


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
