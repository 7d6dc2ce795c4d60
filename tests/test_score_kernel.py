"""The fused score kernel (engine/score_kernel.py) against ModelOpt's element-wise score, in Triton's CPU
interpreter (a subprocess: the interpreter is chosen when Triton is imported). The interpreter truncates where a
GPU rounds to nearest when it converts to bfloat16, so bfloat16 is checked on the GPU only
(tests/test_gpu_cuda.py::test_fused_score_kernel_equals_the_eager_score_on_cuda); float16 checks the rounding here."""

from __future__ import annotations

import textwrap

import pytest
from triton_helpers import run_interpreted

pytest.importorskip("triton")

SCRIPT = textwrap.dedent(
    """
    import json, torch
    from quantsweep.engine.captured_scores import _score
    from quantsweep.engine.score_kernel import BLOCK, fused_score

    def eager(q, y, g):
        d = q.clone()
        d -= y  # in the model's dtype, as ModelOpt does
        return _score(g, d)

    out = {}
    torch.manual_seed(0)
    n = 2 * BLOCK + 17  # two full blocks and a masked tail
    for dt in (torch.float32, torch.float16):
        q = torch.randn(n).to(dt)
        y = (q.float() + torch.randn(n) * 1e-2).to(dt)
        g = torch.randn(n) * 10
        a, b = fused_score(q, y, g), eager(q, y, g)
        out[str(dt)] = [a.dtype == torch.float32, float(a), float(b)]
    # the difference is rounded to the model's dtype before the product, as `D -= Y` stores it:
    # 2048 - 1.0009765625 = 2046.999... -> 2047 in float16
    q, y, g = torch.tensor([2048.0]).half(), torch.tensor([1.0009765625]).half(), torch.ones(1)
    out["rounded"] = [float(fused_score(q, y, g)), float(eager(q, y, g))]
    q, y, g = torch.tensor([1e6, 0.0, 1.0]), torch.zeros(3), torch.tensor([1e6, 1.0, 1.0])
    out["clamped"] = [float(fused_score(q, y, g)), float(eager(q, y, g))]
    y = torch.tensor([0.0, float("nan"), 0.0])
    out["nan"] = str(float(fused_score(q, y, g)))
    print(json.dumps(out))
    """
)


def test_fused_score_equals_modelopts_elementwise_score_in_the_interpreter():
    out = run_interpreted(SCRIPT)
    for dt in ("torch.float32", "torch.float16"):
        is_f32, fused, eager = out[dt]
        assert is_f32
        assert fused == pytest.approx(eager, rel=1e-6), dt  # only the order of the float32 sum differs
    assert out["rounded"] == [2047.0**2, 2047.0**2]
    clamped, eager_clamped = out["clamped"]  # (1e6 * 1e6) clamped to 1e10, squared, + 1 (lost in float32)
    assert clamped == eager_clamped == pytest.approx(1e20, rel=1e-7)
    assert out["nan"] == "nan"
