"""The report's three figures (matplotlib, Agg canvas, no pyplot), saved as PNG and SVG, byte-for-byte repeatable.

Why a module of its own: plotting is the only part of the report that needs matplotlib, and the only part whose
bytes depend on a library's defaults. Each figure is drawn from a plain "plot data" dict (built here from the
frontier view or in `layers`) that the tests count, so "what is plotted" is tested without reading pixels.

Determinism: `svg.hashsalt` is fixed per figure (different salts keep element ids distinct when several SVGs are
inlined in one HTML page), SVG text stays text (`svg.fonttype: none`), and both formats get fixed metadata (no
date; `Software`/`Creator` = quantsweep). Fonts are matplotlib's bundled DejaVu Sans.
"""

from __future__ import annotations

import io
import math
import warnings
from pathlib import Path
from typing import Any

from ..store.atomic import atomic_write_bytes, atomic_write_text

RC = {
    "svg.fonttype": "none",
    "font.family": "DejaVu Sans",
    "font.size": 9,
    "axes.titlesize": 10,
    "figure.dpi": 100,
    "savefig.dpi": 110,
}
THRESHOLD_COLOR = "#c0392b"
FRONTIER_COLOR = "#2c3e50"
METRIC_LABEL = {
    "kl_mean": "mean KL(base ‖ quant), log scale (lower = better)",
    "ppl_ratio": "perplexity ratio quant / base (lower = better)",
}
METRIC_SHORT = {"kl_mean": "KL", "ppl_ratio": "ppl ratio"}
# Beyond this magnitude matplotlib cannot lay out an axis (its limits and ticks overflow): a quality value or
# threshold past it is drawn at the edge of the frontier plot (the report says so; the tables keep the value).
PLOT_LIMIT = 1e100
ROLE_TEXT = {"baseline": "baseline", "minimum_viable": "min viable", "best_value": "best value"}


# --- plot data ---------------------------------------------------------------------------------------------------
def group_title(g: dict[str, Any]) -> str:
    def s(v: Any) -> str:
        return "—" if v is None else str(v)

    size = s(g["dataset_size"]) + (f" ({g['samples']} samples)" if g.get("samples") is not None else "")
    return f"{s(g['model'])} · {size} · {s(g['granularity'])}"


def frontier_plot_data(view: dict[str, Any]) -> dict[str, Any]:
    """One panel per group; a panel's points are its shown rows with finite bits and quality."""
    panels = []
    for g in view["groups"]:
        pts = [
            {
                "key": p["key"],
                "pair": p["pair"],
                "budget": p["effective_bits_target"],
                "bits": p["achieved_bits"],
                "quality": p["quality"],
                "valid": p["valid"],
                "on_frontier": p["on_frontier"],
                "roles": list(p["roles"]),
            }
            for p in view["points"]
            if p["group"] == g["group"] and p["achieved_bits"] is not None and p["quality"] is not None
        ]
        front = sorted((p for p in pts if p["on_frontier"]), key=lambda p: (p["bits"], p["quality"]))
        panels.append({"title": group_title(g), "group": g["group"], "points": pts,
                       "frontier": [[p["bits"], p["quality"]] for p in front]})
    pairs = sorted({str(p["pair"]) for panel in panels for p in panel["points"]})
    ref = view.get("reference") or {}
    reference = [ref["bits"], ref[view["metric"]]] if view["metric"] in ref else None
    return {"metric": view["metric"], "max_quality": view["max_quality"], "panels": panels, "pairs": pairs,
            "reference": reference}


HEATMAP_CLIP = (5.0, 95.0)  # percentiles of the shown relative sensitivities: the colour scale's ends


def heatmap_plot_data(heat: dict[str, Any]) -> dict[str, Any]:
    """The heatmap's data plus its colour scale: from the 5th to the 95th percentile of the shown relative
    sensitivities (`vmin`, `vmax`; `clipped_below` / `clipped_above`: how many values lie outside and share the
    lightest / darkest colour). An end is clipped only where some value lies beyond it.

    Why: relative sensitivity is 1 for each cell's most sensitive layer, and when that is the same layer in every
    cell (lm_head, typically) the scale runs from 1 down to the least sensitive layer, orders of magnitude below,
    while most layers sit in a narrow band that all gets one colour. Clipping at percentiles gives the colours to
    where the values are; the colour bar marks both clipped ends, and the table beside the heatmap keeps the
    exact values."""
    import numpy as np

    vals = np.array([v for row in heat["relative"] for v in row if v is not None and math.isfinite(v) and v > 0],
                    dtype=float)
    out = {**heat, "clip_percentiles": list(HEATMAP_CLIP), "vmin": None, "vmax": 1.0, "clipped_below": 0,
           "clipped_above": 0}
    if vals.size:
        lo, hi = (float(x) for x in np.percentile(vals, HEATMAP_CLIP))
        if float(vals.min()) < lo < hi:
            out["vmin"], out["clipped_below"] = round(lo, 12), int((vals < lo).sum())
        if lo < hi < float(vals.max()):
            out["vmax"], out["clipped_above"] = round(hi, 12), int((vals > hi).sum())
    return out


def heatmap_caption(data: dict[str, Any]) -> str:
    """The report's caption: says how the colour scale was cut (or that it was not)."""
    base = "Relative layer sensitivity (score / the cell's largest score): layers x cells, log colour scale"
    lo_p, hi_p = data.get("clip_percentiles") or HEATMAP_CLIP

    def n(k: int) -> str:
        return f"{k} value" + ("" if k == 1 else "s")

    parts = []
    if data.get("clipped_above"):
        parts.append(f"above the {hi_p:g}th percentile ({data['vmax']:.3g}: {n(data['clipped_above'])}) get the "
                     "darkest colour")
    if data.get("clipped_below"):
        parts.append(f"below the {lo_p:g}th percentile ({data['vmin']:.3g}: {n(data['clipped_below'])}) the "
                     "lightest")
    if not parts:
        return base + ", not clipped"
    return (base + "; clipped at percentiles of the shown values so that one dominant row (lm_head, typically) "
                   "does not wash out the others: values " + ", ".join(parts) + " (the table gives exact values)")


def convergence_plot_data(series: list[dict[str, Any]]) -> dict[str, Any]:
    """x positions: every (from, to) size step seen, ordered by sample counts; one line per series."""
    steps = sorted(
        {(p["from_samples"] or 0, p["to_samples"] or 0, str(p["from"]), str(p["to"])) for s in series
         for p in s["points"]}
    )
    labels = [f"{a} ({na}) → {b} ({nb})" for na, nb, a, b in steps]
    index = {(a, b): i for i, (_, _, a, b) in enumerate(steps)}
    lines = []
    for s in series:
        pts = [{"x": index[(str(p["from"]), str(p["to"]))], "rho": p["rho"], "layers": p["layers"]}
               for p in s["points"]]
        lines.append({"label": s["series"], "points": pts})
    return {"steps": labels, "series": lines, "points": sum(1 for s in lines for p in s["points"]
                                                            if p["rho"] is not None)}


# --- label placement (frontier plot) ------------------------------------------------------------------------------
AX_W_PT, AX_H_PT = 320.0, 200.0  # approximate size of one frontier panel's axes, in points
LABEL_PT = 7.5
_CANDIDATES = (  # (offset in points, ha, va): above-right first, then the other corners, then the sides
    ((8, 6), "left", "bottom"),
    ((-8, -8), "right", "top"),
    ((-8, 6), "right", "bottom"),
    ((8, -8), "left", "top"),
    ((11, 0), "left", "center"),
    ((-11, 0), "right", "center"),
    ((0, 11), "center", "bottom"),
    ((0, -11), "center", "top"),
)


def _overlap(a: tuple[float, ...], b: tuple[float, ...]) -> float:
    w = min(a[2], b[2]) - max(a[0], b[0])
    h = min(a[3], b[3]) - max(a[1], b[1])
    return w * h if w > 0 and h > 0 else 0.0


def _place(at: tuple[float, float], text: str, bold: bool, obstacles: list[tuple[float, ...]]) -> tuple[Any, ...]:
    """Pick the candidate position whose (estimated) text box overlaps the fewest points, frontier segments,
    earlier labels and the panel border. Deterministic: ties go to the earlier candidate."""
    lines = text.split("\n")
    w = max(len(s) for s in lines) * LABEL_PT * (0.68 if bold else 0.6)
    h = len(lines) * LABEL_PT * 1.3
    px, py = at
    best = None
    for i, ((dx, dy), ha, va) in enumerate(_CANDIDATES):
        x0 = px + dx - (0 if ha == "left" else w if ha == "right" else w / 2)
        y0 = py + dy - (0 if va == "bottom" else h if va == "top" else h / 2)
        box = (x0, y0, x0 + w, y0 + h)
        inside = _overlap(box, (0.0, 0.0, AX_W_PT, AX_H_PT))
        cost = sum(_overlap(box, o) for o in obstacles) + 2.0 * (w * h - inside) + 0.5 * i
        if best is None or cost < best[0]:
            best = (cost, (dx, dy), ha, va, box)
    assert best is not None
    return best[1:]


# --- drawing -----------------------------------------------------------------------------------------------------
def _figure(width: float, height: float) -> Any:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _empty(fig: Any, title: str, message: str) -> Any:
    ax = fig.subplots()
    ax.set_axis_off()
    ax.set_title(title)
    ax.text(0.5, 0.5, message, ha="center", va="center", wrap=True, fontsize=10, color="#555555",
            transform=ax.transAxes)
    return fig


def _pair_colors(pairs: list[str]) -> dict[str, Any]:
    from matplotlib import colormaps

    cmap = colormaps["tab10"]
    return {p: cmap(i % 10) for i, p in enumerate(pairs)}


def draw_frontier(data: dict[str, Any]) -> Any:
    """One panel per group, all panels on the same axes (so groups compare at a glance): every rankable cell as a
    dot coloured by quant pair, the Pareto frontier as a line through its cells (ringed), the quality threshold as
    a dashed red line with the failing region shaded, and the roles written next to their cells."""
    import matplotlib
    from matplotlib.lines import Line2D

    metric, limit = data["metric"], float(data["max_quality"])
    shown_limit = min(max(limit, 1 / PLOT_LIMIT), PLOT_LIMIT)  # where the threshold is drawn (labels: the value)
    short = METRIC_SHORT.get(metric, metric)
    panels = [p for p in data["panels"] if p["points"]]
    with matplotlib.rc_context(RC):
        if not panels:
            return _empty(_figure(7, 3), "Quality vs effective bits", "no cell with measured bits and quality to plot")
        n = len(panels)
        ncols = min(3, math.ceil(math.sqrt(n)))
        nrows = math.ceil(n / ncols)
        fig = _figure(max(5.4 * ncols, 10.0), 3.9 * nrows + 1.2)  # one panel: room for the title and legend
        axes = fig.subplots(nrows, ncols, squeeze=False, sharex=True, sharey=True)
        flat = list(axes.flat)
        colors = _pair_colors(data["pairs"])
        log = metric == "kl_mean"
        ref = data.get("reference")
        positive = [p["quality"] for pan in panels for p in pan["points"] if p["quality"] > 0]
        floor = min(max(min(positive) / 10 if positive else 1e-6, 1 / PLOT_LIMIT), PLOT_LIMIT / 10) if log else None

        def y(v: float) -> float:
            v = min(v, PLOT_LIMIT)
            return max(v, floor) if floor is not None else max(v, -PLOT_LIMIT)

        any_invalid = False
        several_budgets = len({p["budget"] for pan in panels for p in pan["points"]}) > 1
        if log:
            flat[0].set_yscale("log")
        for ax, pan in zip(flat, panels, strict=False):
            if pan["frontier"]:
                ax.plot([b for b, _ in pan["frontier"]], [y(q) for _, q in pan["frontier"]], color=FRONTIER_COLOR,
                        lw=1.4, alpha=0.8, zorder=2)
            if ref is not None:  # the unquantized model closes every frontier at 16 bits
                if pan["frontier"]:
                    top = pan["frontier"][-1]
                    ax.plot([top[0], ref[0]], [y(top[1]), y(ref[1])], color=FRONTIER_COLOR, lw=1.0, ls=":",
                            alpha=0.7, zorder=2)
                ax.scatter([ref[0]], [y(ref[1])], s=110, marker="*", color="#333333", zorder=3)
            for p in pan["points"]:
                any_invalid |= not p["valid"]
                ax.scatter([p["bits"]], [y(p["quality"])], s=70 if p["on_frontier"] else 45,
                           marker="o" if p["valid"] else "X", color=colors[str(p["pair"])],
                           edgecolors=FRONTIER_COLOR if p["on_frontier"] else "none", linewidths=1.3,
                           alpha=1.0 if p["on_frontier"] or p["roles"] else 0.75, zorder=3)
        # one set of limits for all panels (shared axes), always showing the threshold
        ax0 = flat[0]
        ax0.margins(x=0.3, y=0.25)
        ax0.autoscale_view()
        lo, hi = ax0.get_ylim()
        if log:
            lo, hi = min(lo, shown_limit / 3), max(hi, shown_limit * 3)
        else:
            pad = 0.15 * max(hi - lo, abs(shown_limit) * 0.05, 1e-9)
            lo, hi = min(lo, shown_limit - pad), max(hi, shown_limit + pad)
        ax0.set_ylim(lo, hi)
        x0, x1 = ax0.get_xlim()
        for i, (ax, pan) in enumerate(zip(flat, panels, strict=False)):
            ax.axhspan(shown_limit, hi, color=THRESHOLD_COLOR, alpha=0.07, lw=0, zorder=0)
            ax.axhline(shown_limit, color=THRESHOLD_COLOR, ls="--", lw=1.2, zorder=1)
            ax.text(0.99, 0.985, f"fails the threshold ({short} > {limit:g})", transform=ax.transAxes, ha="right",
                    va="top", fontsize=7.5, color=THRESHOLD_COLOR)
            label_all = len(pan["points"]) <= 8
            labelled = [p for p in pan["points"] if label_all or p["roles"] or p["on_frontier"]]
            labelled.sort(key=lambda p: (not p["roles"], not p["on_frontier"]))  # the important ones choose first

            def frac(b: float, q: float) -> tuple[float, float]:
                fx = (b - x0) / (x1 - x0)
                if log:
                    fy = (math.log10(y(q)) - math.log10(lo)) / (math.log10(hi) - math.log10(lo))
                else:
                    fy = (y(q) - lo) / (hi - lo)
                return fx * AX_W_PT, fy * AX_H_PT

            obstacles = [(AX_W_PT - 190, AX_H_PT - 14, AX_W_PT, AX_H_PT)]  # the "fails the threshold" note
            if ref is not None:
                rx, ry = frac(ref[0], ref[1])
                obstacles.append((rx - 7, ry - 7, rx + 7, ry + 7))
            for p in pan["points"]:
                px, py = frac(p["bits"], p["quality"])
                obstacles.append((px - 6, py - 6, px + 6, py + 6))
            for (b0, q0), (b1, q1) in zip(pan["frontier"], pan["frontier"][1:], strict=False):
                (ax_, ay_), (bx_, by_) = frac(b0, q0), frac(b1, q1)
                steps = max(1, int(math.hypot(bx_ - ax_, by_ - ay_) / 4))
                for k in range(steps + 1):
                    cx, cy = ax_ + (bx_ - ax_) * k / steps, ay_ + (by_ - ay_) * k / steps
                    obstacles.append((cx - 2, cy - 2, cx + 2, cy + 2))
            for p in labelled:
                text = str(p["pair"]) + (f" @{p['budget']:g}" if several_budgets and p["budget"] is not None else "")
                if p["roles"]:
                    text += "\n" + " · ".join(ROLE_TEXT[r] for r in p["roles"]).upper()
                offset, ha, va, box = _place(frac(p["bits"], p["quality"]), text, bool(p["roles"]), obstacles)
                obstacles.append(box)
                ax.annotate(text, (p["bits"], y(p["quality"])), xytext=offset, textcoords="offset points", ha=ha,
                            va=va, fontsize=LABEL_PT, fontweight="bold" if p["roles"] else "normal", zorder=4)
            ax.set_title(pan["title"])
            row, col = divmod(i, ncols)
            below_missing = (row + 1) * ncols + col >= n
            if below_missing:
                ax.xaxis.set_tick_params(labelbottom=True)
                ax.set_xlabel("achieved effective bits (← smaller model)")
            if col == 0:
                ax.set_ylabel(METRIC_LABEL.get(metric, metric), fontsize=8)
            ax.grid(True, which="major", alpha=0.3)
        for ax in flat[n:]:
            ax.set_axis_off()
        handles = [Line2D([], [], ls="", marker="o", color=colors[p], markersize=7, label=p) for p in data["pairs"]]
        handles.append(Line2D([], [], color=FRONTIER_COLOR, lw=1.4, marker="o", markerfacecolor="white",
                              markeredgecolor=FRONTIER_COLOR,
                              label="Pareto frontier (no other cell is both smaller and better)"))
        handles.append(Line2D([], [], color=THRESHOLD_COLOR, ls="--", label=f"quality threshold ({short} ≤ {limit:g})"))
        if ref is not None:
            handles.append(Line2D([], [], ls="", marker="*", color="#333333", markersize=10,
                                  label=f"16-bit reference ({short} {ref[1]:g}"
                                  + (", drawn at the floor)" if log and ref[1] <= 0 else ")")))
        if any_invalid:
            handles.append(Line2D([], [], ls="", marker="X", color="#777777", markersize=7,
                                  label="invalid cell (shown by --include-invalid)"))
        fig.legend(handles=handles, loc="outside lower center", ncols=min(3, len(handles)), fontsize=8, frameon=False,
                   title="BASELINE = best-quality frontier cell · MIN VIABLE = fewest bits that meet the threshold · "
                         "BEST VALUE = most of the possible bit savings for the least of the quality budget",
                   title_fontsize=8)
        fig.suptitle(f"Quality vs size, one panel per group: lower-left is better; cells in the red band fail "
                     f"{short} ≤ {limit:g}", fontsize=11)
        return fig


def draw_heatmap(heat: dict[str, Any]) -> Any:
    import matplotlib
    import numpy as np
    from matplotlib import colormaps
    from matplotlib.colors import LogNorm

    layers, cells = heat["layers"], heat["cells"]
    with matplotlib.rc_context(RC):
        if not layers or not cells:
            return _empty(_figure(7, 3), "Layer sensitivity across cells",
                          "no per-layer scores available (see the report's notes)")
        vals = np.array([[np.nan if v is None else v for v in row] for row in heat["relative"]], dtype=float)
        finite = vals[np.isfinite(vals) & (vals > 0)]
        vmax = float(heat.get("vmax") or 1.0)
        if heat.get("vmin"):
            vmin = float(heat["vmin"])
        else:
            vmin = 10.0 ** math.floor(math.log10(float(finite.min()))) if finite.size else 1e-3
            vmin = min(max(vmin, 1e-4), 0.1, vmax / 10)
        clipped = bool(np.any(np.isfinite(vals) & (vals < vmin)))
        shown = np.where(np.isnan(vals), np.nan, np.clip(vals, vmin, vmax))
        width = min(4.0 + 0.75 * len(cells), 24.0)
        fig = _figure(width, 1.9 + 0.24 * len(layers))
        ax = fig.subplots()
        cmap = colormaps["magma_r"].with_extremes(bad="#d9d9d9")  # light = insensitive, dark = sensitive; more steps than YlOrRd
        im = ax.imshow(np.ma.masked_invalid(shown), aspect="auto", cmap=cmap, norm=LogNorm(vmin=vmin, vmax=vmax),
                       interpolation="nearest")
        ax.set_yticks(range(len(layers)), labels=layers, fontsize=7)
        ax.set_xticks(range(len(cells)), labels=cells, rotation=40, ha="right", fontsize=7.5)
        ax.set_xlabel("cell (pair / granularity / dataset size)")
        ax.set_ylabel("layer group (most sensitive first)")
        bar = fig.colorbar(im, ax=ax, shrink=0.9)
        decades = [10.0 ** -k for k in range(0, 7)]
        ticks = [t for t in decades if vmin * 1.3 < t < vmax / 1.3]
        ticks = [vmax] + ticks + [vmin]
        pct = heat.get("clip_percentiles") or HEATMAP_CLIP
        top = (f"≥ {vmax:.2g} ({pct[1]:g}th pct.)" if heat.get("clipped_above")
               else "1 = cell's most\nsensitive layer" if vmax == 1.0 else f"{vmax:.2g}")
        bottom = f"{vmin:.2g}" + (f" ({pct[0]:g}th pct.)" if heat.get("clipped_below") else "")
        labels = [top] + [f"{t:g}" for t in ticks[1:-1]] + [("≤ " if clipped else "") + bottom]
        bar.set_ticks(ticks, labels=labels)
        bar.ax.minorticks_off()  # LogNorm's automatic minor labels would crowd the clipped ends
        bar.set_label("score / the cell's largest score (log scale"
                      + ("; ends clipped at percentiles)" if heat.get("clipped_above") or heat.get("clipped_below")
                         else ")"), fontsize=8)
        ax.set_title(f"Layer sensitivity across cells: the {len(layers)} layers with the highest mean relative "
                     "score\n(darker = quantizing this layer hurts the loss more, relative to the cell's worst "
                     "layer; grey = not scored)", fontsize=9.5)
        return fig


def draw_convergence(data: dict[str, Any]) -> Any:
    import matplotlib
    from matplotlib import colormaps

    with matplotlib.rc_context(RC):
        if not data["points"]:
            return _empty(_figure(7, 3), "Convergence of per-layer scores across dataset sizes",
                          "needs the same pair/granularity at two or more dataset sizes, with per-layer scores")
        fig = _figure(max(7.5, 2.5 + 2.0 * len(data["steps"])), 4.8)
        ax = fig.subplots()
        cmap = colormaps["tab10"]
        n = len(data["series"])
        rhos = [p["rho"] for s in data["series"] for p in s["points"] if p["rho"] is not None]
        annotate = len(rhos) <= 16
        for i, s in enumerate(data["series"]):
            dx = (i - (n - 1) / 2) * min(0.08, 0.5 / max(n, 1))
            pts = [p for p in s["points"] if p["rho"] is not None]
            xs, ys = [p["x"] + dx for p in pts], [p["rho"] for p in pts]
            ax.plot(xs, ys, marker="o", color=cmap(i % 10), lw=1.3, label=s["label"])
            if annotate:
                for x, yv in zip(xs, ys, strict=True):
                    ax.annotate(f"{yv:.3f}", (x, yv), xytext=(0, -12), textcoords="offset points", fontsize=7,
                                ha="center", color=cmap(i % 10))
        ax.axhline(1.0, color="#555555", ls=":", lw=1)
        # zoom on the data, but never hide how far from 1 it is: the axis always reaches 1 and a round floor
        lo = min(rhos)
        floor = 0.0 if lo < 0.5 else math.floor((lo - 0.02) * 20) / 20
        ax.set_ylim(min(floor, lo - 0.05), 1.005 + (1.0 - floor) * 0.05)
        ax.text(0.01, 1.0, "1 = identical layer ranking", transform=ax.get_yaxis_transform(), fontsize=7.5,
                color="#555555", va="bottom")
        ax.set_xlim(-0.6, len(data["steps"]) - 0.4)
        ax.set_xticks(range(len(data["steps"])), labels=data["steps"])
        ax.set_xlabel("dataset size step (samples)")
        ax.set_ylabel("Spearman rank correlation of\nper-layer scores (note the y range)")
        ax.set_title("Do per-layer sensitivity rankings settle as the calibration set grows?\n"
                     "One line per pair/granularity; near 1 = more data would not reorder the layers",
                     fontsize=9.5)
        ax.grid(True, axis="y", alpha=0.3)
        ax.legend(fontsize=8, loc="lower right" if floor == 0.0 else "lower left")
        return fig


# --- quality vs context length (evaluation.seq_lens) ------------------------------------------------------------
LENGTH_METRICS = (("kl_mean", "mean KL divergence (log scale)"), ("ppl_ratio", "perplexity ratio"),
                  ("top1_agreement", "top-1 agreement"))


def length_plot_data(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """One line per shown cell with quality by length (`long_context`): its key (and KV cache) and, per length,
    KL / perplexity ratio / top-1 agreement (None where not finite)."""
    def fin(v: Any) -> float | None:
        return float(v) if isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v) else None

    series = []
    for r in rows:
        lc = r.get("long_context")
        if not isinstance(lc, dict) or not lc.get("by_length"):
            continue
        kv = r.get("kv_cache") or "none"
        pts = [{"seq_len": m["seq_len"], **{k: fin(m.get(k)) for k, _ in LENGTH_METRICS}}
               for m in sorted(lc["by_length"], key=lambda m: m["seq_len"])]
        series.append({"label": r["key"] + ("" if kv == "none" else f" (KV {kv})"), "points": pts})
    lengths = sorted({p["seq_len"] for s in series for p in s["points"]})
    return {"seq_lens": lengths, "series": series}


def draw_quality_vs_length(data: dict[str, Any]) -> Any:
    import matplotlib
    from matplotlib import colormaps

    with matplotlib.rc_context(RC):
        fig = _figure(13.5, 4.6)
        axes = fig.subplots(1, len(LENGTH_METRICS))
        cmap = colormaps["tab10"]
        for ax, (metric, label) in zip(axes, LENGTH_METRICS, strict=True):
            for i, s in enumerate(data["series"]):
                pts = [p for p in s["points"] if p[metric] is not None
                       and (metric != "kl_mean" or 1 / PLOT_LIMIT <= p[metric] <= PLOT_LIMIT)]
                ax.plot([p["seq_len"] for p in pts], [p[metric] for p in pts], marker="o", lw=1.3,
                        color=cmap(i % 10), ls="-" if i < 10 else "--", label=s["label"])
            ax.set_xscale("log", base=2)
            ax.set_xticks(data["seq_lens"], labels=[str(L) for L in data["seq_lens"]])
            if metric == "kl_mean" and any(p["kl_mean"] for s in data["series"] for p in s["points"]):
                ax.set_yscale("log")
            ax.set_xlabel("context length (tokens)")
            ax.set_ylabel(label)
            ax.grid(True, alpha=0.3)
        axes[0].legend(fontsize=7, loc="best")
        fig.suptitle("Quality of each cell's recipe vs context length (held-out samples of that length, "
                     "against the unquantized model)", fontsize=9.5)
        return fig


# --- saving ------------------------------------------------------------------------------------------------------
def save_figure(fig: Any, out_dir: Path, stem: str) -> str:
    """Write `<stem>.png` and `<stem>.svg`; return the SVG text (for inlining)."""
    import matplotlib

    with matplotlib.rc_context({**RC, "svg.hashsalt": f"quantsweep-{stem}"}), warnings.catch_warnings():
        # a name with characters the bundled font lacks is drawn with boxes; one warning line each is just noise
        warnings.filterwarnings("ignore", message=r"Glyph \d+ .* missing from font", category=UserWarning)
        png = io.BytesIO()
        fig.savefig(png, format="png", metadata={"Software": "quantsweep"})
        svg = io.StringIO()
        fig.savefig(svg, format="svg", metadata={"Date": None, "Creator": "quantsweep"})
    atomic_write_bytes(out_dir / f"{stem}.png", png.getvalue())
    text = svg.getvalue()
    atomic_write_text(out_dir / f"{stem}.svg", text)
    return text
