"""``more tasks``: the registry, discoverable from the command line."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from more_cli.cli.app import app
from more_cli.tasks import TASK_NAMES
from more_cli.tasks.registry import task_info

runner = CliRunner()


def _more(*args: str) -> tuple[int, str, str]:
    result = runner.invoke(app, list(args), env={"COLUMNS": "80"})
    return result.exit_code, result.stdout, result.stderr


def test_the_list_names_every_task_and_fits_80_columns() -> None:
    code, out, err = _more("tasks")
    assert code == 0, err
    assert all(name in out for name in TASK_NAMES)
    assert "unacceptable" in out and "score 0-5" in out
    assert max(len(line) for line in out.splitlines()) <= 80


def test_one_task_shows_what_its_rows_hold() -> None:
    code, out, err = _more("tasks", "demo_sentiment")
    assert code == 0, err
    assert "review" in out and "negative, positive" in out and "generated" in out
    row = json.loads(out.split("predict row", 1)[1].strip().splitlines()[0])
    assert row == {"review": "<review>"}


def test_an_unknown_task_is_one_error_line_with_a_suggestion() -> None:
    code, _, err = _more("tasks", "rtee")
    assert code == 2 and err.startswith("error: unknown task 'rtee'; did you mean 'rte'?")


def test_every_builtin_formats_its_placeholder_row_with_its_prefix() -> None:
    for name in TASK_NAMES:
        info = task_info(name)
        assert info.input_example.startswith(f"{name} "), name
        assert all(f"<{column}>" in info.input_example for column in info.columns
                   if column != "choices"), name  # fmt: skip
