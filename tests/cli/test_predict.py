"""End to end through the CLI: `more predict` on a tiny trained run, against `more eval`."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
from typer.testing import CliRunner

from more_cli.cli.app import app
from more_cli.recipe_io import load_recipe
from more_cli.rundir import RunDir
from more_cli.tasks import compute_metrics, get_task

runner = CliRunner()


def _more(*args: object, stdin: str | None = None) -> tuple[int, str, str]:
    result = runner.invoke(app, [str(a) for a in args], input=stdin)
    return result.exit_code, result.stdout, result.stderr


def _records(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines()]


@pytest.fixture
def trained(write_recipe: Callable[..., Path], run_dir: Path) -> Path:
    """A tiny T5 run on sst2 + rte, trained through the real CLI."""
    code, _, err = _more("train", write_recipe(train={"max_steps": 4}))
    assert code == 0, err
    return run_dir


def test_predictions_agree_with_eval(trained: Path, glue_data: Path, tmp_path: Path) -> None:
    code, _, err = _more("eval", trained, "--tasks", "rte", "--split", "validation")
    assert code == 0, err
    reported = json.loads((trained / "eval-validation-rte.json").read_text())["tasks"]["rte"]

    rows = glue_data / "rte" / "validation.jsonl"
    out = tmp_path / "preds.jsonl"
    code, stdout, err = _more("predict", trained, "--task", "rte", "--input", rows, "-o", out)
    assert code == 0, err
    assert stdout == "" and "wrote 16 predictions" in err
    records = _records(out.read_text())
    assert [r["line"] for r in records] == list(range(1, 17))
    assert all(sum(r["probabilities"].values()) == pytest.approx(1.0) for r in records)

    task = get_task(load_recipe(RunDir(trained).recipe).tasks[1])
    labels = [json.loads(line)["label"] for line in rows.read_text().splitlines()]
    assert compute_metrics(task, [r["prediction_id"] for r in records], labels) == reported


def test_mixed_file_equals_one_call_per_task(
    trained: Path, glue_data: Path, tmp_path: Path
) -> None:
    tasks = ("sst2", "rte")
    rows = {t: (glue_data / t / "validation.jsonl").read_text().splitlines()[:5] for t in tasks}
    single = {}
    for task in tasks:  # one call per task, rows on stdin
        code, stdout, err = _more("predict", trained, "-t", task, stdin="\n".join(rows[task]))
        assert code == 0, err
        single[task] = _records(stdout)
    mixed = tmp_path / "mixed.jsonl"
    mixed.write_text(
        "".join(
            json.dumps({**json.loads(row), "task": task}) + "\n"
            for pair in zip(*rows.values(), strict=True)
            for task, row in zip(tasks, pair, strict=True)
        )
    )
    code, stdout, err = _more("predict", trained, "--task-field", "task", "-i", mixed)
    assert code == 0, err
    records = _records(stdout)
    assert [r["line"] for r in records] == list(range(1, 11))
    for task in tasks:
        mine = [r for r in records if r["task"] == task]
        assert [r["prediction"] for r in mine] == [r["prediction"] for r in single[task]]
        for ours, alone in zip(mine, single[task], strict=True):
            assert ours["probabilities"] == pytest.approx(alone["probabilities"], abs=1e-5)


@pytest.mark.parametrize(
    ("args", "stdin", "message"),
    [
        (("-t", "rte"), '{"sentence1": "a ."}\n', "stdin: 1 bad row(s); line 1: missing column"),
        (("-t", "rte"), '\n{"sentence1": "a .", "sentence2": "b ."}\n{oops\n', "line 3: invalid"),
        (("--task-field", "task"), '{"task": "cola", "sentence": "a ."}', "no task 'cola'"),
        (("-t", "cola"), "{}", "this run has no task 'cola'"),
        (("-t", "rte", "--device", "gpu0"), '{"sentence1": "a .", "sentence2": "b ."}', "device"),
    ],
)
def test_errors_are_one_line(trained: Path, args: tuple, stdin: str, message: str) -> None:
    code, stdout, err = _more("predict", trained, *args, stdin=stdin)
    assert code == 2 and stdout == ""
    assert err.startswith("error: ") and message in err.splitlines()[0]
