"""Quality and memory of a cell's chosen recipe at longer contexts (`evaluation.seq_lens`).

Why: the sweep's own evaluation uses `dataset.seq_len`-token windows, but the longest context a recipe can
serve depends on how its error compounds along a long sequence (and on its KV cache, see engine/kv_cache.py),
and on its memory at that length. So each cell is also evaluated, after its search, at every length of
`evaluation.seq_lens` on `samples_per_length` held-out samples of exactly that many tokens, against the
unquantized model's outputs on the same samples (computed once per sweep): KL, perplexity ratio and top-1
agreement (engine/quality.py's definitions) and the peak device memory of that evaluation.

Held out means: cut from stretches of the token stream that no calibration / scoring window touches. The stream
is the one `engine/data.py` cut into `dataset.seq_len` windows; the calibration pool took some of those windows;
every maximal run of consecutive windows it did not take (plus the stream's tail) is contiguous text, cut into
samples of L tokens. When that text cannot give `samples_per_length` samples of a length, the sweep is refused
(InputError naming `evaluation.seq_lens`, how long the text is and its longest free stretch) before any cell.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass
from typing import Any

import torch

from ..errors import InputError
from .data import TokenSamples, make_batches
from .quality import BaselineOutputs, baseline_outputs, compare_to_baseline


def free_stretches(samples: TokenSamples) -> list[tuple[int, int]]:
    """(start, end) token ranges of the stream that no calibration window overlaps, in stream order."""
    assert samples.stream is not None
    S, total = samples.seq_len, int(samples.stream.numel())
    used = set(samples.pool_windows)
    out: list[tuple[int, int]] = []
    start = None
    for w in range(total // S):
        if w in used:
            if start is not None:
                out.append((start, w * S))
                start = None
        elif start is None:
            start = w * S
    tail_from = (total // S) * S
    if start is not None:
        out.append((start, total))
    elif tail_from < total:
        out.append((tail_from, total))
    return out


def long_samples(samples: TokenSamples, length: int, n: int, seed: int, source: str) -> torch.Tensor:
    """`n` held-out samples of `length` tokens ([n, length]), chosen with `seed` among every place the free
    stretches can hold one; InputError when there are fewer than `n`."""
    stretches = free_stretches(samples)
    starts = [a + k * length for a, b in stretches for k in range((b - a) // length)]
    if len(starts) < n:
        longest = max((b - a for a, b in stretches), default=0)
        raise InputError(
            f"evaluation.seq_lens: {length} tokens: the dataset ({source}) is {samples.total_tokens:,} tokens long; "
            f"after its {len(samples.pool_windows)} calibration samples of {samples.seq_len} tokens, its longest "
            f"stretch of text not used for calibration is {longest:,} tokens, which yields {len(starts)} held-out "
            f"samples of {length} tokens, but evaluation.samples_per_length is {n}; use shorter lengths, fewer "
            "samples per length, or more text"
        )
    chosen = sorted(random.Random(seed).sample(starts, n))
    assert samples.stream is not None
    return torch.stack([samples.stream[s : s + length] for s in chosen])


def check_model_length(model: Any, lengths: list[int]) -> None:
    """A length beyond the model's position embeddings would measure extrapolation garbage, not the recipe."""
    limit = getattr(getattr(model, "config", None), "max_position_embeddings", None)
    too_long = [L for L in lengths if isinstance(limit, int) and L > limit]
    if too_long:
        raise InputError(f"evaluation.seq_lens: {too_long[0]} tokens is longer than the model's context "
                         f"(max_position_embeddings {limit})")


@dataclass
class LengthSet:
    """One evaluation length: its held-out batches and the unquantized model's outputs on them."""

    seq_len: int
    batches: list[dict[str, torch.Tensor]]
    baseline: BaselineOutputs


def prepare_lengths(model: Any, samples: TokenSamples, lengths: list[int], n: int, seed: int, source: str,
                    batch_size: int, device: torch.device) -> list[LengthSet]:
    """Samples and baseline outputs per length, once per sweep (from the unquantized master model)."""
    check_model_length(model, lengths)
    out = []
    for L in lengths:
        ids = long_samples(samples, L, n, seed, source)
        batches = make_batches(ids, batch_size, device, labels=False)
        out.append(LengthSet(L, batches, baseline_outputs(model, batches)))
    return out


def _device_peaks(devices: list[torch.device]) -> dict[str, int]:
    out = {}
    for d in devices:
        if d.type == "cuda":
            torch.cuda.synchronize(d)
            out[str(d)] = int(torch.cuda.max_memory_allocated(d))
    return out


def evaluate_lengths(model: Any, lengths: list[LengthSet], devices: list[torch.device], kv_cache: str = "none",
                     meter: Any = None) -> dict[str, Any]:
    """The row's `long_context`: per length, KL / perplexity ratio / top-1 agreement against the unquantized
    model and the peak device memory of that length's evaluation (None on a CPU). `meter` (a `PeakMemory`) keeps
    the cell's own device peak: its counters are read before they are reset for each length."""
    by_length = []
    cuda = [d for d in devices if d.type == "cuda"]
    for ls in lengths:
        if meter is not None:
            meter.fold_device_peaks(_device_peaks(cuda))
        for d in cuda:
            torch.cuda.reset_peak_memory_stats(d)
        t = time.perf_counter()
        q = compare_to_baseline(model, ls.batches, ls.baseline)
        peaks = _device_peaks(cuda)
        if meter is not None:
            meter.fold_device_peaks(peaks)
        by_length.append({
            "seq_len": ls.seq_len,
            "samples": sum(int(b["input_ids"].shape[0]) for b in ls.batches),
            "eval_tokens": q["eval_tokens"],
            "kl_mean": q["kl_mean"],
            "kl_stderr": q["kl_stderr"],
            "ppl_base": q["ppl_base"],
            "ppl_quant": q["ppl_quant"],
            "ppl_ratio": q["ppl_ratio"],
            "top1_agreement": q["top1_agreement"],
            "peak_device_mb": round(max(peaks.values()) / 2**20, 1) if peaks else None,
            "wall_s": round(time.perf_counter() - t, 3),
        })
    return {
        "seq_lens": [ls.seq_len for ls in lengths],
        "samples_per_length": by_length[0]["samples"] if by_length else 0,
        "kv_cache": kv_cache,
        "by_length": by_length,
    }
