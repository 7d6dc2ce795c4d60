"""store/json_text.py: the documents' indented JSON equals `json.dumps(indent=2, sort_keys=True, allow_nan=True,
default=str)` character for character — on generated documents (every JSON type, subclasses, objects answered by
`default=str`, keys json must convert) and at an indentation level (the summary's rows)."""

from __future__ import annotations

import enum
import json
import math
from collections import OrderedDict
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from quantsweep.store.atomic import dumps
from quantsweep.store.json_text import indented_json, reference_dumps


class Level(enum.IntEnum):
    LOW = 3


class Tagged(str):
    pass


class Ratio(float):
    def __repr__(self) -> str:  # json uses float.__repr__, never a subclass's
        return "ratio"


class Opaque:
    def __str__(self) -> str:
        return "opaque \u2603 \"quoted\""


leaves = st.one_of(
    st.none(), st.booleans(), st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=12),
    st.sampled_from([Level.LOW, Tagged("tag\n"), Ratio(0.5), Path("/tmp/x y"), Opaque(), -0.0, 1e-300, 1e300]),
)
documents = st.recursive(
    leaves,
    lambda inner: st.one_of(
        st.lists(inner, max_size=5),
        st.lists(inner, max_size=3).map(tuple),
        st.dictionaries(st.text(max_size=6), inner, max_size=5),
        st.dictionaries(st.text(max_size=4), inner, max_size=3).map(lambda d: OrderedDict(reversed(d.items()))),
        st.dictionaries(st.integers(-5, 5), inner, max_size=3),  # keys json converts: its own answer
    ),
    max_leaves=40,
)


@settings(max_examples=400, deadline=None)
@given(documents, st.integers(min_value=0, max_value=3))
def test_indented_json_is_json_dumps_text(doc, level):
    expected = reference_dumps(doc)
    assert indented_json(doc) == expected
    assert indented_json(doc, level) == expected.replace("\n", "\n" + "  " * level)
    assert dumps(doc) == expected + "\n"


def test_a_manifest_shaped_document_and_the_errors_json_gives():
    groups = [{"name": f"model.layers.{i}.mlp.down_proj", "formats": ["wint4", "none"], "bits": [4.0, 16.0],
               "raw_scores": [0.1 * i, math.nan], "batch_scores": [[1e-9, 2.5e-7], [math.inf, -math.inf]],
               "chosen": "none", "weight_shapes": [[64, 192]]} for i in range(30)]
    doc = {"layers": groups, "quality": {"kl_mean": 0.0123, "eval_tokens": 2044}, "note": "état\t\u00e9",
           "empty": {}, "none": [], "nested": {"b": {"a": [{}]}}}
    assert indented_json(doc) == json.dumps(doc, indent=2, sort_keys=True, allow_nan=True, default=str)
    cycle: list = []
    cycle.append(cycle)
    with pytest.raises(ValueError, match="Circular reference"):
        indented_json(cycle)
    with pytest.raises(TypeError):
        indented_json({1: "a", "b": 2})  # json cannot sort mixed keys: the same error as before
