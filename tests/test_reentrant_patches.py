"""engine/reentrant_patches.py: replacements installed by the outermost context, restored by it, seen by nested
contexts and other threads while in place."""

from __future__ import annotations

import threading
import types

import pytest

from quantsweep.engine.reentrant_patches import ReentrantPatches


class Owner:
    @staticmethod
    def helper() -> str:
        return "original static"

    def method(self) -> str:
        return "original method"


def test_outermost_context_installs_and_restores_what_it_decided():
    module = types.SimpleNamespace(func=lambda: "original")
    decided = []

    def decide():
        decided.append(1)
        return "yes", [(module, "func", lambda: "fast"), (Owner, "method", lambda self: "fast method"),
                       (Owner, "helper", staticmethod(lambda: "fast static"))]

    patches = ReentrantPatches(decide)
    static_before = Owner.__dict__["helper"]
    with patches.active() as outer:
        assert outer == "yes" and module.func() == "fast" and Owner().method() == "fast method"
        assert Owner.helper() == "fast static"
        assert patches.original(module, "func")() == "original"
        seen = []
        thread = threading.Thread(target=lambda: seen.append(module.func()))  # module-level: other threads see it
        thread.start()
        thread.join()
        assert seen == ["fast"]
        with patches.active() as inner:  # nested: the same decision, nothing decided or installed again
            assert inner == "yes" and module.func() == "fast"
        assert module.func() == "fast"  # the inner exit restores nothing
    assert decided == [1]
    assert module.func() == "original" and Owner().method() == "original method"
    assert Owner.__dict__["helper"] is static_before and Owner().helper() == "original static"  # a staticmethod again
    assert patches.original(module, "func")() == "original"  # a late caller of the replacement still gets it


def test_an_exception_inside_still_restores_and_the_next_context_decides_again():
    module = types.SimpleNamespace(func=lambda: "original")
    answers = iter([("first", [(module, "func", lambda: "fast")]), ("second", [])])
    patches = ReentrantPatches(lambda: next(answers))
    with pytest.raises(RuntimeError), patches.active():
        assert module.func() == "fast"
        raise RuntimeError("boom")
    assert module.func() == "original"
    with patches.active() as result:  # a later outermost context decides afresh (a guard may now say no)
        assert result == "second" and module.func() == "original"


def test_a_failed_install_leaves_every_original_in_place():
    class ReadOnly:
        @property
        def value(self) -> str:
            return "original"

    module = types.SimpleNamespace(func=lambda: "original")
    # the second replacement can be read but not set (a property without a setter): the first must not stay
    patches = ReentrantPatches(lambda: (None, [(module, "func", lambda: "fast"), (ReadOnly(), "value", "fast")]))
    with pytest.raises(AttributeError), patches.active():
        pass
    assert module.func() == "original"
    with pytest.raises(KeyError):
        patches.original(module, "func")  # nothing was installed
