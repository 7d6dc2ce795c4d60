"""A plain-language verdict on a recommended cell: can the user act on it? (docs/trust.md). Pure.

A recommended cell's quality is measured, so "does it meet the quality rule" is settled; what the checks add is
whether the *recipe* is the answer the evidence supports:
  * stability: would other score batches of the same data have picked the same layers?
  * fidelity: does the proxy that picked them rank cells (cell-level) and layers (layer-level) the way the
    measurement does? If not, a recipe with better measured quality may exist that the search never tried.

Thresholds for the words (documented in docs/trust.md): a Spearman rho >= 0.7 "agrees", 0.3 to 0.7 "agrees
partly", below 0.3 "disagrees". The overall word: "trust" when nothing checked argues against the recipe and at
least one check ran; "use with care" when a check argues against it; "unchecked" when no check could run.
"""

from __future__ import annotations

from typing import Any

AGREES, PARTLY = 0.7, 0.3


def rho_words(rho: float | None, n: int) -> str:
    if rho is None:
        return f"not computable (n={n})"
    word = "agrees" if rho >= AGREES else "agrees partly" if rho >= PARTLY else "disagrees"
    return f"{word} (ρ={rho:.2f}, n={n})"


def cell_verdict(row: dict[str, Any], group_fidelity: dict[str, Any] | None) -> dict[str, Any]:
    """`{"verdict": "trust" | "use with care" | "unchecked", "reasons": [sentence, ...]}` for one row."""
    trust = row.get("trust") if isinstance(row.get("trust"), dict) else {}
    reasons: list[str] = []
    against = checked = 0
    st = trust.get("stability") if isinstance(trust.get("stability"), dict) else None
    if st and st.get("computable") is True:
        checked += 1
        share = 100 * float(st.get("flip_share") or 0.0)
        if st.get("stable"):
            reasons.append(f"the recipe survives resampling of its {st.get('batches')} score batches "
                           f"({share:.1f} % of layer groups flip on average)")
        else:
            against += 1
            reasons.append(f"the recipe depends on which score batches were drawn ({share:.1f} % of layer groups "
                           "flip on average): score more samples before relying on the exact layer choice")
    else:
        reasons.append("stability unknown" + (f" ({st.get('reason')})" if st and st.get("reason") else ""))
    for label, block in (("across cells", group_fidelity), ("across layers", trust.get("layer_fidelity"))):
        if not isinstance(block, dict):
            continue
        rho, n = block.get("rho"), int(block.get("n") or 0)
        if rho is None:
            reasons.append(f"proxy vs measured KL {label}: {rho_words(None, n)}")
            continue
        checked += 1
        if rho < PARTLY:
            against += 1
        reasons.append(f"proxy vs measured KL {label}: {rho_words(float(rho), n)}"
                       + (": a better recipe may exist that the score did not point to" if rho < PARTLY else ""))
    verdict = "use with care" if against else "trust" if checked else "unchecked"
    return {"verdict": verdict, "reasons": reasons}
