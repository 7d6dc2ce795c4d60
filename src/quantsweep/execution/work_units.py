"""Work units for distributed execution: what one worker runs at a time, how big it is, and how to split one.

Pure (no torch, no ray). A unit is what the engines already have: the cells of one union AutoQuantize call
(shared engine) or one cell (naive engine). Union calls are unequal (a data-free call over every weight-only
format dwarfs a one-format calibration call), so units are scheduled largest first, and while there are fewer
units than workers the largest splittable one is split — by formats (the shared engine's formats are calibrated
and scored independently of each other, see docs/shared-engine.md) or, for a single format, by dataset sizes
(scores are prefix sums over batches) — so that no worker idles while one call runs. With enough units but
unequal ones (a 4-format data-free call beside a 1-format calibrated one on two GPUs), a unit is split further —
unevenly if that fits best — while that shortens the schedule that largest-first placement would give, counting
the set-up a split repeats. A split never changes a result, only where it is computed.

The cost model is in forward-pass equivalents (one forward of one batch). Its constants were read off an
8B-shaped union call on an H200 (`benchmarks/profile_union.py --variant llama3-8b --split`, docs/distributed.md):
they only have to order units and tell a useful split from a useless one, not predict seconds.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field

CALL_SETUP = 15.0  # per call: ModelOpt converts the model, sets up the search, restores the model after
FWD_BWD = 3.0  # per score batch, whatever the formats: the captured forward+backward
FORMAT_SETUP = 12.0  # per format: a quantizer per module configured through ModelOpt, and its calibration bookkeeping
REPLAY = 4.0  # per format, calibration size and score batch: the replay of every module from the capture
CELL = 5.0  # per cell, beside its evaluation batches: the solve, the stability bootstrap, the record
MIN_GAIN = 0.05  # a further split must shorten the schedule by this share (it repeats a call's set-up)
MAX_UNITS_PER_WORKER = 3


@dataclass(frozen=True)
class UnitMember:
    """One cell of a unit, with what its cost depends on."""

    cell_id: str
    format_label: str  # the union-call format the cell reads its scores from (a menu's: its members joined by +)
    calib_steps: int
    score_steps: int
    menu: tuple[str, ...] = ()  # a menu cell's member formats (all in the unit's one call); () for one format
    calib_size: int = 0  # the calibration size its scores are replayed at (one calibration pass for several); 0: one

    @property
    def format_labels(self) -> tuple[str, ...]:
        return self.menu or (self.format_label,)


@dataclass
class WorkUnit:
    label: str
    members: list[UnitMember]
    repeats: int = 1  # naive engine: executions per cell
    eval_steps: int = 1  # evaluation batches per cell
    attempts: int = 0  # times a worker died while running it
    failed_on: set[str] = field(default_factory=set)  # workers it died on

    @property
    def cell_ids(self) -> list[str]:
        return [m.cell_id for m in self.members]

    @property
    def formats(self) -> list[str]:
        """The distinct formats the unit's call calibrates and scores (a menu's members count one by one)."""
        return sorted({f for m in self.members for f in m.format_labels})

    @property
    def _split_keys(self) -> list[str]:
        """What a split by formats keeps together: one format, or one menu with all its members (a menu cell is
        solved from one call holding every member)."""
        return sorted({m.format_label for m in self.members})

    @property
    def cost(self) -> float:
        """Relative cost in forward-pass equivalents (see the constants above): the call's set-up and one
        forward+backward per score batch, whatever its formats; per format its set-up, its calibration batches and
        one replay per score batch and calibration size; per cell its evaluation batches and its solve."""
        if self.writes_only_errors:
            return 0.0
        calib = max(m.calib_steps for m in self.members)
        score = max(m.score_steps for m in self.members)
        replays = sum(len({m.calib_size for m in self.members if f in m.format_labels}) for f in self.formats)
        per_call = CALL_SETUP + score * FWD_BWD + len(self.formats) * (FORMAT_SETUP + calib) + replays * score * REPLAY
        return self.repeats * (per_call + len(self.members) * (self.eval_steps + CELL))

    @property
    def writes_only_errors(self) -> bool:
        """The cells ModelOpt refuses (shared_runner.work_units): no calibration, scoring or evaluation, only
        their error rows: no cost, and nothing to gain from a split."""
        return self.eval_steps == 0 and all(m.calib_steps == 0 and m.score_steps == 0 for m in self.members)

    def splittable(self) -> bool:
        if self.writes_only_errors:
            return False
        return len(self._split_keys) > 1 or len({m.score_steps for m in self.members}) > 1

    def split(self) -> tuple[WorkUnit, WorkUnit]:
        """Two units that together hold this one's cells, as even as can be: by formats when it has several (the
        heaviest format to the lighter side), else by sizes."""
        return self.splits()[0]

    def splits(self) -> list[tuple[WorkUnit, WorkUnit]]:
        """Every way `balance` considers to cut this unit in two: the even split first, then, by formats, the
        heaviest k formats against the rest (an uneven split can fit beside a smaller unit); by sizes, the
        largest size against the rest."""
        if len(self._split_keys) <= 1:
            top = max(m.score_steps for m in self.members)
            largest = [m for m in self.members if m.score_steps == top]
            return [self._pair(largest, [m for m in self.members if m.score_steps != top], "sizes")]
        by_format: dict[str, list[UnitMember]] = {}
        for m in self.members:
            by_format.setdefault(m.format_label, []).append(m)
        ordered = sorted(by_format.items(), key=lambda kv: (-self._format_weight(kv[1]), kv[0]))
        even: tuple[list[UnitMember], list[UnitMember]] = ([], [])
        weight = [0.0, 0.0]
        for _label, ms in ordered:  # longest-processing-time first: heaviest format to the lighter side
            side = 0 if weight[0] <= weight[1] else 1
            even[side].extend(ms)
            weight[side] += self._format_weight(ms)
        out = [self._pair(*even, "formats")]
        seen = {frozenset(m.cell_id for m in even[0])}
        for k in range(1, len(ordered)):
            head = list(itertools.chain.from_iterable(ms for _l, ms in ordered[:k]))
            tail = list(itertools.chain.from_iterable(ms for _l, ms in ordered[k:]))
            ids, rest = frozenset(m.cell_id for m in head), frozenset(m.cell_id for m in tail)
            if ids in seen or rest in seen:
                continue
            seen.add(ids)
            out.append(self._pair(head, tail, "formats"))
        return out

    def _pair(self, a: list[UnitMember], b: list[UnitMember], tag: str) -> tuple[WorkUnit, WorkUnit]:
        return self._child(a, f"{tag} 1/2"), self._child(b, f"{tag} 2/2")

    def _format_weight(self, ms: list[UnitMember]) -> float:
        return (FORMAT_SETUP + max(m.calib_steps for m in ms)
                + len({m.calib_size for m in ms}) * max(m.score_steps for m in ms) * REPLAY
                + len(ms) * (self.eval_steps + CELL))

    def _child(self, members: list[UnitMember], tag: str) -> WorkUnit:
        # keep the cells in the parent's (plan) order
        order = {m.cell_id: i for i, m in enumerate(self.members)}
        members = sorted(members, key=lambda m: order[m.cell_id])
        return WorkUnit(f"{self.label} [{tag}]", members, self.repeats, self.eval_steps)

    def without(self, done: set[str]) -> WorkUnit:
        """The same unit less the cells already recorded (what a retry must still run)."""
        rest = WorkUnit(self.label, [m for m in self.members if m.cell_id not in done], self.repeats, self.eval_steps)
        rest.attempts, rest.failed_on = self.attempts, set(self.failed_on)
        return rest


def _order(units: list[WorkUnit]) -> list[WorkUnit]:
    return sorted(units, key=lambda u: (-u.cost, u.label))


def makespan(units: list[WorkUnit], workers: int) -> float:
    """The schedule's length when units go largest first, each to the worker that is free first (what the Ray
    executor does with a queue in that order and workers taking the next unit when idle)."""
    loads = [0.0] * max(1, workers)
    for u in _order(units):
        i = loads.index(min(loads))
        loads[i] += u.cost
    return max(loads)


def balance(units: list[WorkUnit], workers: int) -> list[WorkUnit]:
    """Split the largest splittable unit until there are as many units as workers (or nothing can be split); then
    split further while one split (even or not) shortens the largest-first schedule by MIN_GAIN, up to
    MAX_UNITS_PER_WORKER units per worker. Returned largest first (ties in label order: reproducible)."""
    units = list(units)
    while len(units) < workers:
        candidates = [u for u in units if u.splittable()]
        if not candidates:
            break
        biggest = max(candidates, key=lambda u: (u.cost, u.label))
        units.remove(biggest)
        units.extend(biggest.split())
    if workers < 2:
        return _order(units)
    while len(units) < MAX_UNITS_PER_WORKER * workers:
        now = makespan(units, workers)
        best: tuple[float, WorkUnit, tuple[WorkUnit, WorkUnit]] | None = None
        for u in sorted((u for u in units if u.splittable()), key=lambda u: (-u.cost, u.label)):
            for pair in u.splits():
                trial = [x for x in units if x is not u] + list(pair)
                length = makespan(trial, workers)
                if length < now * (1 - MIN_GAIN) and (best is None or length < best[0]):
                    best = (length, u, pair)
        if best is None:
            break
        _length, u, pair = best
        units = [x for x in units if x is not u] + list(pair)
    return _order(units)
