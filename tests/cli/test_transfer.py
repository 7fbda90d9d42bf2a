"""End to end through the CLI: transfer a tiny run to a new task, then eval, predict, merge
and inspect the run that holds old and new tasks."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
from typer.testing import CliRunner

from more_cli.cli.app import app

runner = CliRunner()


def _more(*args: object, stdin: str | None = None) -> tuple[int, str, str]:
    result = runner.invoke(app, [str(a) for a in args], input=stdin, env={"COLUMNS": "160"})
    return result.exit_code, result.stdout, result.stderr


def test_transfer_then_use_the_new_run(
    write_recipe: Callable[..., Path], run_dir: Path, glue_data: Path
) -> None:
    code, _, err = _more("train", write_recipe(tasks=("sst2",)))
    assert code == 0, err
    target = run_dir.parent / "rte-8shot"
    recipe = write_recipe(
        tasks=("rte",), transfer={"from_run": str(run_dir)}, output_dir=str(target)
    )
    code, out, err = _more("train", recipe, "--set", "transfer.shots=8")
    assert code == 0, err
    assert json.loads((target / "run.json").read_text())["tasks"] == ["sst2", "rte"]

    code, out, err = _more("eval", target)
    assert code == 0, err
    assert "sst2" in out and "rte" in out

    rows = [
        {"task": "sst2", "sentence": "the film was great ."},
        {"task": "rte", "sentence1": "the plot was good .", "sentence2": "the story was good ."},
    ]
    stdin = "".join(json.dumps(row) + "\n" for row in rows)
    code, out, err = _more("predict", target, "--task-field", "task", stdin=stdin)
    assert code == 0, err
    records = [json.loads(line) for line in out.splitlines()]
    assert [r["task"] for r in records] == ["sst2", "rte"]
    assert records[1]["prediction"] in ("entailment", "not_entailment")
    code, old, err = _more("predict", run_dir, "-t", "sst2", stdin=stdin.splitlines()[0])
    assert code == 0, err
    # The old task answers as before: same label; probabilities equal up to the float
    # rounding of batching the row with a longer rte row (padding).
    old_record = json.loads(old)
    assert old_record["prediction"] == records[0]["prediction"]
    for label, probability in old_record["probabilities"].items():
        assert records[0]["probabilities"][label] == pytest.approx(probability, abs=1e-6)

    code, out, err = _more("merge", target, "--task", "rte")
    assert code == 0, err
    assert "verification ok" in out
    code, out, err = _more("inspect", target, "--out", target / "figures")
    assert code == 0, err
    assert json.loads((target / "figures" / "inspection.json").read_text())["tasks"] == [
        "sst2",
        "rte",
    ]


def test_transfer_errors_are_one_line(write_recipe: Callable[..., Path], tmp_path: Path) -> None:
    recipe = write_recipe(tasks=("rte",), transfer={"from_run": str(tmp_path / "missing")})
    code, _, err = _more("train", recipe)
    assert code == 2 and err.startswith("error: ") and "is not a run directory" in err
