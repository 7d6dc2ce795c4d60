"""Downstream accuracy: a model in memory (a cell's fake-quantized model with its recipe active, or the unquantized
baseline) through EleutherAI's lm-evaluation-harness, with lm-eval's own Hugging Face wrapper (docs/trust.md).

Why through `HFLM(pretrained=<model>)` and not our own scoring loop: the point is lm-eval's numbers (its prompts,
its normalisation, its standard errors), comparable with what others publish. lm-eval is an optional extra
(`quantsweep[eval]`): it is imported here only, lazily, and `require_lm_eval` turns its absence into one line.

Local task YAMLs: lm-eval resolves a relative `dataset_kwargs.data_files` against the working directory; we read
the YAMLs of `include_path` ourselves and resolve it against the YAML's own folder, so the shipped task
(`matrices/tasks/qs_facts`) works from anywhere and with no network.
"""

from __future__ import annotations

import importlib.util
import time
from pathlib import Path
from typing import Any

from ..errors import InputError
from ..inputs.documents import MATRIX as YAML_LIMITS
from ..inputs.documents import DocumentError, read_structured
from ..schema import LmEvalSpec
from ..trust.downstream import block_from_results

_MANAGERS: dict[tuple[str | None, bool], Any] = {}  # lm-eval TaskManagers, by (include_path, built-ins)
EXTRA_HINT = "evaluation.lm_eval needs the optional extra: pip install 'quantsweep[eval]' (lm-eval)"


def require_lm_eval(source: str) -> None:
    """InputError (exit 2) when lm-eval is not installed; called before any model is loaded."""
    if importlib.util.find_spec("lm_eval") is None:
        raise InputError(f"{source}: {EXTRA_HINT}")


def _resolve_data_files(data_files: Any, folder: Path) -> Any:
    def one(p: Any) -> Any:
        if isinstance(p, str) and "://" not in p and not Path(p).is_absolute():
            return str((folder / p).resolve())
        return p

    if isinstance(data_files, dict):
        return {k: ([one(x) for x in v] if isinstance(v, list) else one(v)) for k, v in data_files.items()}
    if isinstance(data_files, list):
        return [one(x) for x in data_files]
    return one(data_files)


def local_task_configs(include_path: str | None) -> dict[str, dict[str, Any]]:
    """Task name -> config of every YAML under `include_path` that defines a single `task` (groups and YAMLs
    our safe reader cannot read, e.g. with `!function`, are left to lm-eval's TaskManager)."""
    if include_path is None:
        return {}
    root = Path(include_path)
    if not root.is_dir():
        raise InputError(f"evaluation.lm_eval.include_path: not a folder: {include_path}")
    out: dict[str, dict[str, Any]] = {}
    for yml in sorted(root.rglob("*.yaml")):
        try:
            cfg = read_structured(yml, YAML_LIMITS, "lm-eval task")
        except DocumentError:
            continue
        if not isinstance(cfg, dict) or not isinstance(cfg.get("task"), str):
            continue
        kwargs = cfg.get("dataset_kwargs")
        if isinstance(kwargs, dict) and "data_files" in kwargs:
            cfg = {**cfg, "dataset_kwargs": {**kwargs,
                                             "data_files": _resolve_data_files(kwargs["data_files"], yml.parent)}}
        out[cfg["task"]] = cfg
    return out


def evaluate_model(model: Any, tokenizer: Any, spec: LmEvalSpec, label: str) -> dict[str, Any]:
    """The lm-eval block (trust/downstream.py) of `model` as it is now; `label` ('baseline' or a cell id) only
    names the run in logs. Never raises: a failure is a block with `computable: false` and its reason."""
    settings = {"num_fewshot": spec.num_fewshot, "limit": spec.limit}
    t = time.perf_counter()
    try:
        import lm_eval
        from lm_eval.models.huggingface import HFLM
        from lm_eval.tasks import TaskManager

        local = local_task_configs(spec.include_path)
        tasks: list[Any] = [local.get(name, name) for name in spec.tasks]
        # indexing lm-eval's ~10,000 built-in task YAMLs takes ~15 s on a small CPU: skipped when every task is
        # local, and done once per process otherwise
        defaults = any(isinstance(t, str) for t in tasks)
        key = (spec.include_path, defaults)
        if key not in _MANAGERS:
            _MANAGERS[key] = TaskManager(include_path=spec.include_path, include_defaults=defaults)
        manager = _MANAGERS[key]
        was_training = model.training
        model.eval()
        lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=spec.batch_size)
        # the global seeds are left alone (None): lm-eval would otherwise reseed the sweep's process
        res = lm_eval.simple_evaluate(
            model=lm, tasks=tasks, task_manager=manager, num_fewshot=spec.num_fewshot, limit=spec.limit,
            bootstrap_iters=1000, log_samples=False, random_seed=None, numpy_random_seed=None,
            torch_random_seed=None,
        )
        if was_training:
            model.train()
        if res is None:
            raise RuntimeError("lm-eval returned no results")
        samples = {k: int(v.get("effective", v.get("original", 0))) for k, v in (res.get("n-samples") or {}).items()}
        return {
            "computable": True, "reason": None, **settings,
            "lm_eval_version": getattr(lm_eval, "__version__", None),
            "wall_s": round(time.perf_counter() - t, 3),
            "samples": samples,
            "tasks": block_from_results(res.get("results") or {}, samples),
        }
    except KeyboardInterrupt:
        raise
    except Exception as exc:  # a failing evaluation is recorded, the cell stands
        return {"computable": False, "reason": f"{type(exc).__name__}: {exc}"[:500], **settings,
                "wall_s": round(time.perf_counter() - t, 3)}
