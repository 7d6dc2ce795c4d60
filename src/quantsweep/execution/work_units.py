"""Work units for distributed execution: what one worker runs at a time, how big it is, and how to split one.

Pure (no torch, no ray). A unit is what the engines already have: the cells of one union AutoQuantize call
(shared engine) or one cell (naive engine). Union calls are unequal (a data-free call over every weight-only
format dwarfs a one-format calibration call), so units are scheduled largest first, and while there are fewer
units than workers the largest splittable one is split — by formats (the shared engine's formats are calibrated
and scored independently of each other, see docs/shared-engine.md) or, for a single format, by dataset sizes
(scores are prefix sums over batches) — so that no worker idles while one call runs. A split never changes a
result, only where it is computed.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class UnitMember:
    """One cell of a unit, with what its cost depends on."""

    cell_id: str
    format_label: str  # the union-call format the cell reads its scores from (a menu's: its members joined by +)
    calib_steps: int
    score_steps: int
    menu: tuple[str, ...] = ()  # a menu cell's member formats (all in the unit's one call); () for one format

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
        """Relative cost in forward-pass equivalents: each format calibrates on its own batches; each score batch
        is one forward+backward of the model (~3 forwards) plus one quantized replay per format; each cell is
        evaluated on the held-out batches."""
        n_formats = len(self.formats)
        calib = max(m.calib_steps for m in self.members)
        score = max(m.score_steps for m in self.members)
        return self.repeats * (n_formats * calib + score * (3 + n_formats) + len(self.members) * self.eval_steps)

    def splittable(self) -> bool:
        return len(self._split_keys) > 1 or len({m.score_steps for m in self.members}) > 1

    def split(self) -> tuple[WorkUnit, WorkUnit]:
        """Two units that together hold this one's cells: by formats when it has several, else by sizes."""
        if len(self._split_keys) > 1:
            by_format: dict[str, list[UnitMember]] = {}
            for m in self.members:
                by_format.setdefault(m.format_label, []).append(m)
            # longest-processing-time first: heaviest format to the lighter side
            parts: tuple[list[UnitMember], list[UnitMember]] = ([], [])
            weight = [0.0, 0.0]
            for _label, ms in sorted(by_format.items(), key=lambda kv: (-self._format_weight(kv[1]), kv[0])):
                side = 0 if weight[0] <= weight[1] else 1
                parts[side].extend(ms)
                weight[side] += self._format_weight(ms)
            tag = "formats"
        else:
            top = max(m.score_steps for m in self.members)
            largest = [m for m in self.members if m.score_steps == top]
            parts = (largest, [m for m in self.members if m.score_steps != top])
            tag = "sizes"
        a, b = parts
        return self._child(a, f"{tag} 1/2"), self._child(b, f"{tag} 2/2")

    def _format_weight(self, ms: list[UnitMember]) -> float:
        return max(m.calib_steps for m in ms) + max(m.score_steps for m in ms) + len(ms) * self.eval_steps

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


def balance(units: list[WorkUnit], workers: int) -> list[WorkUnit]:
    """Split the largest splittable unit until there are as many units as workers (or nothing can be split);
    return them largest first (ties in label order, so the schedule is reproducible)."""
    units = list(units)
    while len(units) < workers:
        candidates = [u for u in units if u.splittable()]
        if not candidates:
            break
        biggest = max(candidates, key=lambda u: (u.cost, u.label))
        units.remove(biggest)
        units.extend(biggest.split())
    return sorted(units, key=lambda u: (-u.cost, u.label))
