"""Giving freed host memory back to the operating system between the phases of a CPU sweep.

glibc keeps freed heap chunks for reuse, but a forward+backward pass frees and allocates tensors of so many sizes
that the next batch often cannot reuse them and grows the heap instead: measured on the CPU quickstart, the
second score batch of a union call started 0.6 GB higher than the first, and the process peaked at 3.4 GB where
its live tensors never exceeded 2.7 GB. `malloc_trim(0)` after each score batch and each cell returns those
chunks (a few milliseconds). Elsewhere (macOS, musl) it does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
from typing import Any


@functools.cache
def _libc() -> Any:
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return libc if hasattr(libc, "malloc_trim") else None
    except OSError:
        return None


def trim_host_memory() -> bool:
    """Return freed heap memory to the OS; True where glibc's malloc_trim exists."""
    libc = _libc()
    if libc is None:
        return False
    libc.malloc_trim(0)
    return True


def release_memory(device: Any) -> None:
    """After a call's model is dropped: collect it, give the host heap back, and empty CUDA's cache, so the next
    call's model is built into free memory (one model at a time)."""
    import gc

    import torch

    gc.collect()
    trim_host_memory()
    if getattr(device, "type", None) == "cuda":
        torch.cuda.empty_cache()
