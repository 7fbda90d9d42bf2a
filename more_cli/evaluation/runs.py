"""Run-level evaluation: load a finished run (or one of its checkpoints), score it, write the
report. Reads a run; imports nothing from training.

A full evaluation (every task, the test split, the run's adapter) writes ``eval.json``, as
training does; a partial one (``--tasks``, ``--split``, ``--checkpoint``) writes a file named
for what it scored, ``eval-<split>[-<checkpoint>][-<task>+<task>].json``, and leaves
``eval.json`` as it was."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from more_cli.errors import UserError
from more_cli.evaluation.scoring import check_task_names, score_tasks, test_split
from more_cli.recipe import Recipe
from more_cli.run_loading import load_run
from more_cli.rundir import (
    RunDir,
    atomic_write_json,
)
from more_cli.tasks import get_task


def evaluate_run(
    run_dir: Path,
    tasks: Sequence[str] | None = None,
    split: str | None = None,
    checkpoint: str | None = None,
    say: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Score a run's adapter (or ``checkpoints/<checkpoint>``) and write its report.

    Args:
        run_dir: a run directory written by :func:`train`.
        tasks: task names to score (default: all the run's tasks).
        split: split to score (default: the test split, ``val_test`` or ``validation``).
        checkpoint: ``step-N`` to score a checkpoint instead of ``adapter/``.
        say: where progress lines go (rows done per task, each task's score), if anywhere.

    Returns:
        The report: ``split``, ``source``, ``tasks`` (``{task: {metric: value}}``),
        ``average`` (of the headline metrics) and ``file``, the run-relative file it was
        written to (:func:`report_file`).
    """
    if tasks is not None and not tasks:
        raise UserError("--tasks names no task; give names such as rte,mrpc or leave it out")
    loaded = load_run(run_dir, checkpoint)
    recipe = loaded.recipe
    all_tasks = [get_task(cfg, seed=recipe.train.seed) for cfg in recipe.tasks]
    check_task_names(all_tasks, tasks)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    if not recipe.model.load_in_4bit:  # a 4-bit model is placed by its device_map
        loaded.model.to(device)
    split = split or test_split(recipe)
    report = score_tasks(
        loaded.model, loaded.tokenizer, loaded.family, all_tasks, recipe, split, device,
        only=tasks, say=say,
    )  # fmt: skip
    report["source"] = loaded.source.relative_to(loaded.root).as_posix()
    path = report_file(RunDir(loaded.root), recipe, tasks, split, checkpoint)
    atomic_write_json(path, report)
    return report | {"file": path.name}


def report_file(
    run: RunDir,
    recipe: Recipe,
    tasks: Sequence[str] | None,
    split: str,
    checkpoint: str | None,
) -> Path:
    """``eval.json`` for a full evaluation, else a file named for the split, checkpoint and
    tasks scored: a partial evaluation never replaces the run's report."""
    chosen = [name for name in recipe.task_names if tasks is None or name in tasks]
    if chosen == recipe.task_names and split == test_split(recipe) and checkpoint is None:
        return run.eval
    parts = [split, *([checkpoint] if checkpoint else [])]
    if chosen != recipe.task_names:
        parts.append("+".join(chosen))
    return run.root / f"eval-{'-'.join(parts)}.json"
