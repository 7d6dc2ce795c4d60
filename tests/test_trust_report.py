"""The report's "Can I trust this?" section on a hand-written summary (reports/trust_section.py, trust/verdict.py)."""

from __future__ import annotations

from report_helpers import row, summary, write

from quantsweep.reports.render import blocks, build_report, render_markdown
from quantsweep.reports.summary_io import load_summary


def stab(stable, flip, batches=4):
    return {"computable": True, "reason": None, "stable": stable, "resamples": 50, "seed": 0, "batches": batches,
            "solved": 50, "flip_share": flip, "jaccard_mean": 1 - flip, "jaccard_min": 0.5, "total_score": 2.0,
            "score_ci": [1.5, 2.5], "ci_level": 0.95}


def test_trust_section_content(tmp_path):
    rows = [
        row("wint8_afp16", bits=8.0, kl=0.001, total_score=1.0, trust={"stability": stab(True, 0.0)}),
        row("w7_afp16", bits=7.0, kl=0.002, total_score=3.0),
        row("w6_afp16", bits=6.0, kl=0.003, total_score=2.0, trust={
            "stability": stab(False, 0.3),
            "layer_fidelity": {"computable": True, "reason": None, "k": 4, "seed": 0, "measured": 8, "rho": 0.1,
                               "n": 8, "groups": []}}),
        row("wint4_afp16", bits=4.0, kl=0.2, total_score=4.0,
            trust={"stability": {"computable": False, "reason": "1 score batch: nothing to resample", "stable": None,
                                 "batches": 1}}),
        row("wint8_afp16", size="tiny", bits=8.0, kl=0.001, total_score=1.0),
        row("wint4_afp16", size="tiny", bits=4.0, kl=0.01, total_score=2.0),
    ]
    s = load_summary(write(tmp_path / "s.json", summary(rows)))
    rep = build_report(s, False, "2026-01-01T00:00:00+00:00")
    md = render_markdown(blocks(rep))
    small = next(g for g in rep["view"]["groups"] if g["group"] == "m|small|default")
    assert small["minimum_viable"] == "w6_afp16/default/small"

    verdicts = {v["cell"]: v for v in rep["trust"]["verdicts"]}
    w6 = verdicts["w6_afp16/default/small"]
    assert w6["verdict"] == "use with care" and w6["role"] == "minimum viable"
    assert w6["reasons"] == [
        "the recipe depends on which score batches were drawn (30.0 % of layer groups flip on average): score more "
        "samples before relying on the exact layer choice",
        # scores 1 3 2 4 against KL ranks 1 2 3 4: rho = 1 - 6 * 2 / (4 * 15) = 0.8
        "proxy vs measured KL across cells: agrees (ρ=0.80, n=4)",
        "proxy vs measured KL across layers: disagrees (ρ=0.10, n=8): a better recipe may exist that the score did "
        "not point to",
    ]
    tiny = next(g for g in rep["view"]["groups"] if g["group"] == "m|tiny|default")
    t = verdicts[tiny["minimum_viable"]]
    assert t["verdict"] == "unchecked"
    assert t["reasons"] == ["stability unknown", "proxy vs measured KL across cells: not computable (n=2)"]

    section = md.split("## Can I trust this?", 1)[1].split("\n## ", 1)[0]
    assert "| w6_afp16/default/small | minimum viable | use with care | the recipe depends on" in section
    assert "| m\\|small\\|default | 4 | 0.800 | agrees (ρ=0.80, n=4) |" in section
    assert "| m\\|tiny\\|default | 2 | — | not computable (n=2) |" in section
    assert ("| wint8_afp16/default/small | 4 | 50 | 0.000 | 1.000 (min 0.500) | 2.000e+00 [1.500e+00, 2.500e+00] "
            "| yes |") in section
    assert "| wint4_afp16/default/small | 1 | — | — | — | — | not computable: 1 score batch: nothing to resample |" in section
    assert "| w6_afp16/default/small | 8 | 0.100 | disagrees (ρ=0.10, n=8) |" in section
