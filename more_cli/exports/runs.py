"""Exporting a whole run (``more merge``): plan the tasks and folders, refuse what exists,
write each task's merged checkpoint and PEFT adapter, verify them."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from more_cli.errors import UserError
from more_cli.exports.cards import model_card
from more_cli.exports.heads import task_head
from more_cli.exports.verify import verify_export
from more_cli.exports.writers import (
    check_shard_size,
    describe_base_weights,
    refuse_existing,
    write_merged,
    write_peft,
)
from more_cli.modeling import (
    resolve_model_path,
)
from more_cli.recipe_io import load_recipe
from more_cli.run_loading import (
    BaseWeights,
    adapter_source,
    load_run,
)
from more_cli.rundir import RunDir, atomic_directory


@dataclass(frozen=True)
class ExportResult:
    """What :func:`export_run` wrote for one task."""

    task: str
    merged_dir: Path
    peft_dir: Path
    mean_rank: float
    differences: dict[str, float] | None


def export_run(
    run_dir: str | Path,
    tasks: Sequence[str] | None,
    out_dir: str | Path | None = None,
    *,
    dtype: torch.dtype = torch.float32,
    max_shard_size: str = "2GB",
    verify: bool = True,
    force: bool = False,
    checkpoint: str | None = None,
    nf4_roundtrip: bool = False,
    say: Callable[[str], None] = print,
) -> list[ExportResult]:
    """Export ``tasks`` (None = every task) of a run to ``out_dir/{merged,peft}/<task>/``.

    ``out_dir`` defaults to ``RUN_DIR/exports``. The run is loaded once for reference and
    PEFT exports, and once more per task for the merge (a merge consumes the model).

    Raises:
        UserError: unknown task, existing exports without ``force``, ``nf4_roundtrip`` on a
            run without a 4-bit base, or a verification failure.
    """
    out_dir = Path(out_dir) if out_dir is not None else Path(run_dir) / "exports"
    check_shard_size(max_shard_size)
    base_weights, names = _plan(run_dir, checkpoint, tasks, nf4_roundtrip)
    for task in names:
        for kind in ("merged", "peft"):
            refuse_existing(out_dir / kind / task, force)
    reference = load_run(run_dir, checkpoint, base_weights=base_weights)
    reference.adapter.check_mergeable()  # before any folder is made
    say(f"base weights: {describe_base_weights(reference)}")
    base_name = resolve_model_path(reference.recipe.model.name)
    results = []
    for task in names:
        merged_dir, peft_dir = out_dir / "merged" / task, out_dir / "peft" / task
        say(f"{task}: writing {peft_dir} and {merged_dir}" + (", then verifying" if verify else ""))
        merging = load_run(run_dir, checkpoint, base_weights=base_weights)
        # Both folders are staged and verified before either replaces what was there: a
        # failure leaves no new export and every old one (with --force) as it was.
        with atomic_directory(peft_dir) as peft_stage, atomic_directory(merged_dir) as stage:
            write_peft(
                reference.adapter, task, peft_stage, base_name,
                family=reference.family, dtype=dtype, head=task_head(reference, task),
                card=model_card(reference, task, "peft", base_name),
            )  # fmt: skip
            write_merged(
                merging, task, stage, dtype=dtype, max_shard_size=max_shard_size,
                card=model_card(merging, task, "merged", base_name),
            )  # fmt: skip
            differences = (
                verify_export(reference, task, stage, peft_stage, dtype=dtype) if verify else None
            )
        ranks = reference.adapter.chosen_ranks()[task].values()
        results.append(
            ExportResult(task, merged_dir, peft_dir, sum(ranks) / len(ranks), differences)
        )
    return results


def _plan(
    run_dir: str | Path, checkpoint: str | None, tasks: Sequence[str] | None, nf4_roundtrip: bool
) -> tuple[BaseWeights, list[str]]:
    """Check the request against the run's recipe before any model is loaded."""
    adapter_source(run_dir, checkpoint)
    recipe = load_recipe(RunDir(Path(run_dir)).recipe, resolved=True)
    if nf4_roundtrip and not recipe.model.load_in_4bit:
        raise UserError(
            "--nf4-roundtrip only applies to runs trained on a 4-bit base "
            "(model.load_in_4bit: true); this run's base is full precision",
            details=["drop --nf4-roundtrip"],
        )
    names = list(tasks) if tasks else recipe.task_names
    unknown = [task for task in names if task not in recipe.task_names]
    if unknown:
        raise UserError(
            f"unknown task {unknown[0]!r}; this run's tasks are {', '.join(recipe.task_names)}"
        )
    return ("nf4_roundtrip" if nf4_roundtrip else "full_precision"), names
