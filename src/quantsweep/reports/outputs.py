"""An output must never replace an input of the same command.

Why a module of its own: every report command writes its outputs atomically, by renaming a finished file over the
name it is given, and that name is the user's to choose. `kpi-report -s s.json --out s.json`, or `render-report`
into the folder of a summary named `scatter.json`, would then replace the document the command has just read:
the input is lost, silently. Each command checks its output names against its inputs before anything is read or
written (`check_not_an_input`).

What counts is the directory entry that a rename would replace: an output that is a symbolic link *to* an input is
fine (the rename replaces the link), an output whose name is the input (or an input that is a link to that name)
is refused.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

from ..errors import InputError


def _entry(path: Path) -> str:
    """The directory entry a rename onto `path` replaces: its folder resolved, its own name kept."""
    return os.path.join(os.path.realpath(path.parent), path.name)


# What a sweep or cell folder records: a report written over one of them would lose recorded results (a replaced
# rows.jsonl loses every row, and a run appending at that moment keeps writing to the unlinked file).
RECORDED_NAMES = frozenset({"rows.jsonl", "sweep-summary.json", "canary.json", "manifest.json", "recipe.json", ".lock",
                            "record.json"})


def check_not_an_input(outputs: Iterable[str | Path], inputs: Iterable[str | Path], label: str) -> None:
    """InputError `<label> <output>: ...` when writing an output would replace one of `inputs`, or an existing file
    that a sweep, a cell or a baseline store records results in."""
    targets = {os.path.realpath(p): str(p) for p in inputs}
    for out in outputs:
        source = targets.get(_entry(Path(out)))
        if source is not None:
            raise InputError(f"{label} {out}: would replace {source}, which this command reads; write it elsewhere")
        p = Path(out)
        if p.name in RECORDED_NAMES and (p.exists() or p.is_symlink()):
            raise InputError(f"{label} {out}: would replace a file that a sweep or baseline store records results "
                             "in; write it elsewhere")


def json_and_markdown(out: str | Path | None) -> list[Path]:
    """`--out FILE` of a report that writes JSON there and its markdown beside it (same name, `.md`; `.md.md`
    when FILE itself ends in `.md`, so the two never collide). Empty without `--out`."""
    if out is None:
        return []
    p = Path(out)
    return [p, p.with_suffix(".md" if p.suffix != ".md" else ".md.md")]
