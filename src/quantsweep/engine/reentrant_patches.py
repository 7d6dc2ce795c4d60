"""Replacements of ModelOpt attributes installed while at least one context that wants them is open.

The shared engine swaps a few of ModelOpt's functions and methods for equivalent faster ones around its own
ModelOpt work (engine/calibrator_syncs.py, engine/calibration_walks.py, engine/axis_fake_quant.py), and those
contexts nest: a union call's bookkeeping context opens inside a cell's. Each swap is module- or class-level, so
every thread sees it while it is in place. `ReentrantPatches` keeps the one piece of bookkeeping they share: the
first context to open decides what to replace (the replacements are guarded by source hashes, read then) and
installs it; the last one to close puts the originals back; the contexts in between see what the first decided.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator
from typing import Any

Replacement = tuple[Any, str, Any]  # (module or class, attribute name, new value)


class ReentrantPatches:
    """`decide()` runs when the first context opens and returns (what every context yields, the replacements to
    install); `original(owner, name)` is the value a replacement took the place of, also after the last context
    closed (a caller that looked the replacement up while it was installed may still call it)."""

    def __init__(self, decide: Callable[[], tuple[Any, list[Replacement]]]) -> None:
        self._decide = decide
        self._lock = threading.Lock()
        self._depth = 0
        self._result: Any = None
        self._originals: dict[tuple[int, str], tuple[Any, Any]] = {}  # what the open contexts replaced
        self._replaced: dict[tuple[int, str], Any] = {}  # ... and what the last successful install replaced

    @contextlib.contextmanager
    def active(self) -> Iterator[Any]:
        with self._lock:
            if self._depth == 0:
                result, replacements = self._decide()
                done: list[tuple[Any, str]] = []
                try:
                    for owner, name, _value in replacements:  # the originals all read before anything is replaced
                        self._originals[(id(owner), name)] = (owner, _own_value(owner, name))
                    for owner, name, value in replacements:
                        setattr(owner, name, value)
                        done.append((owner, name))
                except BaseException:  # nothing half-installed outlives a failed install
                    for owner, name in reversed(done):
                        setattr(owner, name, self._originals[(id(owner), name)][1])
                    self._originals.clear()
                    raise
                self._replaced.update({key: value for key, (_, value) in self._originals.items()})
                self._result = result
            self._depth += 1
            result = self._result
        try:
            yield result
        finally:
            with self._lock:
                self._depth -= 1
                if self._depth == 0:
                    self._restore()

    def _restore(self) -> None:
        for (_, name), (owner, value) in reversed(list(self._originals.items())):
            setattr(owner, name, value)
        self._originals.clear()
        self._result = None

    def original(self, owner: Any, name: str) -> Any:
        return self._replaced[(id(owner), name)]


def _own_value(owner: Any, name: str) -> Any:
    """The attribute as the owner itself holds it: a class's own `__dict__` entry (a staticmethod or property stays
    one), a module's attribute."""
    if isinstance(owner, type):
        return owner.__dict__[name]
    return getattr(owner, name)
