"""Diagnose a reload mismatch of an NVFP4 W4A4 export on CUDA: ModelOpt's input fake quant vs export/reload.py's."""
import copy, io, contextlib, json, sys, tempfile
from pathlib import Path
import torch
import modelopt.torch.quantization as mtq
from modelopt.torch.export import export_hf_checkpoint
from quantsweep.engine.models import load_model
from quantsweep.schema import ModelSpec
from quantsweep.export.reload import _fake_fp8, _fake_nvfp4, reload_dequantized
from quantsweep.export.unpack import ALGOS, layer_formats
ALGOS["W8A16_FP8"] = ("fp8", "none")  # diagnosis only: FP8 weights reloaded without input quantization
from quantsweep.export.checkpoint import _read_tensors, _retie_unquantized_head

dtype = sys.argv[1] if len(sys.argv) > 1 else "bfloat16"
fmt = sys.argv[2] if len(sys.argv) > 2 else "NVFP4_DEFAULT_CFG"
loaded = load_model(ModelSpec(source="embedded", device="cuda", dtype=dtype))
model = loaded.take_model()
tok = loaded.tokenizer
text = " ".join(["The quick brown fox jumps over the lazy dog and keeps running through the forest."] * 40)
ids = tok(text, return_tensors="pt").input_ids[:, :512].reshape(4, 128).cuda()
cfg = copy.deepcopy(getattr(mtq, fmt))
with contextlib.redirect_stdout(io.StringIO()):
    model = mtq.quantize(model, cfg, lambda m: m(input_ids=ids))
model.eval()
out = {}
name = "model.layers.3.mlp.down_proj"
mod = dict(model.named_modules())[name]
cap = {}
h = mod.register_forward_pre_hook(lambda m, a: cap.__setitem__("x", a[0].detach().clone()))
with torch.no_grad():
    ref_logits = model(input_ids=ids).logits.float()
h.remove()
x = cap["x"]
with torch.no_grad():
    mo = mod.input_quantizer(x).float()
print("input quantizer:", mod.input_quantizer)
_retie_unquantized_head(model)
tmp = Path(tempfile.mkdtemp())
with contextlib.redirect_stdout(io.StringIO()):
    export_hf_checkpoint(model, export_dir=str(tmp))
tensors = _read_tensors(tmp)
s = tensors[f"{name}.input_scale"].cuda()
mine = (_fake_nvfp4(x, s, 16) if "FP4" in fmt else _fake_fp8(x.float(), s.float()).to(x.dtype)).float()
amax = getattr(mod.input_quantizer, "_amax", None)
out["input_scale"] = float(s)
out["quantizer_amax"] = None if amax is None else float(amax.float().max())
out["act_max_abs_diff"] = float((mine - mo).abs().max())
out["act_share_differing"] = float(((mine - mo).abs() > 1e-6 * mo.abs().max()).float().mean())
hf = json.loads((tmp / "hf_quant_config.json").read_text())
stored = {k.removesuffix(".weight_scale") for k in tensors if k.endswith(".weight_scale")}
formats = layer_formats(hf, stored)
del model
torch.cuda.empty_cache()
for emulate in (True, False):
    fm = formats if emulate else {k: type(v)("W4A16_NVFP4" if "FP4" in fmt else "W8A16_FP8", v.group_size)
                                  for k, v in formats.items()}
    r, ne = reload_dequantized(tmp, tensors, fm, getattr(torch, dtype), torch.device("cuda"))
    with torch.no_grad():
        lg = r(input_ids=ids).logits.float()
    p, q = torch.log_softmax(ref_logits, -1), torch.log_softmax(lg, -1)
    out[f"reload_emulate_{emulate}"] = {"kl": float((p.exp() * (p - q)).sum(-1).mean()),
                                       "top1": float((p.argmax(-1) == q.argmax(-1)).float().mean())}
    del r
out["hf_quant_config"] = hf["quantization"].get("quant_algo"), hf["quantization"].get("group_size")
print(json.dumps(out, indent=1))
