"""Quality of a quantized model against the unquantized one, teacher-forced on the same held-out tokens.

Definitions (docs/metrics.md; llama.cpp's `--kl-divergence` conventions): for every predicted position t with
base distribution P_t and quantized distribution Q_t,
  KL_t = sum_v P_t(v) (log P_t(v) - log Q_t(v))      (direction base || quant)
  mean KL, its standard error and percentiles over t; PPL = exp(mean NLL of the true next token) for each model,
  their ratio; top-1 agreement = share of t where argmax P_t == argmax Q_t.

Standard errors are clustered by held-out sequence: tokens of one sequence are not independent (a quantization
error early in a window shifts every later prediction), so a token-level standard error understates the noise
(1.1-1.6x on the quickstart). Every metric is a mean over tokens; with clusters g = sequences,
  SE = sqrt( G/(G-1) * sum_g (sum_{t in g} (x_t - mean))^2 ) / N
(the CR1 cluster-robust estimator; with equal-length sequences it is the standard error of the G per-sequence
means). The per-sequence means are kept in the row (`quality.per_sequence`) so that two cells evaluated on the
same tokens can be compared pairwise (`reports/noise.py`).

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
    # no KV cache: one teacher-forced pass needs none, and building it copies every layer's keys and values
    return model(input_ids=ids, use_cache=False).logits[:, :-1].float()


PIN_MAX_BYTES = 64 << 20  # larger baseline tensors (full log-probs) stay pageable: pinned memory is scarce


def _on(tensors: list[torch.Tensor], i: int, device: torch.device) -> torch.Tensor:
    """`tensors[i]` (a baseline tensor, on the CPU) on `device`. Towards a GPU, from page-locked memory (pinned in
    place the first time, up to PIN_MAX_BYTES; PyTorch's pinned allocator rounds a block up to a power of two and
    keeps it): a copy from pageable memory waits for the GPU to finish the work queued before it, so the host could
    not queue the next batch's forward while the GPU still runs this one."""
    t = tensors[i]
    if (
        device.type == "cuda"
        and t.device.type == "cpu"
        and not t.is_pinned()
        and t.numel() * t.element_size() <= PIN_MAX_BYTES
    ):
        t = tensors[i] = t.pin_memory()
    return t.to(device, non_blocking=True)


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


def clustered_stderr(values: torch.Tensor, clusters: torch.Tensor) -> float:
    """CR1 cluster-robust standard error of `values.mean()` with cluster ids `clusters` (see module doc)."""
    x = values.double()
    n = x.numel()
    ids, inverse = torch.unique(clusters, return_inverse=True)
    g = ids.numel()
    if n < 2 or g < 2:
        return float("nan")
    sums = torch.zeros(g, dtype=torch.float64).index_add_(0, inverse, x - x.mean())
    return float(math.sqrt(g / (g - 1) * float((sums**2).sum())) / n)


def per_cluster_means(values: torch.Tensor, clusters: torch.Tensor) -> list[float]:
    ids, inverse = torch.unique(clusters, return_inverse=True)
    sums = torch.zeros(ids.numel(), dtype=torch.float64).index_add_(0, inverse, values.double())
    counts = torch.zeros(ids.numel(), dtype=torch.float64).index_add_(0, inverse, torch.ones_like(values.double()))
    return [float(v) for v in sums / counts]


def compare_to_baseline(
    model: nn.Module, batches: list[dict[str, torch.Tensor]], base: BaselineOutputs
) -> dict[str, Any]:
    return start_comparison(model, batches, base).finish()


@dataclass
class PendingComparison:
    """A comparison whose per-token results are still on the model's device (`start_comparison`): `finish()` brings
    them to the host (the one wait for the device) and computes the statistics. In between, the host is free for
    work that does not touch the model (the shared engine plans the next cell's solve meanwhile)."""

    kls: list[torch.Tensor]
    nll: list[torch.Tensor]
    hits: list[torch.Tensor]
    seq: list[torch.Tensor]
    total: int
    base: BaselineOutputs

    @torch.no_grad()
    def finish(self) -> dict[str, Any]:
        kls, nll, hits, seq, total, base = self.kls, self.nll, self.hits, self.seq, self.total, self.base
        kl_all, nll_q, top1 = (torch.cat(x).cpu().double() for x in (kls, nll, hits))
        agree = int(top1.sum())
        clusters = torch.cat(seq)
        d_nll = nll_q - base.nll.double()  # per-token log perplexity ratio, paired on the same tokens
        n = kl_all.numel()
        ln_ratio_se = clustered_stderr(d_nll, clusters)
        s = kl_all.sort().values
        ppl_q = float(torch.exp(nll_q.mean()))
        ppl_b = base.perplexity
        return {
            "kl_mean": float(kl_all.mean()),
            "kl_stderr": clustered_stderr(kl_all, clusters),
            "kl_stderr_iid": float(kl_all.std(unbiased=True) / math.sqrt(n)) if n > 1 else 0.0,
            "kl_p50": _percentile(s, 0.50),
            "kl_p90": _percentile(s, 0.90),
            "kl_p99": _percentile(s, 0.99),
            "kl_max": float(s[-1]),
            "kl_method": base.method,
            "ppl_base": ppl_b,
            "ppl_quant": ppl_q,
            "ppl_quant_stderr": ppl_q * clustered_stderr(nll_q, clusters),  # delta method on the mean NLL
            "ppl_ratio": ppl_q / ppl_b,
            "ppl_ratio_stderr": ppl_q / ppl_b * ln_ratio_se,  # delta method on the log ratio
            "ln_ppl_ratio": float(d_nll.mean()),  # paired, in float64 (a difference of float32 means loses ~1e-6)
            "ln_ppl_ratio_stderr": ln_ratio_se,
            "top1_agreement": agree / total if total else float("nan"),
            "top1_stderr": clustered_stderr(top1, clusters),
            "eval_tokens": n,
            "eval_sequences": int(clusters.unique().numel()),
            "stderr_method": "clustered by held-out sequence (CR1)",
            # per held-out sequence means, for paired comparisons between cells (same tokens, same order)
            "per_sequence": {
                "kl": per_cluster_means(kl_all, clusters),
                "ln_ppl_ratio": per_cluster_means(d_nll, clusters),
                "top1": per_cluster_means(top1, clusters),
            },
        }


@torch.no_grad()
def start_comparison(
    model: nn.Module, batches: list[dict[str, torch.Tensor]], base: BaselineOutputs
) -> PendingComparison:
    """Queue the model's forwards over `batches` and their comparison with the baseline (see `compare_to_baseline`);
    nothing waits for the device here, except copies of baseline batches too large to be pinned (see `_on`)."""
    kls: list[torch.Tensor] = []
    nll: list[torch.Tensor] = []
    hits: list[torch.Tensor] = []
    seq: list[torch.Tensor] = []  # held-out sequence of every predicted token (the clusters)
    total = 0
    first = 0
    # the per-token results stay on the model's device until the last batch: one transfer (one wait for the GPU)
    # per cell instead of three per batch, so the host queues the next batch while the GPU computes this one
    for bi, b in enumerate(batches):
        ids = b["input_ids"]
        q_logp = F.log_softmax(_logits(model, ids), dim=-1)
        device = q_logp.device
        target = ids[:, 1:]
        rows, cols = target.shape
        seq.append((first + torch.arange(rows)).repeat_interleave(cols))
        first += rows
        nll.append(-q_logp.gather(-1, target.unsqueeze(-1)).squeeze(-1).flatten())
        if base.full is not None:
            p_logp = _on(base.full, bi, device)
            kl = (p_logp.exp() * (p_logp - q_logp)).sum(-1)
        else:
            assert base.topk_logp is not None and base.topk_idx is not None
            kl = _kl_topk(_on(base.topk_logp, bi, device), _on(base.topk_idx, bi, device), q_logp)
        kls.append(kl.clamp_min(0).flatten())  # tiny negative values are float round-off
        hits.append((q_logp.argmax(-1) == _on(base.argmax, bi, device)).flatten())
        total += target.numel()
        del q_logp, kl
    return PendingComparison(kls, nll, hits, seq, total, base)
