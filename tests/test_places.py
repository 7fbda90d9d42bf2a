"""Output places are checked before any work, and the checks leave nothing behind."""

from __future__ import annotations

from pathlib import Path

import pytest

from more_cli.errors import UserError
from more_cli.places import writable_file, writable_folder


def test_a_new_folder_is_accepted_and_not_left_behind(tmp_path: Path) -> None:
    target = tmp_path / "a" / "b" / "c"
    assert writable_folder(target, "--out") == target
    assert not (tmp_path / "a").exists()


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda t: (t / "f").write_text("x") and t / "f", "is a file, not a folder"),
        (lambda t: (t / "f").write_text("x") and t / "f" / "sub" / "x", "lies under the file"),
        (lambda t: Path("/proc/more-test/x"), "cannot be created or written"),
    ],
)
def test_bad_folders_are_one_clear_error(tmp_path: Path, make, message: str) -> None:
    with pytest.raises(UserError, match=message):
        writable_folder(make(tmp_path), "--out")


def test_a_file_may_not_be_its_own_input_or_a_folder(tmp_path: Path) -> None:
    source = tmp_path / "rows.jsonl"
    source.write_text("{}\n")
    link = tmp_path / "link.jsonl"
    link.symlink_to(source)
    for same in (source, link, tmp_path / "." / "rows.jsonl"):
        with pytest.raises(UserError, match="is the input file"):
            writable_file(same, "--output", inputs=[source])
    with pytest.raises(UserError, match="is a folder"):
        writable_file(tmp_path, "--output")
    assert writable_file(tmp_path / "new" / "preds.jsonl", "--output", [source])
    assert source.read_text() == "{}\n" and not (tmp_path / "new").exists()
