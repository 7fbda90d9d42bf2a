"""Run directory: atomic writes, checkpoint listing and retention."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

from more_cli.errors import UserError
from more_cli.rundir import (
    RunDir,
    append_jsonl,
    atomic_directory,
    atomic_write_json,
    latest_checkpoint,
    list_checkpoints,
    mark_complete,
    prune_checkpoints,
    read_run_info,
    resolve_checkpoint,
    truncate_metrics,
    write_run_info,
)


def _checkpoint(run: RunDir, step: int, *, complete: bool = True) -> Path:
    path = run.checkpoint(step)
    path.mkdir(parents=True)
    (path / "weights.bin").write_text(str(step))
    if complete:
        mark_complete(path)
    return path


def test_atomic_write_leaves_no_temporary_files(tmp_path: Path) -> None:
    target = tmp_path / "out.json"
    atomic_write_json(target, {"a": 1})
    atomic_write_json(target, {"a": 2})
    assert json.loads(target.read_text()) == {"a": 2}
    assert [p.name for p in tmp_path.iterdir()] == ["out.json"]


def test_atomic_write_failure_keeps_old_content(tmp_path: Path) -> None:
    target = tmp_path / "out.json"
    atomic_write_json(target, {"a": 1})
    with pytest.raises(TypeError):
        atomic_write_json(target, {"a": object()})
    assert json.loads(target.read_text()) == {"a": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["out.json"]


def test_atomic_directory_replaces_only_on_success(tmp_path: Path) -> None:
    final = tmp_path / "adapter"
    with atomic_directory(final) as tmp:
        (tmp / "x").write_text("old")
    with pytest.raises(RuntimeError), atomic_directory(final) as tmp:
        (tmp / "x").write_text("half")
        raise RuntimeError("crash")
    assert (final / "x").read_text() == "old"
    with atomic_directory(final) as tmp:
        (tmp / "x").write_text("new")
    assert (final / "x").read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adapter"]


def test_incomplete_checkpoints_are_ignored(tmp_path: Path) -> None:
    run = RunDir(tmp_path)
    _checkpoint(run, 2)
    _checkpoint(run, 4, complete=False)
    (run.checkpoints / ".tmp-step-6-abc").mkdir()
    assert [step for step, _ in list_checkpoints(run)] == [2]
    assert latest_checkpoint(run) == run.checkpoint(2)
    with pytest.raises(UserError, match="step-4"):
        resolve_checkpoint(run, "step-4")
    assert resolve_checkpoint(run, "2") == run.checkpoint(2)


def test_retention_keeps_last_and_best(tmp_path: Path) -> None:
    run = RunDir(tmp_path)
    for step in (1, 2, 3, 4, 5):
        _checkpoint(run, step)
    _checkpoint(run, 6, complete=False)
    prune_checkpoints(run, keep_last=2, best_step=2)
    assert [step for step, _ in list_checkpoints(run)] == [2, 4, 5]
    # An incomplete newer one never counts as "the last": the good ones stay.
    assert run.checkpoint(6).exists()


def test_retention_never_deletes_the_only_good_checkpoint(tmp_path: Path) -> None:
    run = RunDir(tmp_path)
    _checkpoint(run, 3)
    _checkpoint(run, 5, complete=False)
    prune_checkpoints(run, keep_last=0, best_step=None)
    assert latest_checkpoint(run) == run.checkpoint(3)


def test_run_info_updates_and_keeps_fields(tmp_path: Path) -> None:
    run = RunDir(tmp_path)
    write_run_info(run, status="running", tasks=["a"], family="seq2seq")
    info = write_run_info(run, status="finished", step=7)
    assert info["status"] == "finished"
    assert info["tasks"] == ["a"] and info["step"] == 7
    assert info["format_version"] == 1 and "torch" in info["versions"]
    assert read_run_info(run) == info


def test_truncate_metrics_drops_records_after_a_step(tmp_path: Path) -> None:
    path = tmp_path / "metrics.jsonl"
    for step in (1, 2, 3, 4):
        append_jsonl(path, {"step": step, "loss": 1.0})
    truncate_metrics(path, after_step=2)
    assert [json.loads(line)["step"] for line in path.read_text().splitlines()] == [1, 2]


def test_written_files_and_folders_honour_the_umask(tmp_path: Path) -> None:
    """A serving process of another user can read what more writes (not mkstemp's 0600)."""
    previous = os.umask(0o022)
    try:
        with atomic_directory(tmp_path / "export") as folder:
            (folder / "weights.bin").write_bytes(b"x")
        atomic_write_json(tmp_path / "export" / "info.json", {"a": 1})
    finally:
        os.umask(previous)
    assert stat.S_IMODE((tmp_path / "export").stat().st_mode) == 0o755
    assert stat.S_IMODE((tmp_path / "export" / "info.json").stat().st_mode) == 0o644
