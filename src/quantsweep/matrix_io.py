"""Reading matrix files (YAML or JSON) into a validated `Matrix`, with errors that name file and field.

YAML is read by the bounded safe loader of `inputs/documents.py` (no object construction, no duplicate keys,
bounded size, depth and alias expansion). Every problem becomes one line
`<file>: <field path>: <message>`, e.g. `matrices/x.yaml: axes.quant_pairs[2]: unknown quant pair 'wint3'`.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from .errors import MatrixError
from .inputs.documents import MATRIX as MATRIX_LIMITS
from .inputs.documents import DocumentError, read_structured
from .schema import UNION_TAGS, Matrix, axis_pair_label


def format_loc(loc: Sequence[Any]) -> str:
    """('axes', 'quant_pairs', 2, 'ref') -> 'axes.quant_pairs[2]'.

    Only the discriminator tags of the axis entries (a tag right after a list index under `axes`) are dropped,
    so a user key that happens to be called `ref` stays in the path.
    """
    out = ""
    for i, part in enumerate(loc):
        if isinstance(part, int):
            out += f"[{part}]"
        elif part in UNION_TAGS and i > 0 and isinstance(loc[i - 1], int) and loc and loc[0] == "axes":
            continue
        else:
            out += f".{part}" if out else str(part)
    return out


def _pydantic_problems(exc: ValidationError) -> list[tuple[str, str]]:
    """One line per problem. Errors from the members of a plain union (pydantic reports one per member, with
    the member's type as the last path element) are merged into one line at the field's own path."""
    errors = exc.errors(include_url=False)
    problems: list[tuple[str, str]] = []
    i = 0
    while i < len(errors):
        err = errors[i]
        group = [err]
        if err["type"] not in ("missing", "extra_forbidden") and len(err["loc"]) > 1:
            while (
                i + len(group) < len(errors)
                and errors[i + len(group)]["loc"][:-1] == err["loc"][:-1]
                and errors[i + len(group)]["input"] is err["input"]
                and errors[i + len(group)]["type"] not in ("missing", "extra_forbidden")
            ):
                group.append(errors[i + len(group)])
        i += len(group)
        loc = err["loc"][:-1] if len(group) > 1 else err["loc"]
        msgs = []
        for e in group:
            msg = e["msg"]
            if e["type"] == "extra_forbidden":
                msg = "unknown key (not part of the matrix schema)"
            elif msg.startswith("Value error, "):
                msg = msg[len("Value error, ") :]
            if msg not in msgs:
                msgs.append(msg)
        problems.append((format_loc(loc), "; or ".join(msgs) if len(msgs) > 1 else msgs[0]))
    return problems


def _duplicates(names: list[str], where: str) -> list[tuple[str, str]]:
    seen: dict[str, int] = {}
    problems = []
    for i, n in enumerate(names):
        key = n.lower()  # paths must not collide on case-insensitive file systems either
        if key in seen:
            problems.append((f"{where}[{i}]", f"duplicate entry {n!r} (same as [{seen[key]}])"))
        else:
            seen[key] = i
    return problems


def semantic_errors(m: Matrix) -> list[tuple[str, str]]:
    """Cross-field checks Pydantic cannot express per field."""
    problems: list[tuple[str, str]] = []
    pair_names = [axis_pair_label(p) for p in m.axes.quant_pairs]  # a menu by its label
    gran_names = [g if isinstance(g, str) else g.name for g in m.axes.granularities]
    size_names = [s if isinstance(s, str) else s.name for s in m.axes.dataset_sizes]
    problems += _duplicates(pair_names, "axes.quant_pairs")
    problems += _duplicates(gran_names, "axes.granularities")
    problems += _duplicates(size_names, "axes.dataset_sizes")
    for i, s in enumerate(m.axes.dataset_sizes):
        if isinstance(s, str):
            if s not in m.dataset.sizes:
                problems.append(
                    (
                        f"axes.dataset_sizes[{i}]",
                        f"unknown dataset size {s!r}; dataset.sizes defines: {', '.join(m.dataset.sizes)}",
                    )
                )
        elif s.name in m.dataset.sizes and m.dataset.sizes[s.name] != s.samples:
            problems.append(
                (
                    f"axes.dataset_sizes[{i}]",
                    f"size {s.name!r} is {s.samples} samples here but {m.dataset.sizes[s.name]} in dataset.sizes",
                )
            )
    if isinstance(m.autoquant.calib_size, int) and m.autoquant.calib_size < m.autoquant.batch_size:
        problems.append(("autoquant.calib_size", "must be at least autoquant.batch_size"))
    return problems


def parse_matrix(data: Any, source: str) -> Matrix:
    if not isinstance(data, dict):
        raise MatrixError(source, [("", f"the top level must be a mapping, got {type(data).__name__}")])
    try:
        matrix = Matrix.model_validate(data)
    except ValidationError as exc:
        raise MatrixError(source, _pydantic_problems(exc)) from None
    problems = semantic_errors(matrix)
    if problems:
        raise MatrixError(source, problems)
    return matrix


def read_matrix_data(path: Path) -> Any:
    """The parsed document, bounded in size, depth and alias expansion (inputs/documents.py)."""
    try:
        return read_structured(path, MATRIX_LIMITS, "matrix file")
    except DocumentError as exc:
        raise MatrixError(exc.source, [("", exc.detail)]) from None


def load_matrix(path: str | Path) -> Matrix:
    path = Path(path)
    return parse_matrix(read_matrix_data(path), str(path))
