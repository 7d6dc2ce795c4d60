"""The checkpoint reader (export/unpack.py) against ModelOpt's own packers, and hand-made cases."""

from __future__ import annotations

import pytest
import torch

from quantsweep.export.unpack import dequantize, layer_formats, levels_of


def test_int4_unpacks_what_modelopt_packs():
    from modelopt.torch.export.quant_utils import pack_int4_in_uint8

    torch.manual_seed(0)
    w = torch.randn(6, 8)
    scale = w.abs().reshape(6, 2, 4).amax(-1) / 7  # blocks of 4
    packed = pack_int4_in_uint8(w, scale, 4)
    assert packed.dtype == torch.uint8 and packed.shape == (3, 8)
    deq = dequantize("int4", {"l.weight": packed, "l.weight_scale": scale}, "l")
    ints = (w / scale.repeat_interleave(4, 1)).round().clamp(-8, 7)
    assert torch.equal(deq.levels.float(), ints) and deq.block == 4
    assert torch.allclose(deq.weight, ints * scale.repeat_interleave(4, 1))
    assert torch.equal(levels_of("int4", deq.weight, deq.scale), deq.levels)


def test_nvfp4_unpacks_what_modelopt_packs():
    from modelopt.torch.quantization.qtensor.nvfp4_tensor import NVFP4QTensor

    torch.manual_seed(0)
    w = torch.randn(4, 32)
    s2 = NVFP4QTensor.get_weights_scaling_factor_2(w)
    qt, scale, s2 = NVFP4QTensor.quantize(w, 16, None, s2)
    tensors = {"l.weight": qt._quantized_data, "l.weight_scale": scale, "l.weight_scale_2": s2}
    deq = dequantize("fp4", tensors, "l")
    ref = qt.dequantize(dtype=torch.float32, scale=scale, double_scale=s2, block_sizes={-1: 16})
    assert torch.equal(deq.weight, ref) and deq.block == 16
    assert torch.equal(levels_of("fp4", ref, deq.scale), deq.levels)
    assert int(deq.levels.abs().max()) <= 7


def test_fp8_and_int8_levels_count_grid_positions():
    scale = torch.tensor([0.5, 2.0])
    w8 = torch.tensor([[1, -3], [127, 0]], dtype=torch.int8)
    deq = dequantize("int8", {"l.weight": w8, "l.weight_scale": scale}, "l")
    assert deq.weight.tolist() == [[0.5, -1.5], [254.0, 0.0]]
    off_by_one = deq.weight.clone()
    off_by_one[0, 1] -= 0.5  # one INT8 step of row 0
    assert (levels_of("int8", off_by_one, deq.scale) - deq.levels).abs().tolist() == [[0, 1], [0, 0]]
    f8 = torch.tensor([[1.0, 1.125], [-448.0, 0.0]]).to(torch.float8_e4m3fn)
    deq = dequantize("fp8", {"l.weight": f8, "l.weight_scale": torch.tensor(0.25)}, "l")
    assert deq.weight.tolist() == [[0.25, 0.28125], [-112.0, 0.0]]
    assert (deq.levels[0, 1] - deq.levels[0, 0]).item() == 1  # 1.0 and 1.125 are neighbours in E4M3
    with pytest.raises(ValueError, match="INT8 weights stored as torch.float8_e4m3fn"):
        dequantize("int8", {"l.weight": f8, "l.weight_scale": scale}, "l")


def test_layer_formats_of_single_and_mixed_checkpoints():
    single = {"quantization": {"quant_algo": "FP8", "exclude_modules": ["lm_head"]}}
    assert {k: v.algo for k, v in layer_formats(single, {"a.q_proj", "lm_head"}).items()} == {"a.q_proj": "FP8"}
    mixed = {"quantization": {"quant_algo": "MIXED_PRECISION", "quantized_layers": {
        "a.q_proj": {"quant_algo": "NVFP4", "group_size": 16}, "a.o_proj": {"quant_algo": "FP8"}}}}
    got = layer_formats(mixed, {"a.q_proj", "a.o_proj", "a.k_proj"})
    assert {k: (v.algo, v.group_size, v.families) for k, v in got.items()} == {
        "a.q_proj": ("NVFP4", 16, ("fp4", "fp4")), "a.o_proj": ("FP8", None, ("fp8", "fp8"))}
