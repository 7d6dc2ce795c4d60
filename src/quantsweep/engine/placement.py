"""Where a model's weights live: one device, or spread over several GPUs (and the CPU as the last resort) with
accelerate's device maps, as ModelOpt's own Hugging Face examples quantize models too large for one GPU.

`model.device_map: none` keeps today's single device. `auto`/`balanced` spread the layers evenly over the GPUs,
`sequential` fills GPU 0 first; `model.max_memory` caps each device. A Hugging Face folder is loaded straight to
its devices by transformers (`from_pretrained(device_map=...)`); a synthetic model is placed with the same
accelerate functions before any of its weights exist (engine/synthetic.py).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ..errors import InputError
from ..schema import ModelSpec

OFFLOAD_WARNING = (
    "model.device_map: part of the model does not fit on the GPUs and stays on the CPU; every forward pass "
    "copies those weights to a GPU, so expect the sweep to be many times slower (raise model.max_memory or use "
    "more GPUs)"
)


@dataclass(frozen=True)
class Placement:
    """The resolved placement of one model: what `from_pretrained` is given, and what the loaded model reports."""

    mode: str  # none | auto | balanced | sequential
    device: torch.device  # where inputs go (the embedding's device); the only device when mode is none
    max_memory: dict[int | str, int | str] | None = None
    device_map: dict[str, str] = field(default_factory=dict)  # module prefix -> device, once known

    @property
    def spread(self) -> bool:
        return self.mode != "none"

    @property
    def devices(self) -> list[torch.device]:
        """Every device holding weights, inputs' device first."""
        seen = [self.device]
        for d in self.device_map.values():
            dev = torch.device(d)
            if dev not in seen:
                seen.append(dev)
        return seen

    @property
    def offloaded(self) -> bool:
        return self.device.type == "cuda" and any(torch.device(d).type == "cpu" for d in self.device_map.values())

    def hf_kwargs(self) -> dict[str, Any]:
        """What transformers' `from_pretrained` is given to load the weights straight to their devices."""
        if not self.spread:
            return {"device_map": {"": str(self.device)}}
        return {"device_map": self.mode, "max_memory": self.max_memory_arg()}

    def max_memory_arg(self) -> dict[int | str, int | str] | None:
        if self.max_memory is not None:
            return dict(self.max_memory)
        if self.device.type == "cpu":  # a CPU run spreads nothing onto GPUs the machine may have
            from accelerate.utils import get_max_memory

            return {"cpu": get_max_memory()["cpu"]}
        return None

    def describe(self) -> dict[str, Any]:
        return {
            "device_map": self.mode,
            "devices": [str(d) for d in self.devices],
            "max_memory": None if self.max_memory is None else {str(k): v for k, v in self.max_memory.items()},
            "modules_per_device": dict(Counter(self.device_map.values())),
            "offloaded_to_cpu": self.offloaded,
        }


def resolve_placement(spec: ModelSpec, device: torch.device) -> Placement:
    """The placement a matrix asks for on this machine (before the model exists)."""
    if spec.device_map == "none":
        return Placement("none", device)
    max_memory = None
    if spec.max_memory is not None:
        max_memory = {int(k) if k.isdigit() else k: v for k, v in spec.max_memory.items()}
        if device.type == "cuda":
            missing = [k for k in max_memory if isinstance(k, int) and k >= torch.cuda.device_count()]
            if missing:
                raise InputError(
                    f"model.max_memory: GPU {missing[0]} named, but this machine has {torch.cuda.device_count()} "
                    "visible GPUs"
                )
    first = torch.device("cuda", 0) if device.type == "cuda" else device
    return Placement(spec.device_map, first, max_memory)


def as_device(d: Any) -> str:
    """accelerate writes GPUs as ints, the CPU as 'cpu' and offload as 'disk'."""
    return f"cuda:{d}" if isinstance(d, int) else str(d)


def placed(placement: Placement, model: nn.Module) -> Placement:
    """The placement with the device map the loaded model reports (transformers sets `hf_device_map`)."""
    if not placement.spread:
        return placement
    raw = getattr(model, "hf_device_map", None) or {"": str(placement.device)}
    device_map = {name: as_device(d) for name, d in raw.items()}
    if any(d == "disk" for d in device_map.values()):
        raise InputError(
            "model.device_map: the model does not fit in the GPUs and the CPU memory allowed (model.max_memory); "
            "offloading to disk is not supported"
        )
    inputs = _input_device(model) or placement.device
    return Placement(placement.mode, inputs, placement.max_memory, device_map)


def _input_device(model: nn.Module) -> torch.device | None:
    emb = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    if emb is None or getattr(emb, "weight", None) is None:
        return None
    hook = getattr(emb, "_hf_hook", None)  # an offloaded embedding computes on its hook's execution device
    exec_dev = getattr(hook, "execution_device", None)
    if exec_dev is not None:
        return torch.device(as_device(exec_dev))
    return emb.weight.device


def infer_device_map(model: nn.Module, placement: Placement, dtype: torch.dtype) -> dict[str, str]:
    """accelerate's device map for a model whose weights are still on the meta device (synthetic models):
    the same functions transformers' `from_pretrained(device_map=...)` uses."""
    from accelerate import infer_auto_device_map
    from accelerate.utils import get_balanced_memory

    no_split = list(getattr(model, "_no_split_modules", None) or [])
    max_memory = placement.max_memory_arg()
    if placement.mode in ("auto", "balanced"):
        max_memory = get_balanced_memory(model, max_memory=max_memory, no_split_module_classes=no_split, dtype=dtype)
    raw = infer_auto_device_map(model, max_memory=max_memory, no_split_module_classes=no_split, dtype=dtype)
    return {name: as_device(d) for name, d in raw.items()}


def device_of(name: str, device_map: dict[str, str]) -> str:
    """The device of a module or parameter name under a device map (the longest matching prefix wins)."""
    best, best_len = device_map.get("", None), -1
    for prefix, dev in device_map.items():
        if prefix and (name == prefix or name.startswith(prefix + ".")) and len(prefix) > best_len:
            best, best_len = dev, len(prefix)
    if best is None:
        raise KeyError(name)
    return best
