"""The per-axis fake quantization kernel (engine/axis_fake_quant.py) against the arithmetic of ModelOpt's CUDA
kernel, in Triton's CPU interpreter (a subprocess: the interpreter is chosen when Triton is imported). The
interpreter has no libdevice (the kernel takes `rint` from exact operations there) and truncates where a GPU rounds
when it converts to bfloat16, so bfloat16 and the compiled `rint` are checked against ModelOpt's own kernel on the
GPU (tests/test_gpu_cuda.py::test_axis_fake_quant_kernel_gives_modelopts_bits); float16 checks the rounding here."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

pytest.importorskip("triton")

SCRIPT = textwrap.dedent(
    """
    import json, torch
    from quantsweep.engine.axis_fake_quant import TILE, bounds, fake_quant_axis

    def cuda_kernel(x, amax, axis, num_bits, narrow):
        # tensor_quant_gpu.cu's fake_tensor_quant_device, element by element, in float32 torch operations
        hi, lo = bounds(num_bits, narrow)
        shape = [1] * x.dim()
        shape[axis] = -1
        a = amax.float().reshape(shape)
        scale = torch.tensor(hi) / a
        q = torch.round(x.float() * scale)  # rint: half to even
        q = torch.where(q > hi, torch.tensor(hi), torch.where(q < lo, torch.tensor(lo), q))
        return torch.where(a < 2.0**-24, torch.zeros(()), q / scale).to(x.dtype)

    out = {}
    g = torch.Generator().manual_seed(0)
    for dt in (torch.float32, torch.float16):
        for shape, axis, bits, narrow in (((7, 300), 0, 4, True), ((300, 7), 1, 8, False), ((3, 11, 5), 1, 8, True),
                                          ((2 * TILE // 128 + 3, 128), 0, 4, True), ((5, 1500), 0, 8, True)):
            x = (torch.randn(shape, generator=g) * 3).to(dt)
            amax = torch.rand(shape[axis], generator=g) * 4 + 0.01
            amax[0], amax[1], amax[2] = 0.0, 1e-9, 0.5  # zero, below 2^-24, most values clamped
            want = cuda_kernel(x, amax, axis, bits, narrow)
            for shortcut in (True, False):
                got = fake_quant_axis(x, amax, axis, bits, narrow, zero_shortcut=shortcut)
                out[f"{dt}{shape}{axis}{shortcut}"] = [bool(torch.equal(got, want)), int((got != x).sum()),
                                                       int((got == 0).sum())]
    # ties go to even; beyond amax clamps to +-bound (INT4 narrow: 7 steps of 1.0 for amax 7)
    x = torch.tensor([[0.5, 1.5, 2.5, -0.5, -2.5, 6.5, 100.0, -100.0, 3.4999998]])
    out["ties"] = fake_quant_axis(x, torch.tensor([7.0]), 0, 4, True).tolist()[0]
    print(json.dumps(out))
    """
)


def test_axis_kernel_computes_modelopts_cuda_arithmetic_in_the_interpreter():
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    proc = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    ties = out.pop("ties")
    assert ties == [0.0, 2.0, 2.0, -0.0, -2.0, 6.0, 7.0, -7.0, 3.0]
    assert len(out) == 20
    for case, (equal, changed, zeros) in out.items():
        assert equal, case
        assert changed > 0 and zeros > 0, case  # the reference is not the identity; zeros took the shortcut


def test_the_replacement_is_guarded_by_the_modelopt_it_was_written_against():
    """The hash of ModelOpt's wrapper and CUDA source: a ModelOpt upgrade fails here (re-check the kernel's
    arithmetic against the new source and run the GPU test, then update KNOWN_SOURCES), and at run time the
    replacement is simply not installed."""
    from quantsweep.engine import axis_fake_quant

    assert axis_fake_quant.sources_hash() == axis_fake_quant.KNOWN_SOURCES
