"""``more inspect``: ranks per task and layer, router confidence, task embeddings, parameters."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

if TYPE_CHECKING:
    from rich.console import Console

    from more_cli.run_loading import LoadedRun

EPILOG = """\
Examples:

  more inspect runs/glue

  more inspect runs/glue --rank-heatmap --out runs/glue/inspect

  more inspect runs/glue --checkpoint step-2000 --task-embeddings --params

  more inspect runs/glue --router-history --out runs/glue/inspect

Without a section flag every section is shown. --out writes the figures (rank_heatmap,
router_confidence, task_embeddings, router_history) and inspection.json with every number
shown; the router's history over training is in the run's metrics.jsonl.
"""


class ImageFormat(str, Enum):
    png = "png"
    svg = "svg"


def inspect(
    run_dir: Annotated[Path, typer.Argument(help="Run directory written by `more train`.")],
    rank_heatmap: Annotated[
        bool, typer.Option("--rank-heatmap", help="Chosen rank per task and layer.")
    ] = False,
    task_embeddings: Annotated[
        bool,
        typer.Option("--task-embeddings", help="Task-embedding similarity and 2-D PCA map."),
    ] = False,
    params: Annotated[
        bool, typer.Option("--params", help="Trainable parameters vs a LoRA of the same rank.")
    ] = False,
    confidence: Annotated[
        bool, typer.Option("--confidence", help="Router confidence per task and layer.")
    ] = False,
    router_history: Annotated[
        bool,
        typer.Option(
            "--router-history", help="MoRE: mean chosen rank and confidence over training."
        ),
    ] = False,
    out: Annotated[
        Path | None, typer.Option("--out", help="Folder for figures and inspection.json.")
    ] = None,
    image_format: Annotated[
        ImageFormat, typer.Option("--format", help="Figure format.")
    ] = ImageFormat.png,
    checkpoint: Annotated[
        str | None,
        typer.Option("--checkpoint", help="Inspect checkpoints/step-N instead of adapter/."),
    ] = None,
) -> None:
    """Show what RUN_DIR's adapter learned; optionally save the figures."""
    from rich.console import Console

    from more_cli.cli.quiet import quiet_model_loading
    from more_cli.inspection import SECTIONS, inspect_adapter
    from more_cli.places import writable_folder
    from more_cli.run_loading import load_run

    chosen = [
        name
        for name, wanted in zip(
            SECTIONS, (rank_heatmap, task_embeddings, params, confidence), strict=True
        )
        if wanted
    ]
    everything = not chosen and not router_history
    if out is not None:
        writable_folder(out, "--out")
    quiet_model_loading()
    run = load_run(run_dir, checkpoint)
    console = Console()
    tasks = ", ".join(run.adapter.tasks)
    console.print(f"{run.source} ({run.adapter.config.kind} adapter; tasks: {tasks})")
    sections = SECTIONS if everything else chosen
    written = inspect_adapter(run.adapter, console, sections, out, image_format.value)
    if (router_history or everything) and run.adapter.config.kind == "more":
        until = int(checkpoint.removeprefix("step-")) if checkpoint else None
        written += show_router_history(run, console, until, out, image_format.value)
    for path in written:
        console.print(f"wrote {path}")


def show_router_history(
    run: LoadedRun, console: Console, until: int | None, out: Path | None, image_format: str
) -> list[Path]:
    """The router table (and with ``out`` its figure); the files written."""
    from more_cli.router_history import history_table, plot_history, read_history
    from more_cli.rundir import RunDir

    points = read_history(RunDir(run.root), until)
    if not points:
        console.print(
            f"{run.root}/metrics.jsonl has no router records (runs trained before the "
            "router trace have none)"
        )
        return []
    console.print(history_table(points, len(run.adapter.layers) * len(run.adapter.tasks)))
    if out is None:
        return []
    path = out / f"router_history.{image_format}"
    plot_history(points, run.adapter.config.r, path)
    return [path]


def register(app: typer.Typer) -> None:
    app.command("inspect", epilog=EPILOG)(inspect)
