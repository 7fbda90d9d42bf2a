"""Few-shot transfer from a trained run: the resolved recipe, frozen old tasks, a trained
new task, and a run that the other commands read like any run."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from more_cli.errors import UserError
from more_cli.prediction import RunTasks, predict_with_run, prepare_inputs
from more_cli.recipe import Recipe
from more_cli.recipe_io import dump_resolved, load_recipe
from more_cli.run_loading import load_run
from more_cli.training.loop import train
from more_cli.transfer import resolve_transfer

STEPS = {"max_steps": 4, "save_every": 2}


@pytest.fixture
def source_run(write_recipe: Callable[..., Path], run_dir: Path) -> Callable[[str], Path]:
    """``source_run(family)`` → a finished tiny run on sst2 alone."""

    def make(family: str) -> Path:
        return train(load_recipe(write_recipe(family, tasks=("sst2",))))

    return make


def transfer_recipe(
    write_recipe: Callable[..., Path],
    source: Path,
    family: str = "seq2seq",
    tasks: tuple[str, ...] = ("rte",),
    **sections,
) -> Recipe:
    """A recipe adding ``tasks`` (8 shots each) to the ``source`` run."""
    sections.setdefault("train", STEPS)
    path = write_recipe(
        family,
        tasks=tasks,
        transfer={"from_run": str(source), "shots": 8, **sections.pop("transfer", {})},
        output_dir=str(source.parent / "transfer"),
        **sections,
    )
    return load_recipe(path)


def split_tasks(grown: torch.Tensor, old: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """A per-task tensor after transfer, cut into the old tasks' part and the new ones'."""
    dim = next(d for d in range(grown.dim()) if grown.shape[d] != old.shape[d])
    count = old.shape[dim]
    return grown.narrow(dim, 0, count), grown.narrow(dim, count, grown.shape[dim] - count)


def old_task_predictions(run_dir: Path) -> list:
    run = load_run(run_dir)
    tasks = RunTasks(run.recipe)
    rows = [(1, {"sentence": "the movie was good ."}), (2, {"sentence": "the plot was dull ."})]
    return predict_with_run(run, tasks, prepare_inputs(rows, tasks, "test", task="sst2"), 4, "cpu")


@pytest.mark.parametrize("family", ["seq2seq", "encoder"])
def test_transfer_trains_the_new_task_and_keeps_old_ones_bit_for_bit(
    family: str, source_run, write_recipe: Callable[..., Path]
) -> None:
    source = source_run(family)
    run = train(transfer_recipe(write_recipe, source, family))

    resolved = load_recipe(run / "recipe.resolved.yaml")
    assert resolved.task_names == ["sst2", "rte"]
    assert resolved.tasks[1].max_train_samples == 8
    assert load_run(run).adapter.tasks == ["sst2", "rte"]

    # Every adapter tensor is the source's, except the new task's embedding rows.
    before = load_file(source / "adapter" / "more_adapter.safetensors")
    step_2 = load_file(run / "checkpoints" / "step-2" / "adapter" / "more_adapter.safetensors")
    after = load_file(run / "adapter" / "more_adapter.safetensors")
    grown = [key for key in after if after[key].shape != before[key].shape]
    assert {key for key in grown if "embedding" in key} and "router.fixed_ranks" in grown
    for key, old in before.items():
        if key not in grown:
            assert torch.equal(after[key], old), key
            continue
        kept, added = split_tasks(after[key], old)
        assert torch.equal(kept, old), key
        if "embedding" in key:
            assert not torch.equal(added, split_tasks(step_2[key], old)[1]), key
    if family == "encoder":
        heads, old_heads = (load_file(d / "adapter" / "heads.safetensors") for d in (run, source))
        assert all(torch.equal(heads[key], old_heads[key]) for key in old_heads)
        step_2_heads = load_file(run / "checkpoints" / "step-2" / "adapter" / "heads.safetensors")
        assert not torch.equal(heads["rte.weight"], step_2_heads["rte.weight"])

    assert old_task_predictions(run) == old_task_predictions(source)
    report, old_report = (json.loads((d / "eval.json").read_text()) for d in (run, source))
    assert report["tasks"]["sst2"] == old_report["tasks"]["sst2"]
    assert set(report["tasks"]) == {"sst2", "rte"}


def test_training_the_gates_moves_old_tasks(source_run, write_recipe) -> None:
    source = source_run("seq2seq")
    recipe = transfer_recipe(write_recipe, source, transfer={"train_gates": True})
    before = load_file(source / "adapter" / "more_adapter.safetensors")
    after = load_file(train(recipe) / "adapter" / "more_adapter.safetensors")
    gates = [key for key in before if "gate" in key]
    assert gates and not all(torch.equal(before[key], after[key]) for key in gates)


def test_resolved_recipe_resolves_to_itself(source_run, write_recipe, tmp_path: Path) -> None:
    source = source_run("seq2seq")
    resolved = resolve_transfer(transfer_recipe(write_recipe, source))
    assert resolved.adapter == load_recipe(source / "recipe.resolved.yaml").adapter
    dump_resolved(resolved, tmp_path / "resolved.yaml")
    again = load_recipe(tmp_path / "resolved.yaml")
    assert again == resolved and resolve_transfer(again) == resolved


def test_recipes_that_do_not_fit_the_run(source_run, write_recipe) -> None:
    source = source_run("seq2seq")
    recipe = transfer_recipe(write_recipe, source)
    conflicting = recipe.tasks[0].model_copy(update={"max_train_samples": 3})
    cases = [
        (transfer_recipe(write_recipe, source, tasks=("rte", "sst2")), "sst2 is already in"),
        (transfer_recipe(write_recipe, source, tasks=("sst2",)), "list the new tasks"),
        (transfer_recipe(write_recipe, source, model={"dtype": "bfloat16"}), "differs .* dtype"),
        (transfer_recipe(write_recipe, source, adapter={"r": 2}), "keeps the run's adapter"),
        (recipe.model_copy(update={"tasks": [conflicting]}), "contradicts transfer.shots 8"),
    ]
    for bad, message in cases:
        with pytest.raises(UserError, match=message):
            resolve_transfer(bad)


def test_shots_need_a_run() -> None:
    with pytest.raises(ValueError, match="need transfer.from_run"):
        Recipe.model_validate({"model": {"name": "x"}, "tasks": [{"name": "rte"}],
                               "transfer": {"shots": 16}})  # fmt: skip


def test_source_must_be_a_finished_run(write_recipe, tmp_path: Path) -> None:
    recipe = transfer_recipe(write_recipe, tmp_path / "nothing-here")
    with pytest.raises(UserError, match="is not a run directory"):
        resolve_transfer(recipe)
