"""Host-side shortcuts through ModelOpt's AutoQuantize bookkeeping that leave every result unchanged.

Three costs of ModelOpt 0.47 grow with modules x formats and do no arithmetic at all:

* `QuantRecipe.checkpoint_signature` is `getattr(self, "_config_signature", self.config.model_dump_json())`. Python
  evaluates the default on every call, so every hash, comparison and dict lookup of a recipe serialises its whole
  config with pydantic (~14 us), although the signature was stored when the recipe was made. A 27-cell sweep of a
  Qwen3-0.6B shape makes ~230,000 such calls (the score hooks, `hparam.active = recipe`, which compares the recipe
  with every choice, the snapshots and the solves). The shortcut returns the stored signature, the same string.
* `QuantRecipeHparam.__init__` gives every (format, module) pair fresh quantizers and configures them with
  `set_quantizer_by_cfg`: pydantic validation of every matching config entry and fnmatch over all of them, ~0.7 ms
  per pair (1,379 pairs in the reference matrix's data-free call). What it produces depends only on the config, the
  module's class and the names of its quantizers, so the first module of each kind is configured by ModelOpt and
  the others get deep copies of its quantizers, taken before calibration touched them. Only plain quantized modules
  (their only children are their quantizers) are copied; anything else goes through ModelOpt as before.

* `get_auto_quantize_config` (a recipe as a ModelOpt config: engine/recipe_configs.py builds each union format's
  parts with it) matches every quantizer of every module of every group against the recipe's config entries with
  `_match_quantizer_cfg` (fnmatch over every entry, pydantic item access): ~5,300 calls and 1.7 s for the
  reference matrix's formats on the CPU, although the answer depends only on the config and the quantizer's name.
  The shortcut answers each (config, name) once, with the same entry objects ModelOpt's loop returns. The same
  builder also tests, for every group, every entry of the recipe's config against each per-module quantizer
  attribute name (`weight_quantizer`, ...) with `fnmatch.fnmatch` (~29,000 calls per union format on a Qwen3-0.6B-deep shape, 64 % of the builder's time in a CPU
  profile), to find its path-scoped entries: the same few (name, pattern) pairs again and again. The shortcut gives
  ModelOpt's module a view of `fnmatch` whose `fnmatch` answers each pair once (a pure function of the two strings).

It also defers the max calibrator's three host syncs per collected tensor to the moment its amax is read, and asks
`mtq.calibrate`'s closing validations together (engine/calibrator_syncs.py); and leaves out two walks of
`max_calibrate` where they cannot act: its distributed syncs without torch.distributed, its NVFP4 sibling check
without NVFP4-static quantizers (engine/calibration_walks.py). And on a GPU it hands ModelOpt's per-channel and
per-block integer fake quantization to a faster kernel of the same bits (engine/axis_fake_quant.py).

`fast_modelopt_bookkeeping()` installs all of them around the shared engine's own ModelOpt work (a union call; a cell's solve
and evaluation), never across the runner's yields: the naive engine stays plain ModelOpt, the reference it is
measured and checked against (tests/test_modelopt_bookkeeping.py compares the quantizers, tests/test_shared_engine.py
the scores, recipes and quality of both engines). The copies are made only for the thread that installed them;
another thread building AutoQuantize's hparams meanwhile goes through ModelOpt's own functions. The matcher's memo
answers every thread (a pure function of its arguments).
"""

from __future__ import annotations

import contextlib
import copy
import functools
import threading
import types
import weakref
from collections import OrderedDict
from collections.abc import Iterator
from typing import Any

from .axis_fake_quant import fast_axis_fake_quant
from .calibration_walks import short_calibration_walks
from .calibrator_syncs import deferred_max_checks

_lock = threading.Lock()
_depth = 0
_saved: dict[str, Any] = {}


@contextlib.contextmanager
def fast_modelopt_bookkeeping() -> Iterator[QuantizerTemplates]:
    """Install the shortcuts (re-entrant); the templates live as long as the outermost context."""
    global _depth
    from modelopt.torch.quantization import algorithms

    with _lock:
        _depth += 1
        if _depth == 1:
            templates = QuantizerTemplates(algorithms._make_fresh_quantizer_for_attr, algorithms.set_quantizer_by_cfg,
                                           owner=threading.get_ident())
            _saved.update(
                signature=algorithms.QuantRecipe.__dict__["checkpoint_signature"],
                fresh=algorithms._make_fresh_quantizer_for_attr,
                configure=algorithms.set_quantizer_by_cfg,
                match=algorithms._match_quantizer_cfg,
                fnmatch=algorithms.fnmatch,
                templates=templates,
            )
            algorithms.fnmatch = _memoised_fnmatch_module(algorithms.fnmatch)
            algorithms.QuantRecipe.checkpoint_signature = property(_stored_signature)
            algorithms._make_fresh_quantizer_for_attr = templates.fresh
            algorithms.set_quantizer_by_cfg = templates.configure
            algorithms._match_quantizer_cfg = _MemoisedMatch(algorithms._match_quantizer_cfg)
        templates = _saved["templates"]
    try:
        # engine/calibrator_syncs.py, engine/calibration_walks.py, engine/axis_fake_quant.py
        with deferred_max_checks(), short_calibration_walks(), fast_axis_fake_quant():
            yield templates
    finally:
        with _lock:
            _depth -= 1
            if _depth == 0:
                algorithms.QuantRecipe.checkpoint_signature = _saved.pop("signature")
                algorithms._make_fresh_quantizer_for_attr = _saved.pop("fresh")
                algorithms.set_quantizer_by_cfg = _saved.pop("configure")
                algorithms._match_quantizer_cfg = _saved.pop("match")
                algorithms.fnmatch = _saved.pop("fnmatch")
                _saved.pop("templates").clear()


def _stored_signature(recipe: Any) -> str:
    signature = recipe.__dict__.get("_config_signature")
    return signature if signature is not None else recipe.config.model_dump_json()


def _memoised_fnmatch_module(module: types.ModuleType) -> types.ModuleType:
    """A stand-in for the `fnmatch` module as ModelOpt's algorithms module sees it: everything the module has, its
    `fnmatch(name, pattern)` answered once per pair (bounded, so a sweep of huge models cannot grow it without end)."""
    view = types.ModuleType(module.__name__, module.__doc__)
    view.__dict__.update({k: v for k, v in vars(module).items() if not k.startswith("__")})
    view.fnmatch = functools.lru_cache(maxsize=1 << 16)(module.fnmatch)
    return view


class _MemoisedMatch:
    """ModelOpt's `_match_quantizer_cfg(quant_cfg, quantizer_attr)`, answered once per (config list, name): a pure
    function of the two (last matching entry wins), returning references to the list's own entries. A list is
    known by its id and kept alive here, so an id is never reused while the answer is."""

    def __init__(self, match: Any) -> None:
        self._match = match
        self._answers: dict[tuple[int, str], tuple[Any, Any]] = {}
        self._pinned: dict[int, Any] = {}

    def __call__(self, quant_cfg: Any, quantizer_attr: str) -> tuple[Any, Any]:
        key = (id(quant_cfg), quantizer_attr)
        answer = self._answers.get(key)
        if answer is None:
            answer = self._match(quant_cfg, quantizer_attr)
            self._pinned[id(quant_cfg)] = quant_cfg
            self._answers[key] = answer
        return answer


class QuantizerTemplates:
    """ModelOpt's `_make_fresh_quantizer_for_attr` + `set_quantizer_by_cfg` pair, as `QuantRecipeHparam.__init__`
    calls it (fresh quantizers on every attribute, then the recipe's config), answered from a template per
    (config, module class, quantizer names) after the first module of each kind."""

    def __init__(self, fresh: Any, configure: Any, owner: int) -> None:
        self._fresh = fresh
        self._configure = configure
        self._owner = owner
        self._templates: dict[tuple, dict[str, Any]] = {}
        # a config's content, by the id of its list (kept alive here, so an id is never reused): each decision group
        # makes a 16-bit recipe of its own, equal in content to every other group's
        self._content: dict[int, tuple[Any, str]] = {}
        self._placeholder: Any = None
        self.configured = 0
        self.copied = 0

    def clear(self) -> None:
        self._templates.clear()
        self._content.clear()

    def _content_key(self, quant_cfg: Any) -> str:
        known = self._content.get(id(quant_cfg))
        if known is None:
            known = (quant_cfg, repr(quant_cfg))
            self._content[id(quant_cfg)] = known
        return known[1]

    def fresh(self, module: Any, attr_name: str) -> Any:
        if threading.get_ident() != self._owner or not _plain(module):
            return self._fresh(module, attr_name)
        if self._placeholder is None:
            from modelopt.torch.quantization.nn import TensorQuantizer

            self._placeholder = TensorQuantizer()  # never configured, never kept: configure() replaces it
        return self._placeholder

    def configure(self, module: Any, quant_cfg: Any) -> None:
        attrs = _quantizer_attrs(module)
        if self._placeholder is None or not any(module._modules.get(a) is self._placeholder for a in attrs):
            self._configure(module, quant_cfg)
            return
        key = (self._content_key(quant_cfg), type(module), attrs)
        template = self._templates.get(key)
        if template is not None:
            for attr in attrs:
                setattr(module, attr, fast_deepcopy(template[attr]))
            self.copied += 1
            return
        for attr in attrs:  # the first of its kind: what ModelOpt would have done
            setattr(module, attr, self._fresh(module, attr))
        self._configure(module, quant_cfg)
        self._templates[key] = {attr: fast_deepcopy(getattr(module, attr)) for attr in attrs}
        self.configured += 1


_ATOMIC = frozenset({
    type(None), bool, int, float, complex, str, bytes, type, range, types.FunctionType, types.BuiltinFunctionType,
    types.CodeType, weakref.ref, property, type(Ellipsis), type(NotImplemented),
})  # what copy.deepcopy returns as it is
_CONTAINERS = frozenset({dict, OrderedDict, list})


def fast_deepcopy(obj: Any, memo: dict[int, Any] | None = None) -> Any:
    """`copy.deepcopy(obj)`, several times faster for what a configured quantizer is made of.

    Why: a quantizer is a module of a dozen hook dicts, a calibrator and a few dozen scalars; `copy.deepcopy`
    dispatches every one of them through `__reduce_ex__` and `_reconstruct` (~85 us a quantizer on the CPU box),
    and AutoQuantize needs one per (format, module, quantizer): ~5,300 for the reference matrix. This walks the
    same graph with the same protocol — an object is made with `cls.__new__` and given a deep copy of its
    `__getstate__()` through `__setstate__` (nn.Module) or its `__dict__` — but answers atoms, dicts and lists
    directly. Anything with a copy protocol of its own (tensors, enums, `__deepcopy__`, `__reduce__`, slots, a
    copyreg entry) goes to `copy.deepcopy` with the shared memo, so aliasing inside the object is kept as
    deepcopy keeps it."""
    return _clone(obj, {} if memo is None else memo)


def _clone(obj: Any, memo: dict[int, Any]) -> Any:
    cls = type(obj)
    if cls in _ATOMIC or isinstance(obj, type):  # classes, whatever their metaclass, are atoms to deepcopy too
        return obj
    found = memo.get(id(obj))
    if found is not None:
        return found
    if cls in _CONTAINERS and not (cls is OrderedDict and vars(obj)):  # an OrderedDict with attributes: deepcopy
        if cls is list:
            new_list: list[Any] = []
            memo[id(obj)] = new_list
            new_list.extend(_clone(v, memo) for v in obj)
            return new_list
        new_dict = cls()
        memo[id(obj)] = new_dict
        for k, v in obj.items():
            new_dict[_clone(k, memo)] = _clone(v, memo)
        return new_dict
    if cls is tuple:
        items = tuple(_clone(v, memo) for v in obj)
        same = all(a is b for a, b in zip(items, obj, strict=True))
        return obj if same else memo.setdefault(id(obj), items)
    if _plain_protocol(cls):
        new = cls.__new__(cls)
        memo[id(obj)] = new
        raw = obj.__getstate__()
        memo.setdefault(id(memo), []).append(raw)  # kept alive, as deepcopy keeps what it copies: ids stay unique
        state = _clone(raw, memo)
        if state is None:  # an object with an empty __dict__
            pass
        elif hasattr(new, "__setstate__"):
            new.__setstate__(state)
        else:
            new.__dict__.update(state)
        return new
    return copy.deepcopy(obj, memo)


_PLAIN: dict[type, bool] = {}


def _plain_protocol(cls: type) -> bool:
    """True when deepcopy would copy instances of `cls` by `__reduce_ex__`'s default: `cls.__new__(cls)`, then the
    deep-copied `__getstate__()` set with `__setstate__` or into `__dict__` (the protocol `_clone` follows)."""
    known = _PLAIN.get(cls)
    if known is None:
        import copyreg

        getstate = getattr(cls, "__getstate__", object.__getstate__)
        known = (
            not issubclass(cls, (dict, list, set, frozenset, tuple, type))  # their items are not in __getstate__
            and not hasattr(cls, "__getnewargs__")
            and not hasattr(cls, "__getnewargs_ex__")
            and cls not in copyreg.dispatch_table
            and not hasattr(cls, "__deepcopy__")
            and cls.__reduce_ex__ is object.__reduce_ex__
            and cls.__reduce__ is object.__reduce__
            and not any("__slots__" in vars(k) for k in cls.__mro__)
            and hasattr(cls, "__dict__")
            and (getstate is object.__getstate__ or _module_getstate(cls))
            and getattr(cls, "__setstate__", None) in (None, *_module_setstates(cls))
        )
        _PLAIN[cls] = known
    return known


def _module_getstate(cls: type) -> bool:
    from torch import nn

    return issubclass(cls, nn.Module) and cls.__getstate__ is nn.Module.__getstate__


def _module_setstates(cls: type) -> tuple[Any, ...]:
    from torch import nn

    return (nn.Module.__setstate__,) if issubclass(cls, nn.Module) else ()


def _quantizer_attrs(module: Any) -> tuple[str, ...]:
    from modelopt.torch.quantization.algorithms import _get_quantizer_attrs

    return tuple(_get_quantizer_attrs(module))


def _plain(module: Any) -> bool:
    """A quantized module whose only children are its single (not per-expert) quantizers."""
    from modelopt.torch.quantization.nn import TensorQuantizer

    attrs = _quantizer_attrs(module)
    children = module._modules
    return set(children) == set(attrs) and all(
        isinstance(children[a], TensorQuantizer) or children[a] is None for a in attrs
    )
