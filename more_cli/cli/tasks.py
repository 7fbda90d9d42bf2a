"""``more tasks``: the built-in tasks, their input columns, label words, metric and hub source."""

from __future__ import annotations

import json
from typing import Annotated

import typer

EPILOG = """\
Examples:

  more tasks

  more tasks rte        # columns, label words, metrics, and a `more predict` input row

Any other name is a user-defined task: give it a template and data_files in the recipe
(docs/recipes.md).
"""


def tasks(
    name: Annotated[
        str | None, typer.Argument(help="A task to show in full (default: list them all).")
    ] = None,
) -> None:
    """List the built-in tasks, or show one: what its rows hold and how it is scored."""
    from rich.console import Console
    from rich.table import Table

    from more_cli.tasks.registry import TASK_NAMES, task_info

    console = Console()
    if name is not None:
        info = task_info(name)
        labels = ", ".join(info.label_words) if info.label_words else "a score from 0 to 5"
        row = {column: f"<{column}>" for column in info.columns}
        for key, value in [
            ("task", info.name), ("input columns", ", ".join(info.columns)),
            ("labels", labels), ("metrics", ", ".join(info.metrics)),
            ("headline metric", info.headline), ("hub dataset", info.hub),
            ("model input", info.input_example),
            ("predict row", json.dumps(row)),
        ]:  # fmt: skip
            console.print(f"[bold]{key:>15}[/bold]  {value}", soft_wrap=True, highlight=False)
        return
    table = Table(title="built-in tasks (more tasks NAME shows one, with its hub dataset)")
    for column in ("task", "input columns", "labels", "metric"):
        # Label words are single tokens up to 14 characters: never split one.
        table.add_column(column, overflow="fold", min_width=14 if column == "labels" else None)
    for task_name in TASK_NAMES:
        info = task_info(task_name)
        labels = " / ".join(info.label_words) if info.label_words else "score 0-5"
        table.add_row(info.name, ", ".join(info.columns), labels, info.headline)
    console.print(table)


def register(app: typer.Typer) -> None:
    app.command("tasks", epilog=EPILOG)(tasks)
