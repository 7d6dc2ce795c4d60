"""Loading a cell's `recipe.json` back as a ModelOpt quantization config.

JSON has only string keys, but ModelOpt wants integer axes in `block_sizes` (`{-1: 128}`), so a plain
`json.load` of a recipe is rejected by `mtq.quantize`; `load_recipe` restores them:

    import modelopt.torch.quantization as mtq
    from quantsweep.recipe import load_recipe
    model = mtq.quantize(model, load_recipe("runs/quickstart/wint4_afp16/default/small/recipe.json"), forward_loop)
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .errors import InputError
from .engine.torch_formats import BACKEND_NAME, register
from .overlay import from_jsonable


def load_recipe(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise InputError(f"{path}: cannot read recipe: {exc}") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("quant_cfg"), list):
        raise InputError(f"{path}: not a ModelOpt quantization config (no `quant_cfg` list)")
    config = from_jsonable(doc)
    if BACKEND_NAME in json.dumps(doc):  # a CPU sweep's NVFP4/MX recipe names quantsweep's torch backend
        register()
    return config
