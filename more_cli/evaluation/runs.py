"""Run-level evaluation: load a finished run (or one of its checkpoints), score it, write
``eval.json``. Reads a run; imports nothing from training."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from more_cli.evaluation.scoring import check_task_names, score_tasks, test_split
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
) -> dict[str, Any]:
    """Score a run's adapter (or ``checkpoints/<checkpoint>``) and write ``eval.json``.

    Args:
        run_dir: a run directory written by :func:`train`.
        tasks: task names to score (default: all the run's tasks).
        split: split to score (default: the test split, ``val_test`` or ``validation``).
        checkpoint: ``step-N`` to score a checkpoint instead of ``adapter/``.

    Returns:
        The report written to ``eval.json``: ``split``, ``source``, ``tasks``
        (``{task: {metric: value}}``) and ``average`` (of the headline metrics).
    """
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
        only=tasks,
    )  # fmt: skip
    report["source"] = loaded.source.relative_to(loaded.root).as_posix()
    atomic_write_json(RunDir(loaded.root).eval, report)
    return report
