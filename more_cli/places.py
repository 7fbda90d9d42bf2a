"""Output places, checked before any work: a folder or file a command will write must be
creatable and writable, and a file it writes must not be one of its inputs.

The checks create nothing that stays: a folder made to try writing in is removed again.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Sequence
from pathlib import Path

from more_cli.errors import UserError


def writable_folder(path: Path, what: str) -> Path:
    """Refuse a folder ``path`` that is a file, lies under a file, or cannot be created or
    written in. ``what`` names it in the error (``--out``, ``output directory``)."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise UserError(f"{what} {path} is a file, not a folder; give a folder path")
    missing = [p for p in (path, *path.parents) if not p.exists()]
    existing = path.parents[len(missing) - 1] if missing else path
    if missing and not existing.is_dir():
        raise UserError(f"{what} {path} lies under the file {existing}; give a folder path")
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as error:
        reason = error.strerror or type(error).__name__
        raise UserError(
            f"{what} {path} cannot be created or written ({reason}); choose another place"
        ) from None
    finally:
        for created in missing:  # deepest first
            try:
                created.rmdir()
            except OSError:
                break
    return path


def writable_file(path: Path, what: str, inputs: Sequence[Path | None] = ()) -> Path:
    """Refuse a file ``path`` that is a folder, one of ``inputs`` (the same path or the same
    file through a link), or whose folder cannot be created or written in."""
    path = Path(path)
    if path.is_dir():
        raise UserError(f"{what} {path} is a folder; give a file path")
    for source in inputs:
        if source is not None and _same_file(path, Path(source)):
            raise UserError(
                f"{what} {path} is the input file {source}; writing it would destroy the "
                "input: give another file"
            )
    writable_folder(path.parent, f"the folder of {what}")
    return path


def _same_file(a: Path, b: Path) -> bool:
    if a.exists() and b.exists():
        return os.path.samefile(a, b)
    return a.resolve() == b.resolve()
