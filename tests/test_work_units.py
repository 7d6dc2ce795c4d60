"""Work units for distributed execution: costs, splits and the largest-first order (pure)."""

from __future__ import annotations

from quantsweep.execution.work_units import UnitMember, WorkUnit, balance


def _union(label: str, formats: list[str], sizes: list[int], calib: int = 1) -> WorkUnit:
    members = [UnitMember(f"{f}-{s}", f, calib, s) for f in formats for s in sizes]
    return WorkUnit(label, members, eval_steps=2)


def test_cost_counts_formats_batches_and_evaluations():
    u = _union("u", ["int8", "int4"], [1, 2], calib=1)
    # 2 formats x 1 calib step + 2 score steps x (3 + 2 formats) + 4 cells x 2 eval steps
    assert u.cost == 2 * 1 + 2 * (3 + 2) + 4 * 2
    assert WorkUnit("r", u.members, repeats=3, eval_steps=2).cost == 3 * u.cost


def test_split_by_formats_keeps_every_cell_once_and_each_format_whole():
    u = _union("data-free", ["a", "b", "c", "d"], [1, 2])
    left, right = u.split()
    assert sorted(left.cell_ids + right.cell_ids) == sorted(u.cell_ids)
    assert not set(left.formats) & set(right.formats)  # a format's cells never straddle two calls
    assert len(left.formats) == len(right.formats) == 2
    assert left.label == "data-free [formats 1/2]" and right.label == "data-free [formats 2/2]"
    # cells keep the plan's order inside each part
    order = {cid: i for i, cid in enumerate(u.cell_ids)}
    assert [order[c] for c in left.cell_ids] == sorted(order[c] for c in left.cell_ids)


def test_a_single_format_splits_by_size_and_a_single_cell_not_at_all():
    u = _union("one", ["int8"], [1, 2, 4])
    big, small = u.split()
    assert [m.score_steps for m in big.members] == [4] and sorted(m.score_steps for m in small.members) == [1, 2]
    assert not WorkUnit("cell", [UnitMember("x", "int8", 1, 1)]).splittable()


def test_balance_splits_the_largest_until_every_worker_has_a_unit_and_orders_largest_first():
    big = _union("data-free", ["a", "b", "c", "d"], [1, 2])
    calib = _union("calib-4", ["fp8"], [1])
    units = balance([big, calib], workers=4)
    assert len(units) == 4
    assert sorted(c for u in units for c in u.cell_ids) == sorted(big.cell_ids + calib.cell_ids)
    assert [u.cost for u in units] == sorted((u.cost for u in units), reverse=True)
    # nothing to split: fewer units than workers is fine
    assert len(balance([calib], workers=8)) == 1
    # enough units: nothing is split
    assert [u.label for u in balance([big, calib], workers=2)] == ["data-free", "calib-4"]


def test_without_drops_finished_cells_and_keeps_the_failure_history():
    u = _union("u", ["a", "b"], [1])
    u.attempts, u.failed_on = 1, {"w0"}
    rest = u.without({"a-1"})
    assert rest.cell_ids == ["b-1"] and rest.attempts == 1 and rest.failed_on == {"w0"}
    assert u.cell_ids == ["a-1", "b-1"]  # the original is untouched
