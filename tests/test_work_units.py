"""Work units for distributed execution: costs, splits and the largest-first order (pure)."""

from __future__ import annotations

from quantsweep.execution.work_units import (
    CALL_SETUP,
    CELL,
    FORMAT_SETUP,
    FWD_BWD,
    REPLAY,
    UnitMember,
    WorkUnit,
    balance,
    makespan,
)


def _union(label: str, formats: list[str], sizes: list[int], calib: int = 1, budgets: int = 1,
           by_prefix: bool = False) -> WorkUnit:
    members = [UnitMember(f"{label}-{f}-{s}-{b}", f, calib, s, calib_size=s if by_prefix else 0)
               for f in formats for s in sizes for b in range(budgets)]
    return WorkUnit(label, members, eval_steps=2)


def test_cost_counts_the_call_its_formats_their_replays_and_the_cells():
    u = _union("u", ["int8", "int4"], [1, 2], calib=1)
    # one call (set-up + 2 score batches' forward+backward), 2 formats (set-up + 1 calib step + 1 replay per score
    # batch), 4 cells (2 evaluation batches + solve)
    assert u.cost == CALL_SETUP + 2 * FWD_BWD + 2 * (FORMAT_SETUP + 1) + 2 * 2 * REPLAY + 4 * (2 + CELL)
    assert WorkUnit("r", u.members, repeats=3, eval_steps=2).cost == 3 * u.cost
    # one calibration pass for two sizes: each format is replayed at both sizes' amax
    p = _union("p", ["fp8"], [1, 2], calib=2, by_prefix=True)
    assert p.cost == CALL_SETUP + 2 * FWD_BWD + (FORMAT_SETUP + 2) + 2 * 2 * REPLAY + 2 * (2 + CELL)


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
    # as many equal units as workers: nothing is split (a split would only repeat a call's set-up)
    twin = _union("twin", ["e", "f", "g", "h"], [1, 2])
    assert [u.label for u in balance([big, twin], workers=2)] == ["data-free", "twin"]


def test_an_unequal_pair_of_calls_is_split_unevenly_when_that_shortens_the_schedule():
    # a data-free call (4 formats, 16 cells) beside a calibrated one (1 format, 4 cells), on two workers
    free = _union("data-free", ["int4", "int4g", "int8", "int8g"], [2, 4], budgets=2)
    calib = _union("calib-max", ["fp8"], [2, 4], calib=4, budgets=2, by_prefix=True)
    units = balance([free, calib], workers=2)
    assert sorted(c for u in units for c in u.cell_ids) == sorted(free.cell_ids + calib.cell_ids)
    assert makespan(units, 2) < 0.95 * makespan([free, calib], 2)
    parts = [u for u in units if u.label.startswith("data-free")]
    assert len(parts) == 2 and sorted(len(u.formats) for u in parts) == [1, 3]  # uneven: 3 + 1 formats
    # largest first: the 3-format part alone on one worker, the calibrated call and the 1-format part on the other
    assert [(u.label.split(" [")[0], len(u.formats)) for u in units] == [("data-free", 3), ("calib-max", 1),
                                                                         ("data-free", 1)]


def test_without_drops_finished_cells_and_keeps_the_failure_history():
    u = _union("u", ["a", "b"], [1])
    u.attempts, u.failed_on = 1, {"w0"}
    rest = u.without({"u-a-1-0"})
    assert rest.cell_ids == ["u-b-1-0"] and rest.attempts == 1 and rest.failed_on == {"w0"}
    assert u.cell_ids == ["u-a-1-0", "u-b-1-0"]  # the original is untouched


def test_the_unit_of_refused_cells_costs_nothing_and_is_never_split():
    # ModelOpt refuses these cells before any work: their unit only writes error rows
    refused = WorkUnit("refused by ModelOpt", [UnitMember(f"r{i}", f"key{i}", 0, 0) for i in range(4)], 1, 0)
    real = _union("calib-max", ["fp8"], [2, 4], calib=4, budgets=2, by_prefix=True)
    assert refused.cost == 0 and not refused.splittable()
    units = balance([refused, real], workers=2)
    assert [u.label for u in units if u.label.startswith("refused")] == ["refused by ModelOpt"]
    # the real call is split by sizes as it would be alone, so the refused unit does not keep a GPU idle
    assert makespan(units, 2) == makespan(balance([real], workers=2), 2) < real.cost


def test_gpu_workers_get_disjoint_cpu_slices_without_cpu_0():
    """execution/cpu_binding.py: each GPU worker of a node keeps to CPUs of its own, CPU 0 left to the system."""
    from quantsweep.execution.cpu_binding import worker_cpus

    cpus = list(range(32))
    a, b = worker_cpus(cpus, [0], 2, 1, 2), worker_cpus(cpus, [1], 2, 1, 2)
    assert a == list(range(1, 16)) and b == list(range(16, 31))
    assert worker_cpus(cpus, [1], 2, 1, 1) == list(range(1, 32))  # a sweep's only worker: all but CPU 0
    # 2 of a node's 8 GPUs in use: slices by the node's GPUs, whichever GPUs Ray hands out (never overlapping)
    slices = [worker_cpus(list(range(128)), [g], 8, 1, 2) for g in range(8)]
    assert all(len(s) == 15 for s in slices) and len({c for s in slices for c in s}) == 8 * 15
    assert worker_cpus(cpus, [2, 3], 4, 2, 2) == list(range(16, 31))  # GPUs 2-3: the second block of two
    assert worker_cpus(cpus, [0, 3], 4, 2, 2) is None  # not an aligned block: its slice could be another's
    assert worker_cpus(cpus, [0], 2, 0.5, 4) is None  # workers sharing a GPU would share a slice
    assert worker_cpus([0, 1, 2], [0], 2, 1, 2) is None  # too few CPUs to give each worker two
    assert worker_cpus(cpus, [1], 1, 1, 2) is None  # an index the node does not have (one `ray start` per GPU)
