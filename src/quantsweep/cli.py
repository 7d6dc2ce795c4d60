"""The `quantsweep` command line (Typer). Heavy imports (torch, ModelOpt) happen inside the commands that need
them, so `dry-run`, `catalogue` and `--help` start instantly.

Exit codes (docs/cli.md): 0 ok, 1 internal error, 2 invalid input, 3 gate failed, 4 some cells failed,
130 interrupted.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from .errors import ExitCode, QuantsweepError

app = typer.Typer(
    name="quantsweep",
    help="Sweep LLM quantization choices (quant pairs x granularities x dataset sizes) with ModelOpt AutoQuantize.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

# Wide output when piped (Rich would default to 80 columns and fold the cell table).
out = Console(soft_wrap=False, width=None if sys.stdout.isatty() else 200)
err = Console(stderr=True)

MatrixOpt = Annotated[Path, typer.Option("--matrix", "-m", help="matrix file (.yaml, .yml or .json)")]
JsonOpt = Annotated[bool, typer.Option("--json", help="print one JSON document on stdout and nothing else there")]


def _emit_json(doc: Any) -> None:
    sys.stdout.write(json.dumps(doc, indent=2, sort_keys=False, default=str) + "\n")
    sys.stdout.flush()


# --- dry-run ----------------------------------------------------------------------------------------------
@app.command("dry-run")
def dry_run(matrix: MatrixOpt, as_json: JsonOpt = False) -> None:
    """Validate and expand a matrix; print the plan. Creates nothing, loads no model, uses no network."""
    from .dry_run import build_dry_run, render_dry_run

    doc = build_dry_run(matrix)
    if as_json:
        _emit_json(doc)
    else:
        render_dry_run(doc, out)


# --- catalogue --------------------------------------------------------------------------------------------
@app.command("catalogue")
def catalogue(as_json: JsonOpt = False) -> None:
    """List the quant pairs and granularity overlays a matrix can name."""
    from .catalogue import GRANULARITIES, QUANT_PAIRS
    from .quant_summary import describe_quantizer, format_bits

    pairs = []
    for p in QUANT_PAIRS.values():
        cfg = p.config()
        pairs.append(
            {
                **p.to_dict(),
                "format_bits": format_bits(cfg),
                "weight_quantizer": describe_quantizer(cfg, "*weight_quantizer"),
                "input_quantizer": describe_quantizer(cfg, "*input_quantizer"),
                "calibration": cfg["algorithm"] if isinstance(cfg["algorithm"], str) else cfg["algorithm"]["method"],
            }
        )
    grans = [g.to_dict() for g in GRANULARITIES.values()]
    if as_json:
        from .overlay import to_jsonable

        _emit_json({"quant_pairs": pairs, "granularities": to_jsonable({"g": grans})["g"]})
        return
    t = Table(title="Quant pairs", show_lines=False)
    for col in ("name", "W/A", "bits", "weight quantizer", "input quantizer", "calib", "ModelOpt built-in", "flags"):
        t.add_column(col)
    for p in pairs:
        flags = ",".join(f for f in ("experimental", "needs_gpu", "extra") if p[f])
        t.add_row(
            p["name"],
            f"{p['weight']}/{p['activation']}",
            f"{p['format_bits']:g}",
            p["weight_quantizer"],
            p["input_quantizer"],
            str(p["calibration"]),
            p["base_builtin"] or "(derived)",
            flags,
        )
    out.print(t)
    g = Table(title="Granularity overlays")
    g.add_column("name")
    g.add_column("overrides")
    g.add_column("meaning")
    for gr in GRANULARITIES.values():
        from .overlay import to_jsonable

        g.add_row(gr.name, json.dumps(to_jsonable(gr.overrides())), gr.description)
    out.print(g)


def main() -> None:
    """Console entry point: maps QuantsweepError to its exit code with a one-line message on stderr."""
    try:
        app(standalone_mode=False)
    except QuantsweepError as exc:
        err.print(f"[bold red]error:[/] {exc}", markup=True, highlight=False, soft_wrap=True)
        sys.exit(int(exc.exit_code))
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        err.print("interrupted; recorded results are intact, run the same command again to resume")
        sys.exit(int(ExitCode.INTERRUPTED))
    except Exception as exc:  # click usage errors
        import click

        if isinstance(exc, click.exceptions.ClickException):
            exc.show()
            sys.exit(int(ExitCode.INVALID_INPUT))
        if isinstance(exc, click.exceptions.Abort):
            sys.exit(int(ExitCode.INTERRUPTED))
        raise


if __name__ == "__main__":
    main()
