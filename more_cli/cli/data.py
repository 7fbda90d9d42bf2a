"""``more data prepare``: built-in tasks from the hub into the local folders recipes read."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

EPILOG = """\
Examples:

  more data prepare glue              # 8 tasks into data/glue/<task>/

  more data prepare rte boolq --out data/mine

  more data prepare glue --hub /mirrors/glue

--hub: a mirror, or a local copy of the hub dataset. Then train offline from the
folders: more train recipes/glue_local.yaml (it reads data/glue/<task>).
"""

data_app = typer.Typer(help="Prepare task data for offline runs.", no_args_is_help=True)


@data_app.command("prepare", epilog=EPILOG)
def prepare(
    names: Annotated[list[str], typer.Argument(help="Tasks (see `more tasks`) or groups: glue.")],
    out: Annotated[Path, typer.Option("--out", help="Folder of the task folders.")] = Path(
        "data/glue"
    ),
    hub: Annotated[
        str | None,
        typer.Option("--hub", help="Read this hub dataset (or local copy) instead."),
    ] = None,
    force: Annotated[bool, typer.Option("--force", help="Replace existing task folders.")] = False,
) -> None:
    """Download tasks once into OUT/<task>/{train,validation}.jsonl for offline runs.

    The files keep the hub's columns and label ids: the layout a recipe's `source:` reads."""
    from more_cli.tasks.prepare import prepare as prepare_tasks

    folders = prepare_tasks(names, out, hub=hub, force=force, say=typer.echo)
    typer.echo(f"wrote {len(folders)} task folder(s) under {out}")


def register(app: typer.Typer) -> None:
    app.add_typer(data_app, name="data")
