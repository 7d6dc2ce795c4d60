"""The shared engine's shortcuts through ModelOpt's bookkeeping (engine/modelopt_bookkeeping.py) change nothing that
ModelOpt produces: the same recipe signatures, and quantizers configured exactly as `QuantRecipeHparam` configures
them, for plain, block-wise, activation-quantized and sequential (W4A8) formats."""

from __future__ import annotations

import warnings
from collections import OrderedDict
from collections.abc import Mapping
from typing import Any

import pytest

torch = pytest.importorskip("torch")
mtq = pytest.importorskip("modelopt.torch.quantization")

from modelopt.torch.quantization import algorithms  # noqa: E402
from modelopt.torch.quantization.algorithms import QuantRecipe, QuantRecipeHparam  # noqa: E402

from quantsweep.engine.modelopt_bookkeeping import fast_modelopt_bookkeeping  # noqa: E402

CONFIGS = {
    "int4_block": mtq.INT4_BLOCKWISE_WEIGHT_ONLY_CFG,
    "int8_weight": mtq.INT8_WEIGHT_ONLY_CFG,
    "fp8": mtq.FP8_DEFAULT_CFG,
    "w4a8": mtq.W4A8_AWQ_BETA_CFG,
}


class _Block(torch.nn.Module):
    """Two linears of different shapes and a nested one (modules of one class under different parents), and a
    convolution (a second quantized class, configured from its own template)."""

    def __init__(self) -> None:
        super().__init__()
        self.up = torch.nn.Linear(64, 128)
        self.down = torch.nn.Linear(128, 64, bias=False)
        self.inner = torch.nn.Sequential(torch.nn.Linear(64, 64))
        self.conv = torch.nn.Conv1d(64, 64, 1)

    def forward(self, x: Any) -> Any:
        h = self.inner(self.down(torch.relu(self.up(x))))
        return self.conv(h.transpose(1, 2)).transpose(1, 2)


def _quant_model() -> torch.nn.Module:
    torch.manual_seed(0)
    model = torch.nn.Sequential(_Block(), _Block())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        mtq.quantize(model, mtq.INT8_DEFAULT_CFG, lambda m: m(torch.randn(2, 3, 64)))
    return model


def _describe(value: Any, depth: int = 0) -> Any:
    """Everything a quantizer holds, addresses left out: classes, attributes, tensors by value."""
    if depth > 6:
        return repr(value)
    if isinstance(value, torch.Tensor):
        return ("tensor", str(value.dtype), tuple(value.shape), value.detach().flatten().tolist())
    if isinstance(value, Mapping):
        return {str(k): _describe(v, depth + 1) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_describe(v, depth + 1) for v in value]
    if hasattr(value, "__dict__") and not callable(value) or isinstance(value, torch.nn.Module):
        return (type(value).__name__, {k: _describe(v, depth + 1) for k, v in sorted(vars(value).items())})
    return repr(value)


def _hparam_quantizers(model: torch.nn.Module, recipes: list[Any]) -> tuple[list[Any], list[str], list[int]]:
    """One QuantRecipeHparam per block's linears, as AutoQuantize makes them; every recipe's quantizers, described."""
    described, signatures, ids = [], [], []
    for block in model:
        modules = [block.up, block.down, block.inner[0], block.conv]
        hp = QuantRecipeHparam(recipes, quant_modules=modules, quant_module_names=["up", "down", "inner.0", "conv"])
        for recipe in sorted(hp._all_quantizer_choices):
            signatures.append(recipe.checkpoint_signature)
            for module in modules:
                quantizers = hp._all_quantizer_choices[recipe][module]
                described.append({attr: (type(module).__name__, _describe(q)) for attr, q in quantizers.items()})
                ids.extend(id(q) for q in quantizers.values())
    return described, signatures, ids


def test_shortcuts_give_modelopts_quantizers_and_signatures():
    recipes = [QuantRecipe(cfg, name=name) for name, cfg in CONFIGS.items()]
    plain, plain_sigs, _ = _hparam_quantizers(_quant_model(), recipes)
    fresh_before = algorithms._make_fresh_quantizer_for_attr
    with fast_modelopt_bookkeeping() as templates:
        assert algorithms.QuantRecipe.__dict__["checkpoint_signature"].fget.__name__ == "_stored_signature"
        fast, fast_sigs, ids = _hparam_quantizers(_quant_model(), recipes)
        template_ids = {id(q) for t in templates._templates.values() for q in t.values()}
        # 2 blocks x 4 modules x 5 recipes (4 + 16 bits): ModelOpt configures one module per (config, class) — the
        # 16-bit recipe of each group is its own object, equal in content — and every other one is a copy
        assert templates.configured == 5 * 2 and templates.copied == 40 - 10
    assert fast_sigs == plain_sigs
    assert len(fast) == len(plain) == 40
    for got, want in zip(fast, plain, strict=True):
        assert got == want
    # every module got quantizers of its own: none shared with another module, a recipe or a template
    assert len(set(ids)) == len(ids) == 120 and not template_ids & set(ids)
    # w4a8's weight quantizer is ModelOpt's SequentialQuantizer (int4 then fp8), copied as such
    assert any(d["weight_quantizer"][1][0] == "SequentialQuantizer" for d in fast)
    # restored on exit: ModelOpt's own functions and property
    assert algorithms.QuantRecipe.__dict__["checkpoint_signature"].fget.__name__ == "checkpoint_signature"
    assert algorithms.set_quantizer_by_cfg.__module__ == "modelopt.torch.quantization.conversion"
    assert algorithms._make_fresh_quantizer_for_attr is fresh_before
    assert algorithms._match_quantizer_cfg.__module__ == "modelopt.torch.quantization.algorithms"


def test_config_matching_answers_with_modelopts_own_entries():
    """get_auto_quantize_config's `_match_quantizer_cfg`, answered once per (config, quantizer name): the same
    entry objects ModelOpt's loop returns (last match wins, path-scoped patterns included), for every name."""
    import modelopt.torch.quantization as mtq
    from modelopt.torch.quantization import algorithms

    plain = algorithms._match_quantizer_cfg
    configs = [algorithms.QuantRecipe(c).config.quant_cfg for c in
               (mtq.INT4_BLOCKWISE_WEIGHT_ONLY_CFG, mtq.FP8_DEFAULT_CFG, mtq.W4A8_AWQ_BETA_CFG)]
    configs.append(configs[0] + [{"quantizer_name": "*mlp*weight_quantizer", "enable": False}])  # path-scoped, last
    names = ["weight_quantizer", "input_quantizer", "output_quantizer", "k_bmm_quantizer", "gate_up_weight_quantizer"]
    with fast_modelopt_bookkeeping():
        memo = algorithms._match_quantizer_cfg
        assert memo is not plain
        for _ in range(2):  # the second round is answered from the memo
            for cfg in configs:
                for name in names:
                    got, want = memo(cfg, name), plain(cfg, name)
                    assert got[0] is want[0] and got[1] == want[1], (name, got, want)
    assert plain(configs[3], "weight_quantizer")[1] is False  # the path-scoped entry is the last match
    # the identity checks above compared real entries, not only "no match" (None is None)
    assert sum(plain(cfg, name)[0] is not None for cfg in configs for name in names) >= 6
    assert algorithms._match_quantizer_cfg is plain


def test_modelopts_fnmatch_is_answered_once_per_pair():
    """get_auto_quantize_config tests every config entry against every quantizer name with `fnmatch.fnmatch`, once
    per group: inside the shortcuts ModelOpt's module sees an `fnmatch` whose answers are memoised, the same ones."""
    import fnmatch

    from modelopt.torch.quantization import algorithms

    pairs = [("weight_quantizer", "*weight_quantizer"), ("input_quantizer", "*weight_quantizer"),
             ("model.layers.3.mlp.down_proj", "*mlp*"), ("lm_head", "*lm_head*"), ("Lm_Head", "*lm_head*"),
             ("k_bmm_quantizer", "*[kv]_bmm_quantizer")]
    assert algorithms.fnmatch is fnmatch
    with fast_modelopt_bookkeeping():
        view = algorithms.fnmatch
        assert view is not fnmatch and view.fnmatchcase is fnmatch.fnmatchcase and view.filter is fnmatch.filter
        for _ in range(3):
            assert [view.fnmatch(n, p) for n, p in pairs] == [fnmatch.fnmatch(n, p) for n, p in pairs]
        info = view.fnmatch.cache_info()
        assert (info.misses, info.hits) == (len(pairs), 2 * len(pairs))
    assert [fnmatch.fnmatch(n, p) for n, p in pairs] == [True, False, True, True, False, True]
    assert algorithms.fnmatch is fnmatch  # restored on exit


def test_another_thread_gets_modelopts_own_set_up():
    """While the shared engine's thread has the shortcuts installed, hparams built on another thread are configured
    by ModelOpt itself (no copies made for it), with the same result."""
    import threading

    recipes = [QuantRecipe(cfg, name=name) for name, cfg in CONFIGS.items()]
    plain = _hparam_quantizers(_quant_model(), recipes)[0]
    out: dict[str, Any] = {}
    with fast_modelopt_bookkeeping() as templates:
        worker = threading.Thread(target=lambda: out.update(got=_hparam_quantizers(_quant_model(), recipes)[0]))
        worker.start()
        worker.join()
        assert templates.configured == templates.copied == 0
    assert out["got"] == plain


def test_copies_are_independent_of_each_other():
    """Calibrating one module's copied quantizer leaves its template and its siblings untouched."""
    recipes = [QuantRecipe(mtq.INT8_WEIGHT_ONLY_CFG, name="int8")]
    model = _quant_model()
    with fast_modelopt_bookkeeping():
        hp = QuantRecipeHparam(recipes, quant_modules=[model[0].up, model[1].up], quant_module_names=["a", "b"])
    recipe = next(r for r in hp._all_quantizer_choices if r.checkpoint_signature == recipes[0].checkpoint_signature)
    a = hp._all_quantizer_choices[recipe][model[0].up]["weight_quantizer"]
    b = hp._all_quantizer_choices[recipe][model[1].up]["weight_quantizer"]
    assert a is not b and a._calibrator is not b._calibrator
    a.amax = torch.tensor(3.0)
    assert getattr(b, "_amax", None) is None


def test_fast_deepcopy_gives_deepcopys_quantizers_and_keeps_aliases():
    """`fast_deepcopy` against `copy.deepcopy` on calibrated quantizers (amax buffers, block sizes, a calibrator,
    W4A8's SequentialQuantizer): the same classes, attributes and tensors; no object shared with the original;
    an object held twice is copied once, as deepcopy does."""
    import copy

    from quantsweep.engine.modelopt_bookkeeping import fast_deepcopy

    model = _quant_model()  # INT8 W8A8, calibrated: every quantizer has an amax buffer
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        w4a8 = torch.nn.Sequential(_Block(), _Block())
        mtq.quantize(w4a8, mtq.W4A8_AWQ_BETA_CFG, lambda m: m(torch.randn(2, 3, 64)))
    quantizers = [model[0].up.weight_quantizer, model[0].up.input_quantizer, w4a8[1].down.weight_quantizer]
    assert type(quantizers[-1]).__name__ == "SequentialQuantizer"
    for q in quantizers:
        fast, slow = fast_deepcopy(q), copy.deepcopy(q)
        assert _describe(fast) == _describe(slow) == _describe(q)
        originals = {id(v) for v in q.modules()} | {id(t) for t in q.state_dict(keep_vars=True).values()}
        assert not originals & ({id(v) for v in fast.modules()} | {id(t) for t in fast.state_dict(keep_vars=True).values()})
    pair = {"a": quantizers[0], "b": quantizers[0]}
    copied = fast_deepcopy(pair)
    assert copied["a"] is copied["b"] and copied["a"] is not quantizers[0]
    # what a quantizer does not hold today but deepcopy handles: subclasses of containers, functions, classes
    class Items(dict):
        pass

    odd = {"items": Items(a=[1]), "fn": _describe, "cls": torch.nn.Linear, "hooks": OrderedDict(x=1)}
    odd["hooks"].note = "attribute"
    again = fast_deepcopy(odd)
    assert again["items"] == {"a": [1]} and type(again["items"]) is Items and again["items"]["a"] is not odd["items"]["a"]
    assert again["fn"] is _describe and again["cls"] is torch.nn.Linear and again["hooks"].note == "attribute"
    copied["a"].amax = torch.full_like(quantizers[0]._amax, 5.0)  # written into the copy's buffer in place
    assert float(copied["a"]._amax.max()) == 5.0 and float(quantizers[0]._amax.max()) != 5.0
