"""Checks of a row's `trust` block (recipe stability, layer-level fidelity) when a summary is read back.

Why a module of its own: `quantsweep run` writes the block (execution/trust_checks.py) and every reader of a
summary validates rows the same way (summary_io.validate_row), so an impossible value (a flip share of 1.5, a
correlation of 2, a confidence interval upside down) is refused with `<file>: <field path>: <problem>` before
the KPI `recipe_stability_rate` or the report's "Can I trust this?" section uses it. Pure.
"""

from __future__ import annotations

from typing import Any

from .fields import ANY, COUNT, Fields, Num

SHARE = Num(lo=0, hi=1)
RHO = Num(lo=-1, hi=1)
_STABILITY_NUM = {
    "resamples": COUNT, "seed": COUNT, "batches": COUNT, "distinct_resamples": COUNT, "solved": COUNT, "groups": COUNT,
    "groups_ever_flipped": COUNT, "full_solve_flips": COUNT, "max_flip_share": SHARE, "flip_share": SHARE,
    "jaccard_mean": SHARE, "jaccard_min": SHARE, "total_score": ANY, "ci_level": Num(lo=0, hi=1, lo_open=True),
}
_FIDELITY_NUM = {"k": COUNT, "seed": COUNT, "rho": RHO, "n": COUNT, "measured": COUNT}
_GROUP_NUM = {"proxy_score": ANY, "kl_mean": Num(lo=0, finite=False)}


def _common(f: Fields, where: str, block: dict[str, Any]) -> None:
    f.boolean(f"{where}.computable", block.get("computable"))
    f.string(f"{where}.reason", block.get("reason"))


def check_trust(f: Fields, where: str, trust: Any) -> None:
    t = f.obj(where, trust)
    st = f.obj(f"{where}.stability", t.get("stability"))
    if st:
        w = f"{where}.stability"
        _common(f, w, st)
        f.boolean(f"{w}.stable", st.get("stable"))
        f.numeric_fields(w, st, _STABILITY_NUM)
        ci = f.numbers(f"{w}.score_ci", st.get("score_ci"), ANY)
        if ci and (len(ci) != 2 or ci[0] > ci[1]):
            raise f.fail(f"{w}.score_ci", f"expected [low, high] with low <= high, got {ci!r}"[:200])
        if st.get("stable") is not None and st.get("computable") is not True:
            raise f.fail(f"{w}.stable", "a verdict without a computable bootstrap")
    lf = f.obj(f"{where}.layer_fidelity", t.get("layer_fidelity"))
    if lf:
        w = f"{where}.layer_fidelity"
        _common(f, w, lf)
        f.numeric_fields(w, lf, _FIDELITY_NUM)
        for i, g in enumerate(f.seq(f"{w}.groups", lf.get("groups"))):
            gw = f"{w}.groups[{i}]"
            f.expect(gw, g, isinstance(g, dict), "an object")
            f.string(f"{gw}.name", g.get("name"), required=True)
            f.one_of(f"{gw}.picked", g.get("picked"), ("top", "random"))
            f.numeric_fields(gw, g, _GROUP_NUM)
    check_lm_eval(f, f"{where}.lm_eval", t.get("lm_eval"))


_LM_EVAL_NUM = {"num_fewshot": COUNT, "limit": COUNT, "wall_s": Num(lo=0), "rebuilt_kl_mean": Num(lo=0)}


def check_lm_eval(f: Fields, where: str, block: Any) -> None:
    """A downstream-accuracy block (trust/downstream.py): a row's `trust.lm_eval` or the summary's
    `baseline.lm_eval`. Scores are finite; standard errors are >= 0 or null."""
    b = f.obj(where, block)
    if not b:
        return
    _common(f, where, b)
    f.numeric_fields(where, b, _LM_EVAL_NUM)
    f.string(f"{where}.lm_eval_version", b.get("lm_eval_version"))
    # "rebuilt": a cell rebuilt from its recipe after the last cell (execution/lm_eval_phase.py)
    f.one_of(f"{where}.model", b.get("model"), ("rebuilt",))
    f.obj(f"{where}.evaluated_by", b.get("evaluated_by"))
    samples = f.obj(f"{where}.samples", b.get("samples"))
    for task, n in samples.items():
        f.number(f"{where}.samples.{task}", n, COUNT, required=True)
    tasks = f.obj(f"{where}.tasks", b.get("tasks"))
    for task, metrics in tasks.items():
        tw = f"{where}.tasks.{task}"
        for metric, m in f.obj(tw, metrics, required=True).items():
            mw = f"{tw}.{metric}"
            m = f.obj(mw, m, required=True)
            f.number(f"{mw}.value", m.get("value"), Num(), required=True)
            f.number(f"{mw}.stderr", m.get("stderr"), Num(lo=0))
    if b.get("computable") is True and not tasks:
        raise f.fail(f"{where}.tasks", "a computable evaluation without any task")
