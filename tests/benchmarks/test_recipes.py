"""The benchmark recipes (benchmarks/recipes/) are valid recipes as written."""

from __future__ import annotations

from pathlib import Path

import pytest

from more_cli.recipe_io import load_recipe

RECIPES = sorted((Path(__file__).resolve().parents[2] / "benchmarks" / "recipes").glob("*.yaml"))


def test_there_are_benchmark_recipes() -> None:
    assert len(RECIPES) >= 4


@pytest.mark.parametrize("path", RECIPES, ids=lambda path: path.name)
def test_benchmark_recipe_validates(path: Path) -> None:
    recipe = load_recipe(path)
    assert recipe.tasks
    assert all(
        task.source and task.source.startswith("../shared/data/glue/") for task in recipe.tasks
    )
