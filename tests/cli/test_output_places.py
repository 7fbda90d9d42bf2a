"""Output places through the CLI: a file, a path under a file, an unwritable place or the
input itself is one `error:` line, exit 2, before any work, and nothing is written."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path

from typer.testing import CliRunner

from more_cli.cli.app import app

runner = CliRunner()


def _more(*args: object) -> tuple[int, str]:
    result = runner.invoke(app, [str(a) for a in args], env={"COLUMNS": "160"})
    return result.exit_code, result.stderr


def _one_error(code: int, err: str, fragment: str) -> None:
    lines = err.strip().splitlines()
    assert code == 2 and lines and lines[0].startswith("error: ") and fragment in err, err
    assert "Traceback" not in err


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_train_refuses_bad_output_directories(
    write_recipe: Callable[..., Path], tmp_path: Path
) -> None:
    recipe = write_recipe()
    a_file = tmp_path / "a-file"
    a_file.write_text("keep me")
    for out, fragment in [
        (a_file, "is a file, not a folder"),
        (a_file / "run", "lies under the file"),
        (Path("/proc/more-test-run"), "cannot be created or written"),
    ]:
        _one_error(*_more("train", recipe, "--output-dir", out), fragment)
    assert a_file.read_text() == "keep me"


def test_merge_inspect_and_predict_check_their_outputs_first(
    write_recipe: Callable[..., Path], run_dir: Path, glue_data: Path, tmp_path: Path
) -> None:
    code, err = _more("train", write_recipe(train={"max_steps": 2}))
    assert code == 0, err
    a_file = tmp_path / "a-file"
    a_file.write_text("keep me")
    _one_error(*_more("merge", run_dir, "--task", "rte", "--out", a_file), "is a file")
    _one_error(*_more("inspect", run_dir, "--out", a_file / "figures"), "lies under the file")

    rows = tmp_path / "rows.jsonl"
    rows.write_bytes((glue_data / "rte" / "validation.jsonl").read_bytes())
    before = _digest(rows)
    _one_error(*_more("predict", run_dir, "-t", "rte", "-i", rows, "-o", rows), "input file")
    _one_error(*_more("predict", run_dir, "-t", "rte", "-i", rows, "-o", tmp_path), "a folder")
    binary = tmp_path / "binary.jsonl"
    binary.write_bytes(bytes(range(128, 256)))
    _one_error(*_more("predict", run_dir, "-t", "rte", "-i", binary), "is not UTF-8 text")
    assert _digest(rows) == before and a_file.read_text() == "keep me"
    assert not (run_dir / "exports").exists()

    out = tmp_path / "new" / "preds.jsonl"  # a missing folder is created for the output
    code, err = _more("predict", run_dir, "-t", "rte", "-i", rows, "-o", out)
    assert code == 0 and out.read_text().count("\n") == 16, err
