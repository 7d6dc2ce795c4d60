"""Keeping Python's cyclic garbage collector off the libraries' objects while cells run.

After importing torch, transformers and ModelOpt a process holds ~580 k objects tracked by the collector, and every
full collection walks all of them: 0.38 s on the 2-core CI machine. ModelOpt collects twice in every AutoQuantize
scoring pass and quantsweep once after each union call to free its model, which made the collector ~1.2 s of a
3.4 s union call on the CPU benchmark. `gc.freeze()` after the imports moves those objects into a permanent
generation that collections skip; objects made later (models, tensors, hooks) are collected as before. It is done
before any model exists, so no model can be pinned by it. `unfreeze` on close hands the objects back, so that the
interpreter's shutdown sees the usual heap (otherwise triton's bindings report their objects as leaked).
"""

from __future__ import annotations

import gc


def freeze_imported_objects() -> None:
    gc.collect()
    gc.freeze()


def unfreeze() -> None:
    gc.unfreeze()
