"""``more train``: fine-tune a base model on several tasks from a recipe."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

EPILOG = """\
Examples:

  more train recipes/demo.yaml

  more train recipes/glue_t5.yaml --set train.lr=1e-4 --set adapter.r=16 -o runs/glue-r16

  more train runs/glue-r16 --resume      # continue an interrupted run from its checkpoint
"""


def train(
    recipe: Annotated[
        Path, typer.Argument(help="Recipe YAML, or a run directory (its resolved recipe).")
    ],
    overrides: Annotated[
        list[str] | None,
        typer.Option("--set", help="Override a recipe key, e.g. --set train.lr=1e-4 (repeatable)."),
    ] = None,
    resume: Annotated[
        bool,
        typer.Option(
            "--resume",
            help="Continue the run in the output directory from its latest checkpoint.",
        ),
    ] = False,
    output_dir: Annotated[
        Path | None,
        typer.Option("--output-dir", "-o", help="Run directory (overrides output_dir)."),
    ] = None,
) -> None:
    """Train an adapter on every task of RECIPE; write the run directory."""
    from more_cli.recipe_io import load_recipe
    from more_cli.rundir import RunDir
    from more_cli.training import TrainingInterrupted
    from more_cli.training import train as run_training

    if recipe.is_dir():
        # A run directory: train (usually resume) with the recipe it was started with.
        output_dir = output_dir or recipe
        recipe = RunDir(recipe).recipe
    loaded = load_recipe(recipe, overrides or [])
    if output_dir is not None:
        loaded = loaded.model_copy(update={"output_dir": output_dir})
    try:
        run_dir = run_training(loaded, resume=resume)
    except TrainingInterrupted as stop:
        raise typer.Exit(stop.exit_code) from None
    typer.echo(f"run finished: {run_dir}")
    typer.echo(f"  evaluate again with: more eval {run_dir}")


def register(app: typer.Typer) -> None:
    app.command("train", epilog=EPILOG)(train)
