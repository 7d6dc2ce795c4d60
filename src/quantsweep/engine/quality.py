"""Quality of a quantized model against the unquantized one, teacher-forced on the same held-out tokens.

Definitions (docs/metrics.md; llama.cpp's `--kl-divergence` conventions): for every predicted position t with
base distribution P_t and quantized distribution Q_t,
  KL_t = sum_v P_t(v) (log P_t(v) - log Q_t(v))      (direction base || quant)
  mean KL, its standard error and percentiles over t; PPL = exp(mean NLL of the true next token) for each model,
  their ratio; top-1 agreement = share of t where argmax P_t == argmax Q_t.

The baseline's outputs are computed once per sweep. Its full log-probabilities are kept when they fit in
`max_cache_bytes`; otherwise only the top-K log-probs plus the tail mass are kept and KL is computed over the
K+1 buckets (a lower bound of the exact KL; the method is recorded).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

DEFAULT_MAX_CACHE_BYTES = 1 << 30
TOPK = 256


@dataclass
class BaselineOutputs:
    """Per eval batch: either full log-probs [B, T-1, V] or (top-k log-probs, indices) on the CPU, float32."""

    full: list[torch.Tensor] | None
    topk_logp: list[torch.Tensor] | None
    topk_idx: list[torch.Tensor] | None
    nll: torch.Tensor  # [N] per predicted token
    argmax: list[torch.Tensor]
    method: str

    @property
    def tokens(self) -> int:
        return int(self.nll.numel())

    @property
    def perplexity(self) -> float:
        return float(torch.exp(self.nll.mean()))

    @property
    def mean_nll(self) -> float:
        return float(self.nll.mean())


def _logits(model: nn.Module, ids: torch.Tensor) -> torch.Tensor:
    return model(input_ids=ids).logits[:, :-1].float()


@torch.no_grad()
def baseline_outputs(
    model: nn.Module, batches: list[dict[str, torch.Tensor]], max_cache_bytes: int = DEFAULT_MAX_CACHE_BYTES
) -> BaselineOutputs:
    positions = sum(b["input_ids"].shape[0] * (b["input_ids"].shape[1] - 1) for b in batches)
    vocab = None
    full: list[torch.Tensor] = []
    tk_lp: list[torch.Tensor] = []
    tk_idx: list[torch.Tensor] = []
    nll: list[torch.Tensor] = []
    argmax: list[torch.Tensor] = []
    use_full = True
    for b in batches:
        ids = b["input_ids"]
        logp = F.log_softmax(_logits(model, ids), dim=-1)
        if vocab is None:
            vocab = logp.shape[-1]
            use_full = positions * vocab * 4 <= max_cache_bytes
        target = ids[:, 1:]
        nll.append(-logp.gather(-1, target.unsqueeze(-1)).squeeze(-1).flatten().cpu())
        argmax.append(logp.argmax(-1).cpu())
        if use_full:
            full.append(logp.cpu())
        else:
            v, i = logp.topk(TOPK, dim=-1)
            tk_lp.append(v.cpu())
            tk_idx.append(i.cpu())
    return BaselineOutputs(
        full=full if use_full else None,
        topk_logp=None if use_full else tk_lp,
        topk_idx=None if use_full else tk_idx,
        nll=torch.cat(nll),
        argmax=argmax,
        method="exact" if use_full else f"top{TOPK}+tail",
    )


def _kl_topk(base_lp: torch.Tensor, base_idx: torch.Tensor, q_logp: torch.Tensor) -> torch.Tensor:
    """KL over K buckets + one tail bucket: a lower bound of the exact KL (data-processing inequality)."""
    p = base_lp.exp()
    q_lp = q_logp.gather(-1, base_idx)
    kl_head = (p * (base_lp - q_lp)).sum(-1)
    p_tail = (1 - p.sum(-1)).clamp_min(0)
    q_tail = (1 - q_lp.exp().sum(-1)).clamp_min(1e-30)
    tail = torch.where(p_tail > 0, p_tail * (p_tail.clamp_min(1e-30).log() - q_tail.log()), torch.zeros_like(p_tail))
    return kl_head + tail


def _percentile(sorted_vals: torch.Tensor, q: float) -> float:
    if sorted_vals.numel() == 0:
        return float("nan")
    k = (sorted_vals.numel() - 1) * q
    lo, hi = math.floor(k), math.ceil(k)
    if lo == hi:
        return float(sorted_vals[lo])
    return float(sorted_vals[lo] * (hi - k) + sorted_vals[hi] * (k - lo))


@torch.no_grad()
def compare_to_baseline(
    model: nn.Module, batches: list[dict[str, torch.Tensor]], base: BaselineOutputs
) -> dict[str, Any]:
    kls: list[torch.Tensor] = []
    nll: list[torch.Tensor] = []
    agree = 0
    total = 0
    for bi, b in enumerate(batches):
        ids = b["input_ids"]
        q_logp = F.log_softmax(_logits(model, ids), dim=-1)
        target = ids[:, 1:]
        nll.append(-q_logp.gather(-1, target.unsqueeze(-1)).squeeze(-1).flatten().cpu())
        if base.full is not None:
            p_logp = base.full[bi].to(q_logp.device)
            kl = (p_logp.exp() * (p_logp - q_logp)).sum(-1)
        else:
            assert base.topk_logp is not None and base.topk_idx is not None
            kl = _kl_topk(base.topk_logp[bi].to(q_logp.device), base.topk_idx[bi].to(q_logp.device), q_logp)
        kls.append(kl.clamp_min(0).flatten().cpu())  # tiny negative values are float round-off
        agree += int((q_logp.argmax(-1).cpu() == base.argmax[bi]).sum())
        total += target.numel()
    kl_all = torch.cat(kls).double()
    nll_q = torch.cat(nll).double()
    n = kl_all.numel()
    s = kl_all.sort().values
    ppl_q = float(torch.exp(nll_q.mean()))
    ppl_b = base.perplexity
    return {
        "kl_mean": float(kl_all.mean()),
        "kl_stderr": float(kl_all.std(unbiased=True) / math.sqrt(n)) if n > 1 else 0.0,
        "kl_p50": _percentile(s, 0.50),
        "kl_p90": _percentile(s, 0.90),
        "kl_p99": _percentile(s, 0.99),
        "kl_max": float(s[-1]),
        "kl_method": base.method,
        "ppl_base": ppl_b,
        "ppl_quant": ppl_q,
        "ppl_ratio": ppl_q / ppl_b,
        "ln_ppl_ratio": float(nll_q.mean()) - base.mean_nll,
        "top1_agreement": agree / total if total else float("nan"),
        "eval_tokens": n,
    }
