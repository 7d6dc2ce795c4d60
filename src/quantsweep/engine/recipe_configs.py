"""Each cell's recipe as a ModelOpt quantization config, without calling ModelOpt's builder once per cell.

`mtq.get_auto_quantize_config(state)` walks every decision group of the chosen recipe and, for each of its modules
and quantizers, matches the format's quantizer patterns (fnmatch over every entry) and serialises the matched
attributes with pydantic: ~0.15 s per cell on a Qwen3-0.6B shape, most of a shared-engine cell's solve. What it
returns is a pure function of which groups chose the cell's format: a fixed head (everything off, the disabled
layers), the format's path-scoped entries when any group chose it, then one block of per-module entries per chosen
group, in the order of the state's groups, each block the same whichever other groups were chosen.

So, per union call and format, ModelOpt's builder runs twice, with no group and with every group on the format,
and a cell's config is the head, the path-scoped entries, and the blocks of its chosen groups. Recipes that mix
formats (not made by the shared engine) go to ModelOpt directly. tests/test_shared_engine.py checks every cell's
config against the naive engine's, which comes from ModelOpt's own builder.
"""

from __future__ import annotations

import warnings
from typing import Any

from ..overlay import to_jsonable


class CellRecipeConfigs:
    def __init__(self, state: dict[str, Any]) -> None:
        self.state = state
        self._parts: dict[tuple, tuple[list, list, dict[str, list]]] = {}
        self._rest: dict[str, Any] = {}  # the config's keys besides quant_cfg ("algorithm")
        self._heads: dict[tuple[str, ...], list] = {}  # per group order: the unquantized head, the same for every format

    def config_for(self, best: dict[str, Any], none: Any) -> dict[str, Any]:
        """The config ModelOpt builds for the recipe `best` (group name -> QuantRecipe), JSON-ready."""
        chosen = [r for r in best.values() if r != none]
        signatures = {r.checkpoint_signature for r in chosen}
        if len(signatures) > 1:
            return self._modelopt(best)
        order = tuple(best)
        if not chosen:
            return self._modelopt(best)
        recipe = chosen[0]
        key = (recipe.checkpoint_signature, order)
        if key not in self._parts:
            self._parts[key] = self._split(recipe, order, none)
        head, path_scoped, blocks = self._parts[key]
        entries = list(head) + list(path_scoped)
        for name, r in best.items():
            if r != none:
                entries.extend(blocks.get(name, []))
        return {**self._rest, "quant_cfg": entries}

    def _split(self, recipe: Any, order: tuple[str, ...], none: Any) -> tuple[list, list, dict[str, list]]:
        empty = self._heads.get(order)
        if empty is None:
            empty = self._heads[order] = self._modelopt({name: none for name in order})["quant_cfg"]
        full_config = self._modelopt({name: recipe for name in order})
        self._rest = {k: v for k, v in full_config.items() if k != "quant_cfg"}
        full = full_config["quant_cfg"]
        if full[: len(empty)] != empty:
            raise RuntimeError("ModelOpt's recipe config does not start with its unquantized head")
        owner = {}
        stats = self.state["candidate_stats"]
        for name in order:
            if not stats[name].get("is_fixed", False):
                for module_name in stats[name]["module_names"]:
                    owner[module_name] = name
        path_scoped: list = []
        blocks: dict[str, list] = {}
        for entry in full[len(empty):]:
            group = owner.get(str(entry.get("quantizer_name", "")).rsplit(".", 1)[0])
            if group is None:
                if blocks:
                    raise RuntimeError("ModelOpt's recipe config has a path-scoped entry after a module entry")
                path_scoped.append(entry)
            else:
                blocks.setdefault(group, []).append(entry)
        return empty, path_scoped, blocks

    def _modelopt(self, best: dict[str, Any]) -> dict[str, Any]:
        import modelopt.torch.quantization as mtq

        state = {**self.state, "best": {"recipe": best}}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return to_jsonable(mtq.get_auto_quantize_config(state))
