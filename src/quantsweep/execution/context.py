"""What every cell of a sweep shares (the model, the tokenised data, the baseline's outputs), built once per
process: by the driver with the local executor, by each worker with the Ray executor.

`RecordContext` is the small, picklable part of it that writing a row or a manifest needs, so that a driver that
loaded no model (Ray) can still write the row of a cell whose worker died.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from ..engine.data import TokenSamples, make_batches
from ..engine.host_memory import trim_host_memory
from ..engine.models import LoadedModel
from ..engine.quality import BaselineOutputs
from ..planning import Plan
from ..schema import Matrix
from .gc_freeze import freeze_imported_objects


@dataclass(frozen=True)
class RecordContext:
    """The facts about the sweep's process that rows and manifests repeat."""

    matrix: Matrix
    model_info: dict[str, Any]
    device: str
    samples_fingerprint: str
    versions: dict[str, Any]


@dataclass
class SweepContext:
    """What every cell of a sweep shares: loaded once, reused."""

    matrix: Matrix
    loaded: LoadedModel
    samples: TokenSamples
    eval_batches: list[dict[str, torch.Tensor]]
    baseline: BaselineOutputs
    versions: dict[str, Any]
    engine: str = "naive"
    lengths: list[Any] = field(default_factory=list)  # engine/long_context.LengthSet per evaluation.seq_lens
    _batch_cache: dict[tuple[int, bool], list[dict[str, torch.Tensor]]] = field(default_factory=dict)

    def batches(self, n_samples: int) -> list[dict[str, torch.Tensor]]:
        labels = self.matrix.autoquant.method == "gradient"
        key = (n_samples, labels)
        if key not in self._batch_cache:
            self._batch_cache[key] = make_batches(
                self.samples.pool(n_samples), self.matrix.autoquant.batch_size, self.loaded.device, labels
            )
        return self._batch_cache[key]

    @property
    def record(self) -> RecordContext:
        return RecordContext(
            matrix=self.matrix,
            model_info=self.loaded.info,
            device=str(self.loaded.device),
            samples_fingerprint=self.samples.fingerprint,
            versions=self.versions,
        )

    def describe(self) -> dict[str, Any]:
        """What the sweep summary says about the model, the data and the baseline (JSON-ready)."""
        from ..model_shapes import plan_shapes

        shapes = plan_shapes(self.matrix.model)  # what the baseline's weights are (a dequantized GGUF is not fp16)
        return {
            "model": {**self.loaded.info, "provenance": None if shapes is None else shapes.provenance},
            "dataset": self.samples.describe(),
            "baseline": {
                "perplexity": self.baseline.perplexity,
                "mean_nll": self.baseline.mean_nll,
                "eval_tokens": self.baseline.tokens,
                "kl_method": self.baseline.method,
            },
        }


def selected_for_lm_eval(spec: Any, cell: Any) -> bool:
    """Whether `evaluation.lm_eval` evaluates this cell (trust/downstream.py)."""
    from ..trust.downstream import cell_selected

    return cell_selected(spec.cells, cell.key, cell.id)


def import_modelopt() -> None:
    """Import ModelOpt before any model exists. Its first import runs pulp's solver probes, which keep the
    tracebacks of the imports they tried (cplex, copt ...) and with them every frame up the stack: imported
    inside an AutoQuantize call, that kept the call's whole model alive for the rest of the process."""
    import modelopt.torch.quantization  # noqa: F401


def prepare_context(
    matrix: Matrix, plan: Plan, engine: str, message: Callable[[str], None] = lambda _t: None,
    baseline_cache: bool = True,
) -> tuple[SweepContext, dict[str, Any]]:
    """Load the model, tokenise the data a plan needs and compute the baseline's outputs (or read them from the
    cache of earlier sweeps, engine/baseline_cache.py, unless `baseline_cache` is off); (context, timings)."""
    from ..engine.data import build_samples
    from ..engine.models import load_model
    from ..engine.baseline_cache import cached_baseline_outputs
    from .telemetry import library_versions

    setup: dict[str, Any] = {}
    t = time.perf_counter()
    import_modelopt()
    freeze_imported_objects()  # before any model exists: see execution/gc_freeze.py
    setup["import_s"] = round(time.perf_counter() - t, 3)
    t = time.perf_counter()
    message(f"loading model ({matrix.model.source})")
    loaded = load_model(matrix.model, progress=message)
    setup["model_load_s"] = round(time.perf_counter() - t, 3)
    needed = max(max(c.calib_samples, c.score_samples) for c in plan.cells)
    t = time.perf_counter()
    message(f"tokenising dataset ({matrix.dataset.source})")
    samples = build_samples(matrix.dataset, loaded.tokenizer, needed)
    setup["data_s"] = round(time.perf_counter() - t, 3)
    eval_batches = make_batches(samples.eval_ids, matrix.autoquant.batch_size, loaded.device, labels=False)
    t = time.perf_counter()
    message("baseline outputs on the held-out samples")
    base, setup["baseline_cache"] = cached_baseline_outputs(
        loaded.model, matrix.model, loaded.info, eval_batches, loaded.device, loaded.dtype, baseline_cache, message
    )
    if setup["baseline_cache"]["hit"]:
        message(f"baseline outputs read from the cache ({setup['baseline_cache']['file']})")
    trim_host_memory()
    setup["baseline_s"] = round(time.perf_counter() - t, 3)
    lengths: list[Any] = []
    ev = matrix.evaluation
    if ev.seq_lens:  # refused here, before any cell, when the text cannot give such samples
        from ..engine.long_context import prepare_lengths

        t = time.perf_counter()
        message(f"held-out samples and baseline outputs at {', '.join(map(str, ev.seq_lens))} tokens")
        lengths = prepare_lengths(loaded.model, samples, ev.seq_lens, ev.samples_per_length, matrix.dataset.seed,
                                  matrix.dataset.source, 1, loaded.device)
        trim_host_memory()
        setup["long_context_baseline_s"] = round(time.perf_counter() - t, 3)
    # the baseline through lm-eval is not evaluated here (once per process, i.e. per Ray worker) but once per
    # sweep, after the cells: execution/lm_eval_phase.py
    if loaded.device.type == "cuda":  # first-use costs (CUDA extensions, kernels) are a GPU affair: time them apart
        from ..engine.warm_up import warm_up_formats
        from .cell_runner import formats_for

        t = time.perf_counter()
        message("warming up ModelOpt's kernels for the sweep's formats")
        configs = [cfg for c in plan.cells for _, cfg in formats_for(matrix, "cuda", c)[0]]
        setup["warm_up_formats"] = warm_up_formats(configs, loaded.device, loaded.dtype)
        setup["warm_up_s"] = round(time.perf_counter() - t, 3)
    setup["torch_threads"] = torch.get_num_threads()
    ctx = SweepContext(
        engine=engine,
        matrix=matrix,
        loaded=loaded,
        samples=samples,
        eval_batches=eval_batches,
        baseline=base,
        versions=library_versions(),
        lengths=lengths,
    )
    return ctx, setup
