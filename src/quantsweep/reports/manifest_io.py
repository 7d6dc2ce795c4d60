"""Reading a cell's `manifest.json` back: the fields its readers use, checked before any of them is used.

Why a module of its own: three kinds of readers use a manifest, each needing more of it, and a wrong or missing
field must be `<file>: <field path>: <problem>` (exit 2) for all of them, never a KeyError or TypeError deep in a
report or an export:

- `LAYERS`: the layer views of `render-report` and the recipe flips of `compare` (per layer group: `name`,
  `formats`, and `raw_scores` and `chosen` when present; raw scores in every group or in none, so that no group
  drops out of the views unnoticed). The quickstart fixtures are manifests trimmed to this.
- `REPORT`: `report --cell`, which prints every section of the manifest (reports/layer_report.py): the cell, the
  model, the dataset, the quantization, AutoQuantize's settings and result, quality, and per layer group its bits,
  scores, costs and choice.
- `EXPORT`: `export --cell`, which rebuilds the cell from its calibration settings (export/checkpoint.py):
  calibration samples, batch size and steps, the effective config's algorithm, the modules of each group.

Fields a level does not use are checked when present (a manifest is one document), so the same file gets the
same verdict whichever reader meets the problem first. Nothing here imports torch.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from ..inputs.documents import DATA, read_json_object
from .fields import ANY, BITS, COUNT, Fields, Num, show
from .measures import check_quality, check_solver, check_telemetry

MANIFEST_KIND = "quantsweep.cell_manifest"
LAYERS, REPORT, EXPORT = "layers", "report", "export"
_LEVELS = (LAYERS, REPORT, EXPORT)
POSITIVE = Num(lo=1, hi=COUNT.hi, integer=True)
COST = Num(lo=0)  # a layer group's weight cost in a format: finite, never negative


def validate_manifest(doc: Any, source: str, level: str = LAYERS) -> dict[str, Any]:
    """Raise InputError `<source>: <field path>: <problem>` for the first field the `level`'s readers cannot use;
    return the manifest."""
    assert level in _LEVELS, level
    full = level != LAYERS
    f = Fields(source)
    f.expect("(top level)", doc, isinstance(doc, dict), "a JSON object")
    kind = doc.get("kind")
    if kind is not None and kind != MANIFEST_KIND:
        raise f.fail("kind", f"expected '{MANIFEST_KIND}', got {kind!r} (is this a cell manifest?)")
    f.string("status", doc.get("status"))
    _cell(f, doc.get("cell"), full)
    _sections(f, doc, full)
    if level == EXPORT:
        _export(f, doc)
    _layers(f, doc.get("layers"), full)
    return doc


def _cell(f: Fields, cell: Any, full: bool) -> None:
    c = f.obj("cell", cell, required=full)
    for name in ("id", "key", "pair", "granularity", "dataset_size"):
        f.string(f"cell.{name}", c.get(name), required=full, nonempty=True)
    f.string("cell.config_hash", c.get("config_hash"))
    f.string("cell.path", c.get("path"), path=True)
    f.number("cell.samples", c.get("samples"), COUNT, required=full)
    if full and "effective_bits_target" not in c:
        raise f.fail("cell.effective_bits_target", "missing")
    f.number("cell.effective_bits_target", c.get("effective_bits_target"), BITS)


def _sections(f: Fields, doc: dict[str, Any], full: bool) -> None:
    """Everything but the cell and the layers, as `report --cell` prints it."""
    f.obj("model", doc.get("model"), required=full)
    data = f.obj("dataset", doc.get("dataset"), required=full)
    for name in ("seq_len", "eval_samples", "calib_samples", "score_samples"):
        f.number(f"dataset.{name}", data.get(name), COUNT)
    quant = f.obj("quantization", doc.get("quantization"), required=full)
    pair = f.obj("quantization.pair", quant.get("pair"), required=full)
    f.string("quantization.pair.name", pair.get("name"), required=full)
    gran = f.obj("quantization.granularity", quant.get("granularity"), required=full)
    f.string("quantization.granularity.name", gran.get("name"), required=full)
    if full and "overrides" not in gran:
        raise f.fail("quantization.granularity.overrides", "missing")
    summary = f.obj("quantization.effective_quantizer_summary", quant.get("effective_quantizer_summary"))
    for name in ("*weight_quantizer", "*input_quantizer"):
        f.obj(f"quantization.effective_quantizer_summary.{name}", summary.get(name))
    f.number("quantization.format_bits", quant.get("format_bits"), BITS)
    f.strings("quantization.overlay_warnings", quant.get("overlay_warnings"))
    f.obj("quantization.effective_config", quant.get("effective_config"))
    aq = f.obj("autoquant", doc.get("autoquant"), required=full)
    f.string("autoquant.method", aq.get("method"), required=full)
    for name in ("batch_size", "calib_steps", "score_steps"):
        f.number(f"autoquant.{name}", aq.get(name), COUNT)
    search = f.obj("search", doc.get("search"))
    f.number("search.achieved_bits", search.get("achieved_bits"), BITS)
    f.number("search.total_score", search.get("total_score"), ANY)
    f.boolean("search.satisfied", search.get("satisfied"))
    for name in ("layer_groups", "quantized_groups"):
        f.number(f"search.{name}", search.get(name), COUNT)
    check_solver(f, "search.solver", search.get("solver"))
    check_quality(f, "quality", doc.get("quality"))
    check_telemetry(f, "telemetry", doc.get("telemetry"))


def _export(f: Fields, doc: dict[str, Any]) -> None:
    """What `export` rebuilds the cell's calibration from: the cell's samples in batches of its batch size."""
    data, aq = doc["dataset"], doc["autoquant"]
    f.number("dataset.calib_samples", data.get("calib_samples"), POSITIVE, required=True)
    f.number("dataset.score_samples", data.get("score_samples"), POSITIVE)
    f.number("autoquant.batch_size", aq.get("batch_size"), POSITIVE, required=True)
    f.number("autoquant.calib_steps", aq.get("calib_steps"), POSITIVE, required=True)
    steps = math.ceil(data["calib_samples"] / aq["batch_size"])
    if aq["calib_steps"] != steps:
        raise f.fail("autoquant.calib_steps", f"{aq['calib_steps']} does not match dataset.calib_samples "
                                              f"{data['calib_samples']} in batches of {aq['batch_size']} ({steps})")
    f.obj("quantization.effective_config", doc["quantization"].get("effective_config"), required=True)


def _layers(f: Fields, layers: Any, full: bool) -> None:
    names: dict[str, int] = {}
    first_scored: dict[str, bool] = {}
    for i, g in enumerate(f.seq("layers", layers, required=True)):
        where = f"layers[{i}]"
        f.expect(where, g, isinstance(g, dict), "an object")
        name = f.string(f"{where}.name", g.get("name"), required=True, nonempty=True)
        if name in names:
            raise f.fail(f"{where}.name", f"duplicate layer group {show(name)} (also layers[{names[name]}])")
        names[str(name)] = i
        formats = f.strings(f"{where}.formats", g.get("formats"), required=True)
        if not formats:
            raise f.fail(f"{where}.formats", "empty (a layer group has at least one format)")
        n = len(formats)
        for key, spec, needed in (("raw_scores", ANY, full), ("scores", ANY, False), ("bits", BITS, full),
                                  ("costs", COST, full)):
            values = f.numbers(f"{where}.{key}", g.get(key), spec, required=needed)
            if key in g and g[key] is not None and len(values) != n:
                raise f.fail(f"{where}.{key}", f"{len(values)} values for {n} formats")
        scored = g.get("raw_scores") is not None
        if scored != first_scored.setdefault("raw_scores", scored):  # a layer left out of the views silently
            raise f.fail(f"{where}.raw_scores", "missing, while layers[0] has them" if first_scored["raw_scores"]
                         else "present, while layers[0] has none (all layer groups or none are scored)")
        chosen = f.string(f"{where}.chosen", g.get("chosen"), required=full)
        if chosen is not None and chosen not in formats:
            raise f.fail(f"{where}.chosen", f"{show(chosen)} is not one of its formats "
                                            f"({', '.join(show(x) for x in formats[:8])})")
        f.number(f"{where}.chosen_bits", g.get("chosen_bits"), BITS, required=full)
        f.strings(f"{where}.module_names", g.get("module_names"), required=full)


def read_manifest_file(path: str | Path, level: str) -> dict[str, Any]:
    """A manifest read through the reading layer and validated for `level`'s readers."""
    return validate_manifest(read_json_object(path, DATA, "cell manifest"), str(path), level)

