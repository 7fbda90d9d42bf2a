"""End to end through the CLI: train, interrupt-free resume, eval, and one-line errors."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from transformers.utils import logging as hf_logging
from typer.testing import CliRunner

from more_cli.cli.app import app

runner = CliRunner()


def _more(*args: str) -> tuple[int, str, str]:
    result = runner.invoke(app, [str(a) for a in args])
    return result.exit_code, result.stdout, result.stderr


def test_train_resume_eval(write_recipe: Callable[..., Path], run_dir: Path) -> None:
    recipe = write_recipe(train={"max_steps": 4, "save_every": 2, "eval_every": 2})
    code, out, err = _more("train", recipe, "--set", "train.max_steps=2")
    assert code == 0, err
    assert "run finished" in out
    # The first run finished at step 2; extending it needs a new run, resuming is refused.
    code, _, err = _more("train", run_dir, "--resume")
    assert code == 2 and err.startswith("error: the run in")

    other = run_dir.parent / "other"
    code, _, err = _more("train", recipe, "--output-dir", other)
    assert code == 0, err
    for name in ("recipe.resolved.yaml", "run.json", "metrics.jsonl", "eval.json"):
        assert (other / name).is_file(), name
    assert (other / "adapter" / "more_adapter.safetensors").is_file()
    assert (other / "checkpoints" / "step-4" / "trainer" / "state.json").is_file()

    full = (other / "eval.json").read_bytes()
    code, out, err = _more("eval", other, "--tasks", "rte", "--split", "validation")
    assert code == 0, err
    assert "rte" in out and "average" in out and "eval-validation-rte.json" in out
    report = json.loads((other / "eval-validation-rte.json").read_text())
    assert list(report["tasks"]) == ["rte"] and report["split"] == "validation"

    code, out, err = _more("eval", other, "--checkpoint", "step-4")
    assert code == 0, err
    report = json.loads((other / "eval-val_test-step-4.json").read_text())
    assert report["source"] == "checkpoints/step-4/adapter"
    assert (other / "eval.json").read_bytes() == full  # partial evaluations leave it alone

    code, _, err = _more("eval", other, "--tasks", ",")
    assert code == 2 and "--tasks names no task" in err
    hf_logging.enable_progress_bar()  # as in a fresh process: eval must turn it off itself
    code, out, err = _more("eval", other)  # a full evaluation writes eval.json again
    assert code == 0 and "eval.json" in out, err
    assert "Loading weights" not in err
    hf_logging.enable_progress_bar()
    code, out, err = _more("inspect", other, "--params")
    assert code == 0 and "Loading weights" not in out + err, err


def test_resume_continues_an_unfinished_run(
    write_recipe: Callable[..., Path], run_dir: Path
) -> None:
    recipe = write_recipe(train={"max_steps": 4, "save_every": 2})
    assert _more("train", recipe)[0] == 0
    # Make it look stopped at step 2: drop the later state, mark it interrupted.
    shutil.rmtree(run_dir / "checkpoints" / "step-4")
    shutil.rmtree(run_dir / "adapter")
    info = json.loads((run_dir / "run.json").read_text())
    (run_dir / "run.json").write_text(json.dumps({**info, "status": "interrupted"}))
    code, out, err = _more("train", run_dir, "--resume")
    assert code == 0, err
    assert "resuming" in out and "step-2" in out
    assert json.loads((run_dir / "run.json").read_text())["status"] == "finished"
    assert (run_dir / "adapter" / "more_adapter.safetensors").is_file()


def _one_line_error(code: int, err: str) -> str:
    assert code == 2
    assert err.startswith("error: ") and "Traceback" not in err
    return err.splitlines()[0]


def test_bad_recipe_is_one_line(write_recipe: Callable[..., Path]) -> None:
    recipe = write_recipe(train={"lr": "fast"})
    code, _, err = _more("train", recipe)
    assert "train.lr" in err
    _one_line_error(code, err)


def test_missing_data_file_is_one_line(write_recipe: Callable[..., Path], tmp_path: Path) -> None:
    task = {"name": "mine", "template": "mine text: {text}", "label_words": ["no", "yes"],
            "data_files": {"train": str(tmp_path / "missing.jsonl")}}  # fmt: skip
    recipe = write_recipe()
    code, _, err = _more("train", recipe, "--set", f"tasks=[{json.dumps(task)}]")
    assert "missing.jsonl" in _one_line_error(code, err)


def test_unknown_task_is_one_line(write_recipe: Callable[..., Path]) -> None:
    code, _, err = _more("train", write_recipe(), "--set", "tasks.0.name=sst3")
    assert "sst3" in _one_line_error(code, err)


def test_every_help_has_an_example() -> None:
    for command in ([], ["train"], ["eval"]):
        result = runner.invoke(app, [*command, "--help"])
        assert result.exit_code == 0
        assert "Example" in result.stdout


@pytest.mark.slow
def test_python_dash_m_runs(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "more_cli", "eval", str(tmp_path)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 2
    assert "error: " in result.stderr and "Traceback" not in result.stderr
