"""``more predict``: predict new rows (JSON lines) with a trained run, tasks mixed or not."""

from __future__ import annotations

import contextlib
import io
import sys
from collections.abc import Callable, Iterator
from enum import Enum
from pathlib import Path
from typing import Annotated

import typer

EPILOG = """\
Examples:

  more predict runs/glue --task rte --input rte.jsonl --output preds.jsonl

  more predict runs/glue --task-field task --input mixed.jsonl     # rows name their task

  echo '{"sentence1": "A man eats.", "sentence2": "Someone eats."}' | more predict runs/glue -t rte

Rows hold the task's raw columns (sentence1/sentence2 for rte), or the formatted input in the
column given by --text-field. Each output line: {"line", "task", "prediction",
"prediction_id", "probabilities"} ("prediction_score" for a regression task), in input order.
"""


class Dtype(str, Enum):
    auto = "auto"
    float32 = "float32"
    bfloat16 = "bfloat16"
    float16 = "float16"


def predict(
    run_dir: Annotated[Path, typer.Argument(help="Run directory written by `more train`.")],
    task: Annotated[
        str | None,
        typer.Option("--task", "-t", help="Task of every row (the fallback with --task-field)."),
    ] = None,
    task_field: Annotated[
        str | None,
        typer.Option("--task-field", help="Column holding each row's task, for mixed files."),
    ] = None,
    text_field: Annotated[
        str | None,
        typer.Option(
            "--text-field",
            help="Column holding the formatted model input (task prefix included) instead of "
            "the task's raw columns.",
        ),
    ] = None,
    input_path: Annotated[
        Path | None,
        typer.Option("--input", "-i", help="JSON lines to predict; '-' or omitted: stdin."),
    ] = None,
    output: Annotated[
        Path | None,
        typer.Option("--output", "-o", help="Write predictions here (default: stdout)."),
    ] = None,
    batch_size: Annotated[
        int | None,
        typer.Option(
            "--batch-size",
            min=1,
            help="Rows per forward (seq2seq / decoder: row-candidate pairs). Default: the "
            "recipe's eval batch size.",
        ),
    ] = None,
    device: Annotated[
        str, typer.Option("--device", help="auto (GPU if there is one), cpu, cuda or cuda:N.")
    ] = "auto",
    dtype: Annotated[
        Dtype, typer.Option("--dtype", help="Cast the model; auto keeps the recipe's dtype.")
    ] = Dtype.auto,
    checkpoint: Annotated[
        str | None,
        typer.Option("--checkpoint", help="Predict with checkpoints/step-N instead of adapter/."),
    ] = None,
) -> None:
    """Predict every row of the input with RUN_DIR's adapter; one JSON line per row."""
    from more_cli.atomic import atomic_write_bytes
    from more_cli.cli.quiet import quiet_model_loading
    from more_cli.errors import UserError
    from more_cli.places import writable_file
    from more_cli.prediction import (
        RunTasks,
        place_run,
        predict_with_run,
        prediction_record,
        prepare_inputs,
        read_json_lines,
        resolve_device,
        write_json_lines,
    )
    from more_cli.recipe_io import load_recipe
    from more_cli.run_loading import adapter_source, load_run
    from more_cli.rundir import RunDir

    # Check the run, the output place and every row before the model is loaded.
    adapter_source(run_dir, checkpoint)
    if output is not None:
        stdin_input = input_path is None or str(input_path) == "-"
        writable_file(output, "--output", inputs=[None if stdin_input else input_path])
    tasks = RunTasks(load_recipe(RunDir(run_dir).recipe, resolved=True))
    if input_path is None or str(input_path) == "-":
        if sys.stdin.isatty():
            raise UserError("no input: give --input FILE, or pipe JSON lines into stdin")
        origin, rows = "stdin", read_json_lines(sys.stdin, "stdin")
    else:
        if not input_path.is_file():
            raise UserError(f"input file not found: {input_path}")
        try:
            with input_path.open(encoding="utf-8") as handle:
                origin, rows = str(input_path), read_json_lines(handle, str(input_path))
        except UnicodeDecodeError as error:
            raise UserError(
                f"{input_path} is not UTF-8 text (byte {error.start}); give JSON lines, one "
                "object a line"
            ) from None
    inputs = prepare_inputs(
        rows, tasks, origin, task=task, task_field=task_field, text_field=text_field
    )
    target = resolve_device(device)
    quiet_model_loading()
    run = load_run(run_dir, checkpoint)
    place_run(run, target, None if dtype is Dtype.auto else dtype.value)
    size = batch_size or run.recipe.train.eval_batch_size or run.recipe.train.batch_size
    with _progress_bar(len(inputs), show=len(inputs) > size) as progress:
        predictions = predict_with_run(run, tasks, inputs, size, target, progress)
    records = (prediction_record(i, p) for i, p in zip(inputs, predictions, strict=True))
    if output is None:
        write_json_lines(records, sys.stdout)
        return
    buffer = io.StringIO()
    write_json_lines(records, buffer)
    atomic_write_bytes(output, buffer.getvalue().encode("utf-8"))  # never half a file
    typer.echo(f"wrote {len(inputs)} predictions to {output}", err=True)


@contextlib.contextmanager
def _progress_bar(total: int, show: bool) -> Iterator[Callable[[int], None] | None]:
    """A progress bar on stderr when it is a terminal and ``show``; yields the callable that
    takes the number of rows done (None without a bar)."""
    if not (show and sys.stderr.isatty()):
        yield None
        return
    from rich.console import Console
    from rich.progress import Progress

    with Progress(console=Console(stderr=True), transient=True) as bar:
        task_id = bar.add_task("predicting", total=total)
        yield lambda done: bar.update(task_id, completed=done)


def register(app: typer.Typer) -> None:
    app.command("predict", epilog=EPILOG)(predict)
