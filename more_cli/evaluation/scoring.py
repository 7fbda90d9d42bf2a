"""Scoring a model on its tasks: the metrics of every task on one split, the GLUE-style
average, the split names, and the table ``more eval`` prints."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from typing import Any

import torch
from rich.table import Table
from torch import nn

from more_cli.errors import UserError
from more_cli.evaluation.predict import predict
from more_cli.recipe import Recipe
from more_cli.tasks import Task, compute_metrics, glue_average


def score_tasks(
    model: nn.Module,
    tokenizer: Any,
    family: str,
    tasks: Sequence[Task],
    recipe: Recipe,
    split: str,
    device: torch.device | str,
    only: Sequence[str] | None = None,
    say: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Metrics of ``tasks`` (the run's task list, in order: position = task id) on ``split``.

    ``only`` restricts scoring to those task names. ``say`` (if given) hears the progress:
    rows done of each task at every quarter, then its headline metric and time. Returns
    ``{"split", "tasks": {task: {metric: value, "headline": value}}, "average"}`` (mean
    headline, 0-100).
    """
    batch_size = recipe.train.eval_batch_size or recipe.train.batch_size
    results = {}
    for task_id, task in enumerate(tasks):
        if only and task.name not in only:
            continue
        examples, started = task.load_split(split), time.perf_counter()
        # Quarters cut at whole batches: the batches, hence the scores, are those of one pass.
        quarter = batch_size * math.ceil(len(examples) / 4 / batch_size)
        chunk = max(1, quarter if say else len(examples))
        predictions = []
        for begin in range(0, len(examples), chunk):
            predictions += predict(
                model, tokenizer, task, examples[begin : begin + chunk], family, batch_size,
                device, task_id=task_id, max_source_length=recipe.data.max_source_length,
                max_target_length=recipe.data.max_target_length,
            )  # fmt: skip
            if say:
                say(f"  {split} {task.name}: {len(predictions):,}/{len(examples):,} rows")
        references = [example.label for example in examples]
        results[task.name] = compute_metrics(task, [p.label for p in predictions], references)
        if say:
            seconds = time.perf_counter() - started
            headline = results[task.name]["headline"]
            say(f"  {split} {task.name}: {task.headline_metric} {headline:.2f} ({seconds:.0f} s)")
    return {"split": split, "tasks": results, "average": glue_average(results)}


def metrics_table(report: dict[str, Any]) -> Table:
    """A rich table: one row per task, one column per metric, the average last."""
    names = {name for values in report["tasks"].values() for name in values} - {"headline"}
    metrics = [*sorted(names), "headline"]
    table = Table(title=f"{report['source']} on {report['split']}")
    table.add_column("task")
    for name in metrics:
        table.add_column(name, justify="right")
    for task, values in report["tasks"].items():
        table.add_row(task, *(_cell(values.get(name)) for name in metrics))
    table.add_section()
    table.add_row("average (headline)", *([""] * (len(metrics) - 1)), _cell(report["average"]))
    return table


def selection_split(recipe: Recipe) -> str:
    return "val_select" if recipe.data.split_validation else "validation"


def test_split(recipe: Recipe) -> str:
    return "val_test" if recipe.data.split_validation else "validation"


def check_task_names(tasks: list[Task], names: Sequence[str] | None) -> None:
    unknown = [name for name in names or [] if name not in {task.name for task in tasks}]
    if unknown:
        raise UserError(
            f"this run has no task {', '.join(unknown)}",
            details=[f"its tasks are: {', '.join(task.name for task in tasks)}"],
        )


def _cell(value: float | None) -> str:
    return "" if value is None else f"{value:.4f}"
