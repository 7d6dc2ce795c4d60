"""CUDA graphs of the score replays: each scored module's replay of every candidate format, recorded at the
module's first backward and launched as one graph for that batch and every later one.

On a GPU the captured score replay (engine/captured_scores.py) of a small model is bound by host time: for each
module, batch and format it calls ModelOpt's `TensorQuantizer` for the weight (~110 µs of Python on an H200) and,
for W8A8 formats, the input, then a linear and five element-wise kernels, one small launch after another. The
operations are the same for every batch — same module, same quantizers, same shapes; only the captured input,
output and output gradient change — so they are recorded once as a CUDA graph and replayed: per module and batch
the host then launches three copies and one graph instead of tens of kernels and the quantizers' Python.

What keeps the result ModelOpt's:
  * the graph is a recording of the eager replay itself (the same Python, the same kernels on tensors of the same
    shapes and layouts), so a replay computes the same bits; tests/test_gpu_cuda.py compares a sweep with and
    without graphs bit for bit;
  * the scores are added in place into ModelOpt's accumulators, which exist before the capture (zeros: 0 + s is
    s exactly, so the first batch still *assigns* its score as ModelOpt's hook does);
  * everything a graph reads outside its static inputs lives for the whole score pass: the module's weight and
    bias, the quantizers' amax (ModelOpt's, and PrefixCalibration's per-size snapshots), the accumulators.

What keeps the memory in bounds: the static inputs are shared by every module of the same shapes (replays run
one after another), and all graphs allocate from one private pool, in which nothing the replay makes outlives a
capture (its temporaries all die inside it), so the pool holds one module's temporaries, not the sum. The side
stream is the process's own, one per device, and is warmed up outside any capture: a stream's cuBLAS workspace is
allocated at its first matrix product and kept.

Only replays of at most MAX_GRAPH_MACS are graphed: on larger linears the GPU is the bottleneck, the host runs
ahead of it anyway, and a graph would only add its static inputs to the peak memory.

A capture that fails (an operation that cannot be captured: a host sync, a copy from pageable memory) leaves that
module, and every module not captured yet in the call, on the eager replay; the allocator is told that the capture
is over (`_abandon_capture`), `failed` counts the failures and `first_error` keeps the first reason. CPU tensors never
get here. `QUANTSWEEP_SCORE_GRAPHS=0` turns graphs off (a diagnostic switch: benchmarks/shared_vs_naive.py
`--graphs-ab` measures both in one process).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from typing import Any

import torch

from . import score_kernel

ENV_SWITCH = "QUANTSWEEP_SCORE_GRAPHS"

# A module's replay is graphed when one batch's GEMM is at most this many multiply-adds (tokens x in x out). On an
# H200 (benchmarks/results/speed-h200.json, run `score-graphs`): the Qwen3-0.6B shape's linears (2048 tokens, at
# most 6.4e9) are host-bound, and graphs halved its score phase; the Llama-3-8B shape's (8.6e9 and up) keep the GPU
# busy while the host runs ahead, graphs gained nothing there, and their static inputs raised the peak by 0.25 GB.
MAX_GRAPH_MACS = 8_000_000_000


def graphs_enabled() -> bool:
    """Graphs are on where CUDA is, unless QUANTSWEEP_SCORE_GRAPHS=0, and only with the allocator calls that undo
    a failed capture (`_abandon_capture`)."""
    if os.environ.get(ENV_SWITCH, "1").strip() in ("0", "false", "no", "off"):
        return False
    return hasattr(torch._C, "_cuda_endAllocateToPool") and hasattr(torch._C, "_cuda_releasePool")


# One side stream per device for the whole process: a stream's first matrix product sets up a cuBLAS workspace that
# stays allocated for that stream, so a fresh stream per union call would leave one more behind each time.
_SIDE_STREAMS: dict[torch.device, torch.cuda.Stream] = {}
_WARMED: set[tuple[int, torch.device, torch.dtype]] = set()


def _side_stream(device: torch.device) -> torch.cuda.Stream:
    stream = _SIDE_STREAMS.get(device)
    if stream is None:
        stream = _SIDE_STREAMS[device] = torch.cuda.Stream(device)
    return stream


def _warm_up(stream: torch.cuda.Stream, device: torch.device, dtype: torch.dtype) -> None:
    """A small matrix product on the side stream, outside any capture, once per thread (cuBLAS handles are per
    thread) and dtype: the handle's workspace is then allocated from the ordinary pool, not inside a capture."""
    score_kernel.warm(device, dtype, stream)  # the fused score's kernel: compiled and loaded outside any capture
    key = (threading.get_ident(), device, dtype)
    if key in _WARMED:
        return
    with torch.cuda.stream(stream):
        a = torch.zeros(8, 16, dtype=dtype, device=device)
        torch.nn.functional.linear(a, torch.zeros(16, 16, dtype=dtype, device=device))
    _WARMED.add(key)


def _abandon_capture(device: torch.device, pool: Any) -> None:
    """After a capture whose end failed (CUDA invalidates a capture that meets a host sync, for instance): PyTorch's
    `capture_end` raised before it told the caching allocator to stop routing this capture's allocations to the
    private pool, and the graph will never release the pool's reference either. Left so, the allocator believes
    a capture is still under way (`empty_cache` asserts, freed blocks are not reused across streams)."""
    index = device.index if device.index is not None else torch.cuda.current_device()
    torch._C._cuda_endAllocateToPool(index, pool)
    torch._C._cuda_releasePool(index, pool)


def graphable(x: Any, y: Any, g: Any) -> bool:
    """A small enough replay (MAX_GRAPH_MACS) on dense CUDA tensors: a static input is a contiguous copy, and a
    replay on another layout could pick another kernel (other bits) than the eager replay would."""
    tensors = (x, y, g)
    if not all(isinstance(t, torch.Tensor) and t.is_cuda and t.is_contiguous() and t.dim() >= 1 for t in tensors):
        return False
    return g.numel() * x.shape[-1] <= MAX_GRAPH_MACS


class ReplayGraphs:
    """One graph per scored module, captured at the module's first backward of the score pass."""

    def __init__(self) -> None:
        self._pool: Any = None
        self._static: dict[tuple[Any, ...], torch.Tensor] = {}
        self._graphs: dict[int, tuple[torch.cuda.CUDAGraph, tuple[torch.Tensor, ...]] | None] = {}
        self.captured = 0
        self.replays = 0
        self.failed = 0
        self.first_error: str | None = None

    def run(
        self,
        key: Any,
        tensors: tuple[torch.Tensor, ...],
        body: Callable[..., None],
        prepare: Callable[[], None],
    ) -> bool:
        """Run `body(*tensors)` as `key`'s graph (captured now if it is the first call; `prepare()` runs once before
        the capture: it makes what the graph writes into). False: no graph for `key`, run the eager replay. After a
        failed capture no other module is captured in this call (what failed once would fail again, at the price
        of a capture each time)."""
        entry = self._graphs.get(id(key), ())
        if entry == ():
            if self.failed:
                return False
            prepare()
            entry = self._capture(tensors, body)
            self._graphs[id(key)] = entry
        if entry is None:
            return False
        graph, statics = entry
        for static, t in zip(statics, tensors, strict=True):
            if static.shape != t.shape or static.dtype != t.dtype or static.device != t.device:
                return False  # another shape than at the capture (a different sequence length): eager
        for static, t in zip(statics, tensors, strict=True):
            static.copy_(t)
        graph.replay()
        self.replays += 1
        return True

    def _capture(
        self, tensors: tuple[torch.Tensor, ...], body: Callable[..., None]
    ) -> tuple[torch.cuda.CUDAGraph, tuple[torch.Tensor, ...]] | None:
        device = tensors[0].device
        statics = tuple(self._static_for(i, t) for i, t in enumerate(tensors))
        if self._pool is None:
            self._pool = torch.cuda.graph_pool_handle()
        stream = _side_stream(device)
        current = torch.cuda.current_stream(device)
        stream.wait_stream(current)  # the accumulators `prepare` made are written on the current stream
        _warm_up(stream, device, tensors[0].dtype)
        graph = torch.cuda.CUDAGraph()
        began = ended = False
        try:
            with torch.cuda.stream(stream):
                # thread_local: other threads' CUDA calls (telemetry, a Ray actor's other work) do not void it
                graph.capture_begin(pool=self._pool, capture_error_mode="thread_local")
                began = True
                try:
                    body(*statics)
                finally:
                    graph.capture_end()
                    ended = True
        except Exception as exc:  # noqa: BLE001 - anything that cannot be captured runs eagerly instead
            if began and not ended:
                _abandon_capture(device, self._pool)
            self.failed += 1
            if self.first_error is None:
                self.first_error = f"{type(exc).__name__}: {exc}".splitlines()[0][:300]
            return None
        current.wait_stream(stream)
        self.captured += 1
        return graph, statics

    def _static_for(self, role: int, like: torch.Tensor) -> torch.Tensor:
        """The static input of this role and shape, shared by every module that has it."""
        key = (role, tuple(like.shape), like.dtype, like.device)
        t = self._static.get(key)
        if t is None:
            t = self._static[key] = torch.empty(like.shape, dtype=like.dtype, device=like.device)
        return t

    def close(self) -> None:
        """Drop the graphs, their pool and the static inputs (the caller releases the cached memory)."""
        self._graphs.clear()
        self._static.clear()
        self._pool = None

    def stats(self) -> dict[str, Any]:
        out: dict[str, Any] = {"graph_modules": self.captured, "graph_replays": self.replays}
        if self.failed:
            out["graph_capture_failures"] = self.failed
            out["graph_capture_error"] = self.first_error
        return out
