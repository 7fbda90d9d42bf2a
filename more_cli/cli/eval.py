"""``more eval``: score a trained run on its tasks and print a per-task metrics table."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

EPILOG = """\
Examples:

  more eval runs/demo

  more eval runs/glue --tasks rte,mrpc --split validation

  more eval runs/glue --checkpoint step-2000
"""


def evaluate(
    run_dir: Annotated[Path, typer.Argument(help="Run directory written by `more train`.")],
    tasks: Annotated[
        str | None, typer.Option("--tasks", help="Comma-separated task names (default: all).")
    ] = None,
    split: Annotated[
        str | None,
        typer.Option("--split", help="Split to score (default: the held-out test split)."),
    ] = None,
    checkpoint: Annotated[
        str | None,
        typer.Option("--checkpoint", help="Score checkpoints/step-N instead of adapter/."),
    ] = None,
) -> None:
    """Evaluate RUN_DIR's adapter; print the table and write RUN_DIR/eval.json (a partial
    evaluation: a file of its own, eval-<split>[-<checkpoint>][-<tasks>].json)."""
    from rich.console import Console

    from more_cli.cli.quiet import quiet_model_loading
    from more_cli.evaluation.runs import evaluate_run
    from more_cli.evaluation.scoring import metrics_table

    quiet_model_loading()
    task_names = None if tasks is None else [n.strip() for n in tasks.split(",") if n.strip()]
    report = evaluate_run(
        run_dir, tasks=task_names, split=split, checkpoint=checkpoint,
        say=lambda line: typer.echo(line, err=True),  # stdout keeps only the table
    )  # fmt: skip
    Console().print(metrics_table(report))
    typer.echo(f"wrote {run_dir / report['file']}")


def register(app: typer.Typer) -> None:
    app.command("eval", epilog=EPILOG)(evaluate)
