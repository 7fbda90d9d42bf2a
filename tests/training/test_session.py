"""The session reads and checks every split the run will use before the model loads."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from more_cli.errors import UserError
from more_cli.recipe_io import load_recipe
from more_cli.training import session as training_session
from more_cli.training.loop import train


def test_bad_validation_rows_and_missing_tasks_stop_before_the_model_loads(
    write_recipe: Callable[..., Path], glue_data: Path, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    data = tmp_path / "glue"
    shutil.copytree(glue_data, data)
    lines = (data / "rte" / "validation.jsonl").read_text().splitlines()
    lines[3] = "{not json"
    (data / "rte" / "validation.jsonl").write_text("\n".join(lines) + "\n")
    (data / "sst2" / "validation.jsonl").unlink()
    recipe = load_recipe(write_recipe(train={"max_steps": 2, "save_every": 10}))
    tasks = [task.model_copy(update={"source": str(data / task.name)}) for task in recipe.tasks] + [
        recipe.tasks[0].model_copy(update={"name": "qnli", "source": "no/such/folder"})
    ]
    recipe = recipe.model_copy(update={"tasks": tasks})

    def must_not_load(*args: object, **kwargs: object) -> None:
        raise AssertionError("the model loaded before the data was checked")

    monkeypatch.setattr(training_session, "load_base", must_not_load)
    with pytest.raises(UserError, match="3 task\\(s\\) cannot be read") as error:
        train(recipe)
    sst2, rte, qnli = error.value.details
    assert sst2.startswith("no validation file in") and sst2.split(":")[0].endswith("sst2")
    assert "rte/validation.jsonl, line 4: invalid JSON" in rte
    resolved = Path("no/such/folder").resolve()
    assert qnli == f"task qnli: source folder not found: no/such/folder (= {resolved})"
    assert not Path(recipe.output_dir).exists()
