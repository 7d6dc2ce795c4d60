"""Plan-time feasibility: the least effective bits a cell can reach, from the model's layer shapes alone.

Why: `autoquant.disabled_layers` keeps layers at 16 bits, and when they are large (a 49k-token `lm_head`) no
recipe can meet a low budget. ModelOpt finds that out only inside `mtq.auto_quantize` (the naive engine's error
row: "The minimum achievable effective bits is 15.8168"); the shapes are known before anything runs (see
model_shapes.py), so `dry-run` and `run` say it up front, with the same minimum.

The arithmetic is ModelOpt's weight cost model: each searched linear layer costs its weight's elements x its
format's bits (16 for a disabled layer, the format's `format_bits` otherwise: scales are not counted), and the
effective bits are the total cost over the total elements, x 16 / 16.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Sequence

from .model_shapes import ModelShapes


def is_disabled(name: str, patterns: Sequence[str]) -> bool:
    """ModelOpt's test: any fnmatch pattern of `disabled_layers` against the module name."""
    return any(fnmatch.fnmatch(name, p) for p in patterns)


def minimum_effective_bits(shapes: ModelShapes, format_bits: float, disabled: Sequence[str]) -> float:
    """The effective bits of the cheapest recipe: every layer in the format, except the disabled ones at 16."""
    total = sum(x.numel for x in shapes.linears)
    kept = sum(x.numel for x in shapes.linears if is_disabled(x.name, disabled))
    return (kept * 16.0 + (total - kept) * float(format_bits)) / total


def infeasible(budget: float, minimum: float) -> bool:
    """ModelOpt's tolerance: refused when the minimum cost exceeds the target by more than 1e-12 of the total."""
    return minimum > budget + 16.0 * 1e-12
