"""Few-shot transfer: add new tasks to a trained run and train only what they need.

A recipe with ``transfer.from_run`` (method.md §5, "new task embedding only") starts from a
finished run instead of a fresh adapter:

- **Recipe.** :func:`resolve_transfer` completes it from the source run: the run's adapter
  section, its tasks first (in their order, so task ids stay the same) and then the
  recipe's tasks, which must be new. ``model`` must equal the run's. ``data`` is the run's
  unless the recipe gives one. With ``transfer.shots: k`` every new task trains on k rows
  (its ``max_train_samples``, a sample seeded by ``train.seed``). The result is written as
  ``recipe.resolved.yaml``; it resolves to itself, so ``--resume`` works as for any run.
- **Model.** :func:`start_transfer` loads the run's adapter and (encoders) heads, then
  ``adapter.add_tasks(new)``: shared experts, gates and old task embeddings freeze (old rows
  get zero gradients, and the optimizer gives task embeddings no weight decay), old heads
  freeze, new embeddings and new heads train; ``transfer.train_gates`` also trains the gates.
- **Training.** Batches come from the new tasks only; evaluation during training scores the
  new tasks; the final ``eval.json`` scores every task, old ones included (unchanged).

The new run holds old and new tasks together, so ``more eval``, ``merge``, ``inspect`` and
``predict`` work on it like on any run.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from more_cli.adapters import MultiTaskAdapter, load_adapter
from more_cli.adapters.state import read_weights
from more_cli.errors import UserError
from more_cli.modeling import HEADS_FILE, TaskHeadModel, adapter_host
from more_cli.recipe import Recipe, TaskConfig
from more_cli.recipe_io import load_recipe
from more_cli.run_loading import adapter_source
from more_cli.rundir import RunDir


def resolve_transfer(recipe: Recipe) -> Recipe:
    """The complete recipe of a transfer run (see the module docstring); others unchanged.

    Raises:
        UserError: the source is not a finished run, or the recipe does not fit it (all
            problems at once).
    """
    source_dir = recipe.transfer.from_run
    if source_dir is None:
        return recipe
    adapter_source(source_dir)
    source = load_recipe(RunDir(source_dir).recipe, resolved=True)
    label = f"transfer from {source_dir}"
    problems = []
    if recipe.model != source.model:
        changed = _changed_keys(recipe.model.model_dump(), source.model.model_dump())
        problems.append(f"model differs from the run's in {changed}; use the run's model section")
    if "adapter" in recipe.model_fields_set and recipe.adapter != source.adapter:
        problems.append("adapter: a transfer keeps the run's adapter; remove the adapter section")
    new, task_problems = _new_tasks(recipe, source)
    problems += task_problems
    if problems:
        raise UserError(
            f"{label}: {problems[0]}" if len(problems) == 1 else f"{label}: {len(problems)} errors",
            details=problems,
        )
    return recipe.model_copy(
        update={
            "adapter": source.adapter,
            "tasks": [*source.tasks, *new],
            "data": recipe.data if "data" in recipe.model_fields_set else source.data,
        }
    )


def _new_tasks(recipe: Recipe, source: Recipe) -> tuple[list[TaskConfig], list[str]]:
    """The recipe's new tasks (after the run's, when listed as in a resolved recipe), with
    ``shots`` applied, and the problems found."""
    old = source.tasks
    given = recipe.tasks
    if [t.name for t in given[: len(old)]] == source.task_names:
        if given[: len(old)] != old:
            return [], ["tasks: the run's tasks are listed, but not as the run defines them"]
        given = given[len(old) :]
    problems = [
        f"task {t.name} is already in the run; a transfer adds new tasks"
        for t in given
        if t.name in source.task_names
    ]
    if not given:
        problems.append(f"tasks: list the new tasks (the run has {', '.join(source.task_names)})")
    shots = recipe.transfer.shots
    if shots is None:
        return list(given), problems
    problems += [
        f"task {t.name}: max_train_samples {t.max_train_samples} contradicts transfer.shots "
        f"{shots}; drop one"
        for t in given
        if t.max_train_samples not in (None, shots)
    ]
    return [t.model_copy(update={"max_train_samples": shots}) for t in given], problems


def _changed_keys(given: dict, expected: dict) -> str:
    return ", ".join(sorted(key for key in given if given[key] != expected.get(key)))


def old_task_names(recipe: Recipe) -> list[str]:
    """The tasks a transfer run inherits (empty for an ordinary run): the source's tasks."""
    if recipe.transfer.from_run is None:
        return []
    return load_recipe(RunDir(recipe.transfer.from_run).recipe, resolved=True).task_names


def start_transfer(model: nn.Module, recipe: Recipe) -> MultiTaskAdapter:
    """Load the source run's adapter and heads into ``model``, add the new tasks, freeze
    everything the old tasks use.

    ``model`` is the fresh base from ``load_base`` with heads for every task of the resolved
    ``recipe`` (encoders); ``recipe`` must have passed :func:`resolve_transfer`.
    """
    source = adapter_source(recipe.transfer.from_run)
    old = old_task_names(recipe)
    adapter = load_adapter(adapter_host(model), source, tasks=old)
    if isinstance(model, TaskHeadModel):
        _load_old_heads(model, source / HEADS_FILE, len(old))
    adapter.add_tasks(recipe.task_names[len(old) :], train_gates=recipe.transfer.train_gates)
    return adapter


def _load_old_heads(model: TaskHeadModel, path: Path, count: int) -> None:
    """Copy the first ``count`` task heads from the source run and freeze them."""
    tensors = read_weights(path)
    with torch.no_grad():
        for spec, head in zip(model.specs[:count], model.heads[:count], strict=True):
            for name, param in head.named_parameters():
                key = f"{spec.task}.{name}"
                if key not in tensors or tensors[key].shape != param.shape:
                    raise UserError(f"{path} holds no head {key} of shape {tuple(param.shape)}")
                param.copy_(tensors[key])
                param.requires_grad_(False)
