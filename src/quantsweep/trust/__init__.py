"""Can the user trust the answer? Checks of AutoQuantize's proxy against measurement (docs/trust.md).

Pure modules (no torch): `ranks` (Spearman's rank correlation), `stability` (bootstrap of the per-batch scores,
re-solved), `fidelity` (cell-level: predicted total score against measured KL), `verdict` (plain-language
judgement per cell). The one measurement that needs the model, layer-level fidelity, is
`quantsweep.engine.layer_fidelity`.
"""
