"""Every shipped recipe validates, says how to run it, and names tasks the registry knows."""

from __future__ import annotations

from pathlib import Path

import pytest

from more_cli.recipe_io import dump_resolved, load_recipe
from more_cli.tasks.prepare import expand
from more_cli.tasks.registry import DEMO_TASKS, TASK_NAMES

RECIPES = sorted((Path(__file__).resolve().parents[1] / "recipes").glob("*.yaml"))


def test_the_expected_recipes_ship() -> None:
    names = {path.name for path in RECIPES}
    assert {"demo.yaml", "glue_t5.yaml", "glue_local.yaml", "commonsense_llama.yaml"} <= names


@pytest.mark.parametrize("path", RECIPES, ids=lambda path: path.name)
def test_recipe_validates_and_round_trips(path: Path, tmp_path: Path) -> None:
    recipe = load_recipe(path)
    assert set(recipe.task_names) <= set(TASK_NAMES)
    dump_resolved(recipe, tmp_path / "resolved.yaml")
    assert load_recipe(tmp_path / "resolved.yaml") == recipe


@pytest.mark.parametrize("path", RECIPES, ids=lambda path: path.name)
def test_recipe_header_shows_how_to_run_it(path: Path) -> None:
    header = path.read_text(encoding="utf-8").split("\n\n", 1)[0]
    assert all(line.startswith("#") for line in header.splitlines())
    assert f"more train recipes/{path.name}\n" in header
    assert f"more train recipes/{path.name} --set " in header


def test_demo_recipe_is_the_offline_demo() -> None:
    recipe = load_recipe(RECIPES[0].parent / "demo.yaml")
    assert recipe.model.name == "demo:minilm"
    assert tuple(recipe.task_names) == DEMO_TASKS
    assert all(task.source is None for task in recipe.tasks)
    assert recipe.train.max_steps is not None and recipe.train.max_steps <= 200
    assert recipe.data.max_source_length <= 64


def test_glue_local_reads_the_folders_more_data_prepare_writes() -> None:
    recipe = load_recipe(RECIPES[0].parent / "glue_local.yaml")
    assert [task.source for task in recipe.tasks] == [
        f"data/glue/{name}" for name in recipe.task_names
    ]
    assert set(recipe.task_names) == set(expand(["glue"]))
