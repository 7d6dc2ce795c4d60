"""Field checks for the documents quantsweep reads back (summaries, rows, manifests, recipes), with one message
format: `<file>: <field path>: <problem>`.

Why a module of its own: a document read back may have been written by hand, by another tool, or damaged, and
every reader must refuse the same wrong value the same way, before any of it is used. The type of a value is not
enough: a negative KL divergence or 70 bits per weight is well-typed and impossible, and a report built on it is
silently wrong (a negative `kl_mean` passes every quality threshold). So a number is checked against a `Num`:
its range, whether it must be whole, and whether NaN and infinities are allowed (a diverged measurement is a
legitimate, recorded outcome that marks the row invalid; NaN bits per weight or a NaN count are not).

Integers too large for a float are refused wherever a number is expected: every consumer converts to float
(`math.isfinite`, `float()`), which would raise on them. Counts must be integers no larger than 2**53 (the
largest integer every JSON reader represents exactly).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from ..errors import InputError

MAX_COUNT = 2**53


@dataclass(frozen=True)
class Num:
    """What a numeric field may hold. `finite=False`: NaN is accepted and so is an infinity inside the range."""

    lo: float | None = None
    hi: float | None = None
    lo_open: bool = False
    finite: bool = True
    integer: bool = False

    def describe(self) -> str:
        kind = "an integer" if self.integer else "a number"
        lo, hi = self.lo, self.hi
        if self.integer and hi == MAX_COUNT:
            hi = None  # "an integer >= 0" reads better; the bound is stated when it is exceeded
        if lo is not None and hi is not None:
            return f"{kind} in {'(' if self.lo_open else '['}{lo:g}, {hi:g}]"
        if lo is not None:
            return f"{kind} {'>' if self.lo_open else '>='} {lo:g}"
        if hi is not None:
            return f"{kind} <= {hi:g}"
        if self.finite:
            return "a finite integer" if self.integer else "a finite number"
        return kind


ANY = Num(finite=False)  # any number, NaN and infinities included (still no integer too large for a float)
FINITE = Num()
COUNT = Num(lo=0, hi=MAX_COUNT, integer=True)
BITS = Num(lo=0, hi=64)  # bits per weight: finite, from 0 (nothing stored) to 64 (a float64)
MEASURED = Num(lo=0, finite=False)  # a divergence or standard error: never negative, NaN/inf when it diverged
POSITIVE_MEASURED = Num(lo=0, lo_open=True, finite=False)  # a perplexity or its ratio
FRACTION = Num(lo=0, hi=1, finite=False)  # an agreement rate (NaN when nothing was compared)


def type_name(v: Any) -> str:
    return "null" if v is None else type(v).__name__


def show(v: Any) -> str:
    if isinstance(v, int) and not isinstance(v, bool) and abs(v) >= 10**40:
        return f"an integer of {len(str(abs(v)))} digits"
    s = repr(v)
    return s if len(s) <= 40 else s[:37] + "..."


def is_number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


class Fields:
    """Checks of one document; each method raises an InputError naming the file and the field path."""

    def __init__(self, source: str):
        self.source = source

    def fail(self, where: str, msg: str) -> InputError:
        return InputError(f"{self.source}: {where}: {msg}" if where else f"{self.source}: {msg}")

    def expect(self, where: str, v: Any, ok: bool, what: str) -> None:
        if not ok:
            raise self.fail(where, f"expected {what}, got {type_name(v)} {show(v)}")

    # --- containers --------------------------------------------------------------------------------------------
    def obj(self, where: str, v: Any, required: bool = False) -> dict[str, Any]:
        """An object (or null/absent when not required); returns it, or {} for null."""
        if v is None and not required:
            return {}
        if v is None:
            raise self.fail(where, "missing")
        self.expect(where, v, isinstance(v, dict), "an object" if required else "an object or null")
        return v

    def seq(self, where: str, v: Any, required: bool = False) -> list[Any]:
        if v is None and not required:
            return []
        if v is None:
            raise self.fail(where, "missing")
        self.expect(where, v, isinstance(v, list), "a list" if required else "a list or null")
        return v

    # --- scalars -----------------------------------------------------------------------------------------------
    def string(self, where: str, v: Any, required: bool = False, nonempty: bool = False, path: bool = False
               ) -> str | None:
        """A string (or null/absent when not required). `path`: one that names a file or folder, so no NUL
        character (no file name holds one) and at most 4096 characters (PATH_MAX)."""
        if v is None:
            if required:
                raise self.fail(where, "missing")
            return None
        ok = isinstance(v, str) and (not nonempty or v != "")
        self.expect(where, v, ok, ("a non-empty string" if nonempty else "a string") + ("" if required else " or null"))
        if path and "\x00" in v:
            raise self.fail(where, "contains a NUL character, which no file name can hold")
        if path and len(v) > 4096:
            raise self.fail(where, f"{len(v)} characters, longer than any file name can be (4096)")
        return v

    def boolean(self, where: str, v: Any) -> None:
        self.expect(where, v, v is None or isinstance(v, bool), "true, false or null")

    def number(self, where: str, v: Any, spec: Num = ANY, required: bool = False) -> None:
        if v is None:
            if required:
                raise self.fail(where, "missing")
            return
        null = "" if required else " or null"
        if spec.integer:
            self.expect(where, v, isinstance(v, int) and not isinstance(v, bool), f"an integer{null}")
        else:
            self.expect(where, v, is_number(v), f"a number{null}")
        if isinstance(v, int):
            if abs(v) > MAX_COUNT and spec.integer:
                raise self.fail(where, f"expected {spec.describe()}, got {show(v)} (more than 2**53)")
            try:
                float(v)
            except OverflowError:
                raise self.fail(where, f"expected {spec.describe()}, got {show(v)} (too large for a number)") from None
        if isinstance(v, float) and math.isnan(v):
            if spec.finite:
                raise self.fail(where, f"expected {spec.describe()}, got NaN")
            return
        if isinstance(v, float) and math.isinf(v) and spec.finite:
            raise self.fail(where, f"expected {spec.describe()}, got {v}")
        lo_bad = spec.lo is not None and (v <= spec.lo if spec.lo_open else v < spec.lo)
        hi_bad = spec.hi is not None and v > spec.hi
        if lo_bad or hi_bad:
            raise self.fail(where, f"expected {spec.describe()}, got {show(v)}")

    def numbers(self, where: str, v: Any, spec: Num = ANY, required: bool = False) -> list[Any]:
        """A list of numbers, each checked against `spec` (`where[i]` names the bad one)."""
        items = self.seq(where, v, required)
        for i, x in enumerate(items):
            if not is_number(x):
                raise self.fail(f"{where}[{i}]", f"expected a number, got {type_name(x)} {show(x)}")
            self.number(f"{where}[{i}]", x, spec, required=True)
        return items

    def strings(self, where: str, v: Any, required: bool = False) -> list[Any]:
        items = self.seq(where, v, required)
        for i, x in enumerate(items):
            self.string(f"{where}[{i}]", x, required=True)
        return items

    def one_of(self, where: str, v: Any, choices: Iterable[str], required: bool = False) -> None:
        self.string(where, v, required)
        choices = tuple(choices)
        if v is not None and v not in choices:
            raise self.fail(where, f"expected one of {', '.join(choices)}, got {show(v)}")

    def numeric_fields(self, where: str, doc: dict[str, Any], specs: dict[str, Num]) -> None:
        """Each named field of `doc` that is present, against its spec (null allowed)."""
        for name, spec in specs.items():
            self.number(f"{where}.{name}" if where else name, doc.get(name), spec)
