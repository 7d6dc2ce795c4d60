"""Loading a cell's `recipe.json` back as a ModelOpt quantization config.

JSON has only string keys, but ModelOpt wants integer axes in `block_sizes` (`{-1: 128}`), so a plain
`json.load` of a recipe is rejected by `mtq.quantize`; `load_recipe` restores them:

    import modelopt.torch.quantization as mtq
    from quantsweep.recipe import load_recipe
    model = mtq.quantize(model, load_recipe("runs/quickstart/wint8_afp16/default/small/bits-8/recipe.json"), forward_loop)

`read_recipe` is the pure part (no torch): the file read through the reading layer and every entry of
`quant_cfg` checked the way the overlay code checks a matrix's quantizer attributes, so that a damaged recipe is
`<file>: quant_cfg[3].cfg.num_bits: ...` (exit 2) before `export` loads a model, not an error deep in ModelOpt.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

from .errors import InputError
from .inputs.documents import SMALL, read_json_object
from .overlay import OverlayError, normalize_attributes
from .reports.fields import Fields, Num


_FLAGS = ("enable", "fake_quant", "narrow_range", "unsigned")


def _attributes(f: Fields, attrs: Any, where: str) -> None:
    """The values ModelOpt would reject only deep inside `mtq.quantize`: bit widths and on/off flags."""
    f.expect(where, attrs, isinstance(attrs, dict), "an object of quantizer attributes")
    bits = attrs.get("num_bits")
    if isinstance(bits, list):  # a floating-point format: [exponent bits, mantissa bits]
        f.expect(f"{where}.num_bits", bits, len(bits) == 2, "[exponent bits, mantissa bits]")
        f.numbers(f"{where}.num_bits", bits, Num(lo=0, hi=32, integer=True))
    else:
        f.number(f"{where}.num_bits", bits, Num(lo=1, hi=64, integer=True))
    for name in _FLAGS:
        f.boolean(f"{where}.{name}", attrs.get(name))


def _entry(f: Fields, entry: Any, where: str) -> dict[str, Any]:
    f.expect(where, entry, isinstance(entry, dict), "an object (a quantizer entry)")
    f.string(f"{where}.quantizer_name", entry.get("quantizer_name"), required=True, nonempty=True)
    f.string(f"{where}.parent_class", entry.get("parent_class"))
    f.expect(f"{where}.enable", entry.get("enable"), entry.get("enable") is None or isinstance(entry["enable"], bool),
             "true, false or null")
    cfg = entry.get("cfg")
    f.expect(f"{where}.cfg", cfg, cfg is None or isinstance(cfg, dict | list), "an object, a list of objects or null")
    for i, attrs in enumerate(cfg if isinstance(cfg, list) else [cfg] if cfg is not None else []):
        _attributes(f, attrs, f"{where}.cfg[{i}]" if isinstance(cfg, list) else f"{where}.cfg")
    out = dict(entry)
    try:
        if isinstance(cfg, list):
            out["cfg"] = [normalize_attributes(c, f"{where}.cfg[{i}]") for i, c in enumerate(cfg)]
        elif isinstance(cfg, dict):
            out["cfg"] = normalize_attributes(cfg, f"{where}.cfg")
    except OverlayError as exc:
        raise InputError(f"{f.source}: {exc}") from None
    return out


def read_recipe(path: str | Path) -> dict[str, Any]:
    """The recipe as ModelOpt takes it (integer block-size axes restored); InputError naming the file and entry."""
    f = Fields(str(path))
    doc = read_json_object(path, SMALL, "recipe")
    cfg = f.seq("quant_cfg", doc.get("quant_cfg"), required=True)  # a ModelOpt config is a list of entries
    algorithm = doc.get("algorithm")
    f.expect("algorithm", algorithm, algorithm is None or isinstance(algorithm, str | dict | list),
             "a name, an object, a list or null")
    config = copy.deepcopy(doc)
    config["quant_cfg"] = [_entry(f, e, f"quant_cfg[{i}]") for i, e in enumerate(cfg)]
    return config


def load_recipe(path: str | Path) -> dict[str, Any]:
    """`read_recipe`, with quantsweep's PyTorch fake-quant backend registered when the recipe names it."""
    from .engine.torch_formats import BACKEND_NAME, register

    config = read_recipe(path)
    if BACKEND_NAME in json.dumps(config, default=str):  # a CPU sweep's NVFP4/MX recipe names quantsweep's backend
        register()
    return config
