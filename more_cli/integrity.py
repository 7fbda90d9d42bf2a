"""SHA-256 manifests: every folder this package writes to load again later (an adapter folder,
a checkpoint, an export) ends with ``SHA256SUMS``, the digest of each file under it.

The manifest is written last, atomically, inside the folder's temporary name, so a folder
that has one was written completely; anything that loads the folder checks every digest first
and names the first file that is missing or changed. The format is the one ``sha256sum``
writes, so ``sha256sum -c SHA256SUMS`` checks a folder without this package.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

from more_cli.atomic import atomic_write_bytes
from more_cli.errors import UserError

MANIFEST = "SHA256SUMS"
_LINE = re.compile(r"^([0-9a-f]{64}) [ *](.+)$")
_CHUNK = 1 << 20


def file_digest(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def write_manifest(folder: Path) -> None:
    """Record the digest of every file under ``folder`` (nested manifests included, its own
    excepted) in ``folder/SHA256SUMS``."""
    files = sorted(
        path.relative_to(folder).as_posix()
        for path in folder.rglob("*")
        if path.is_file() and path != folder / MANIFEST
    )
    text = "".join(f"{file_digest(folder / name)}  {name}\n" for name in files)
    atomic_write_bytes(folder / MANIFEST, text.encode("utf-8"))


def has_manifest(folder: Path) -> bool:
    return (folder / MANIFEST).is_file()


def manifest_problem(folder: Path) -> str | None:
    """Why ``folder`` fails its manifest (no manifest, a damaged one, a file missing, a file
    whose digest changed), or None when every listed file is intact."""
    manifest = folder / MANIFEST
    if not manifest.is_file():
        return f"{folder} has no {MANIFEST}: it was not written completely"
    try:
        lines = manifest.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as error:
        return f"{manifest} is not readable ({error})"
    entries = [_LINE.match(line) for line in lines]
    if not entries or not all(entries):
        return f"{manifest} is damaged (a line is not '<sha256>  <file>')"
    for entry in entries:
        digest, name = entry.groups()
        path = folder / name
        if not path.is_file():
            return f"{path} is missing (listed in {manifest})"
        if file_digest(path) != digest:
            return (
                f"{path} is damaged: its SHA-256 differs from the one in {manifest} "
                "(the file changed after it was written)"
            )
    return None


def verify_manifest(folder: Path) -> None:
    """Raise a :class:`UserError` naming the problem when ``folder`` fails its manifest."""
    problem = manifest_problem(folder)
    if problem is not None:
        raise UserError(problem, details=["restore the folder from a copy, or write it again"])
