"""The run directory: layout, atomic writes, run status and checkpoint bookkeeping.

Layout (see docs/architecture.md, "Run directory")::

    <run>/recipe.resolved.yaml     every key, defaults filled in
    <run>/run.json                 status, tasks, family, base model, versions
    <run>/metrics.jsonl            one JSON object per log step and per evaluation
    <run>/adapter/                 the final adapter (best if evaluation ran, else last)
    <run>/checkpoints/step-N/      adapter/ + trainer/ (optimizer, scheduler, sampler, RNG)
    <run>/eval.json                the last evaluation written by training or `more eval`

Every file is written to a temporary name in its own folder, flushed to disk and renamed
into place; folders are built as ``.tmp-*`` siblings, flushed and renamed, so a crash never
leaves half a file or half a checkpoint under its final name. A checkpoint is complete once its
``SHA256SUMS`` manifest exists (written last, inside the temporary folder; see
:mod:`more_cli.integrity`); checkpoints of older versions carry an empty ``COMPLETE`` marker
instead and are read without digests.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import re
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any, Literal

from more_cli.atomic import atomic_write_bytes, umask
from more_cli.errors import UserError
from more_cli.integrity import has_manifest, manifest_problem, write_manifest

FORMAT_VERSION = 1
LEGACY_COMPLETE_MARKER = "COMPLETE"  # before manifests: an empty file written last
RunStatus = Literal["running", "finished", "failed", "interrupted"]
_STEP_DIR = re.compile(r"^step-(\d+)$")


@dataclass(frozen=True)
class RunDir:
    """Paths inside one run directory."""

    root: Path

    @property
    def recipe(self) -> Path:
        return self.root / "recipe.resolved.yaml"

    @property
    def info(self) -> Path:
        return self.root / "run.json"

    @property
    def metrics(self) -> Path:
        return self.root / "metrics.jsonl"

    @property
    def adapter(self) -> Path:
        return self.root / "adapter"

    @property
    def checkpoints(self) -> Path:
        return self.root / "checkpoints"

    @property
    def eval(self) -> Path:
        return self.root / "eval.json"

    def checkpoint(self, step: int) -> Path:
        return self.checkpoints / f"step-{step}"


# ---------------------------------------------------------------------------------------------
# Atomic writes


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` through a temporary file in the same folder + rename."""
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: Path, data: Any) -> None:
    atomic_write_text(path, json.dumps(data, indent=2, sort_keys=False) + "\n")


def read_json(path: Path) -> Any:
    """Parse a JSON file this package wrote; a damaged file or one written by a newer version
    (``format_version`` above :data:`FORMAT_VERSION`) is a :class:`UserError` naming it."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(f"{path} not found; the run directory is incomplete") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise UserError(f"{path} is not readable JSON ({error}); the file is damaged") from None
    version = data.get("format_version", FORMAT_VERSION) if isinstance(data, dict) else 0
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise UserError(
            f"{path} has format version {version!r}; this more understands up to "
            f"{FORMAT_VERSION}: upgrade more (pip install -U more-cli)"
        )
    return data


@contextlib.contextmanager
def atomic_directory(final: Path) -> Iterator[Path]:
    """Yield a ``.tmp-*`` folder next to ``final``; on success it replaces ``final``.

    On an exception the temporary folder is removed and ``final`` is left untouched.
    """
    final.parent.mkdir(parents=True, exist_ok=True)
    temporary = Path(tempfile.mkdtemp(prefix=f".tmp-{final.name}-", dir=final.parent))
    os.chmod(temporary, 0o777 & ~umask())  # as mkdir would make it, not mkdtemp's 0700
    try:
        yield temporary
        _fsync_tree(temporary)
        if final.exists():
            # Move the old folder aside first: a crash between the two renames leaves the new
            # content under a temporary name, never a mix of old and new.
            stale = Path(tempfile.mkdtemp(prefix=f".tmp-old-{final.name}-", dir=final.parent))
            os.replace(final, stale / final.name)
            try:
                os.replace(temporary, final)
            except BaseException:
                os.replace(stale / final.name, final)  # the old version back under its name
                stale.rmdir()
                raise
            shutil.rmtree(stale, ignore_errors=True)
        else:
            os.replace(temporary, final)
        _fsync_directory(final.parent)
    except BaseException:
        shutil.rmtree(temporary, ignore_errors=True)
        raise


def _fsync_tree(root: Path) -> None:
    """Flush every file and folder under ``root`` to disk, so that after a power cut the
    renamed folder holds whole files (a process crash needs no fsync: the kernel has them)."""
    for folder, _, files in os.walk(root):
        for name in files:
            with open(os.path.join(folder, name), "rb") as handle:
                os.fsync(handle.fileno())
        _fsync_directory(Path(folder))


def _fsync_directory(path: Path) -> None:
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def append_jsonl(path: Path, record: dict[str, Any]) -> None:
    """Append one JSON line with a single ``write`` call (appends of one line are atomic)."""
    line = json.dumps(record) + "\n"
    with path.open("a", encoding="utf-8") as handle:
        handle.write(line)
        handle.flush()


def truncate_metrics(path: Path, after_step: int) -> None:
    """Drop metric records logged after ``after_step`` (before resuming from that step).

    Lines that are not JSON objects (a line cut short by a power cut) are dropped too.
    """
    if not path.exists():
        return
    kept = []
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(record, dict) and record.get("step", 0) <= after_step:
            kept.append(line)
    atomic_write_text(path, "".join(f"{line}\n" for line in kept))


# ---------------------------------------------------------------------------------------------
# run.json


def _versions() -> dict[str, str]:
    found = {"python": platform.python_version()}
    for package in ("more-cli", "torch", "transformers", "accelerate", "peft", "bitsandbytes"):
        with contextlib.suppress(PackageNotFoundError):
            found[package] = version(package)
    return found


def write_run_info(run: RunDir, *, status: RunStatus, **fields: Any) -> dict[str, Any]:
    """Create or update ``run.json``; ``fields`` are merged into what is there."""
    info = read_json(run.info) if run.info.exists() else {"format_version": FORMAT_VERSION}
    if "created" not in info:
        info["created"] = _now()
        info["versions"] = _versions()
    info.update(fields)
    info["status"] = status
    info["updated"] = _now()
    atomic_write_json(run.info, info)
    return info


def read_run_info(run: RunDir) -> dict[str, Any] | None:
    return read_json(run.info) if run.info.exists() else None


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


# ---------------------------------------------------------------------------------------------
# Checkpoints


def is_complete(checkpoint: Path) -> bool:
    return has_manifest(checkpoint) or (checkpoint / LEGACY_COMPLETE_MARKER).is_file()


def mark_complete(directory: Path) -> None:
    """Seal a finished checkpoint folder: its manifest, written last."""
    write_manifest(directory)


def checkpoint_problem(checkpoint: Path) -> str | None:
    """Why a complete checkpoint cannot be trusted (a file missing or changed), else None.
    Checkpoints from before manifests have no digests to check."""
    return manifest_problem(checkpoint) if has_manifest(checkpoint) else None


def list_checkpoints(run: RunDir) -> list[tuple[int, Path]]:
    """Complete checkpoints as ``(step, path)``, oldest first; partial ones are ignored."""
    if not run.checkpoints.is_dir():
        return []
    found = []
    for child in run.checkpoints.iterdir():
        match = _STEP_DIR.match(child.name)
        if match and child.is_dir() and is_complete(child):
            found.append((int(match.group(1)), child))
    return sorted(found)


def latest_checkpoint(run: RunDir) -> Path | None:
    checkpoints = list_checkpoints(run)
    return checkpoints[-1][1] if checkpoints else None


def newest_good_checkpoint(run: RunDir) -> tuple[Path | None, list[str]]:
    """The newest complete checkpoint that passes its manifest, and for each newer one that
    does not, the reason it was passed over."""
    passed_over = []
    for _, path in reversed(list_checkpoints(run)):
        problem = checkpoint_problem(path)
        if problem is None:
            return path, passed_over
        passed_over.append(f"{path.name} skipped: {problem}")
    return None, passed_over


def prune_checkpoints(run: RunDir, keep_last: int, best_step: int | None) -> list[Path]:
    """Delete complete checkpoints beyond the last ``keep_last`` and the best one.

    The newest complete checkpoint is always kept (``keep_last`` is at least 1), so the
    only good checkpoint is never removed. Leftover ``.tmp-*`` folders from crashed writes
    are removed too. Returns the deleted checkpoint folders.
    """
    checkpoints = list_checkpoints(run)
    keep = {step for step, _ in checkpoints[-max(keep_last, 1) :]}
    if best_step is not None:
        keep.add(best_step)
    deleted = [path for step, path in checkpoints if step not in keep]
    for path in deleted:
        shutil.rmtree(path)
    for leftover in run.checkpoints.glob(".tmp-*"):
        shutil.rmtree(leftover, ignore_errors=True)
    return deleted


def resolve_checkpoint(run: RunDir, name: str) -> Path:
    """``step-N`` (or ``N``) → its complete checkpoint folder."""
    step_name = name if name.startswith("step-") else f"step-{name}"
    path = run.checkpoints / step_name
    if not _STEP_DIR.match(step_name) or not is_complete(path):
        available = ", ".join(p.name for _, p in list_checkpoints(run)) or "none"
        raise UserError(
            f"{run.root} has no complete checkpoint {step_name!r}",
            details=[f"complete checkpoints: {available}"],
        )
    return path
