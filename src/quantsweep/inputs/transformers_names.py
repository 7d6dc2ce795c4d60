"""The architectures (config.json `model_type`) transformers knows, and those AutoModelForCausalLM can load.

Why: hf_folders checks a folder's architecture before torch is imported, and importing transformers' config
classes imports torch (seconds). So the names are read from transformers' source with `ast`; when that source
cannot be read (a future layout), the architecture check is skipped and the load reports an unknown architecture
instead.
"""

from __future__ import annotations

import ast
import functools
import importlib.util
from pathlib import Path


def _mapping_keys(files: list[Path], name: str) -> set[str]:
    """String keys given to `name` in these modules: `name = OrderedDict([...])`, `name = OrderedDict(**{...})`,
    `name.update({...})`."""
    keys: set[str] = set()

    def collect(node: ast.AST) -> None:
        if isinstance(node, ast.Call):
            for arg in node.args:
                collect(arg)
            for kw in node.keywords:
                if kw.arg is None:
                    collect(kw.value)
                else:
                    keys.add(kw.arg)
        elif isinstance(node, ast.List | ast.Tuple):
            for elt in node.elts:
                if isinstance(elt, ast.Tuple) and elt.elts and isinstance(elt.elts[0], ast.Constant):
                    if isinstance(elt.elts[0].value, str):
                        keys.add(elt.elts[0].value)
        elif isinstance(node, ast.Dict):
            keys.update(k.value for k in node.keys if isinstance(k, ast.Constant) and isinstance(k.value, str))

    for f in files:
        tree = ast.parse(f.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == name for t in node.targets):
                collect(node.value)
            elif (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and node.func.attr == "update"
                and isinstance(node.func.value, ast.Name)
                and node.func.value.id == name
            ):
                collect(node)
    return keys


@functools.lru_cache(maxsize=1)
def transformers_architectures() -> tuple[frozenset[str] | None, frozenset[str] | None, str]:
    """(every model_type transformers has a config class for, those AutoModelForCausalLM can load, version), read
    from transformers' source without importing it; None where the source could not be read."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        ver = version("transformers")
    except PackageNotFoundError:
        return None, None, "?"
    spec = importlib.util.find_spec("transformers")
    if spec is None or not spec.submodule_search_locations:
        return None, None, ver
    auto = Path(next(iter(spec.submodule_search_locations))) / "models" / "auto"
    result: list[frozenset[str] | None] = []
    for files, name in (
        ([auto / "auto_mappings.py", auto / "configuration_auto.py"], "CONFIG_MAPPING_NAMES"),
        ([auto / "modeling_auto.py"], "MODEL_FOR_CAUSAL_LM_MAPPING_NAMES"),
    ):
        try:
            keys = _mapping_keys([f for f in files if f.is_file()], name)
        except (OSError, SyntaxError, ValueError):  # an unreadable or unexpected source: skip the check
            keys = set()
        result.append(frozenset(keys) if "llama" in keys and len(keys) > 20 else None)
    return result[0], result[1], ver
