"""Where a task's raw rows come from: the hub, a local folder, explicit files, or a generator.

Local files are read with plain readers (not ``datasets``) so that errors can name the file and
the row: ``.jsonl`` (one object per line), ``.json`` (a list of objects, or JSON lines),
``.csv`` (header row; every value is a string) and ``.parquet``. Nested columns (the
``choices`` of ARC / OpenBookQA) need JSON or parquet.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from more_cli.errors import UserError

Row = dict[str, Any]
EXTENSIONS = (".jsonl", ".json", ".csv", ".parquet")


class DataSource(Protocol):
    """Gives the raw rows of a split (``train`` or ``validation``)."""

    def rows(self, split: str) -> tuple[str, list[Row]]:
        """Return ``(origin, rows)``; ``origin`` names the file or dataset in error messages."""
        ...


@dataclass(frozen=True)
class HubSource:
    """A Hugging Face hub dataset; ``split_names`` maps our split names to the hub's."""

    path: str
    config: str | None = None
    split_names: Mapping[str, str] = field(default_factory=dict)

    def rows(self, split: str) -> tuple[str, list[Row]]:
        from datasets import load_dataset

        name = self.split_names.get(split, split)
        dataset = load_dataset(self.path, self.config, split=name)
        return f"{self.path}/{self.config or ''} [{name}]", dataset.to_list()


@dataclass(frozen=True)
class DirectorySource:
    """A folder holding ``<split>.jsonl|json|csv|parquet``; ``aliases`` lists other accepted
    file stems per split (e.g. ``validation_matched`` for MNLI)."""

    directory: Path
    aliases: Mapping[str, tuple[str, ...]] = field(default_factory=dict)

    def rows(self, split: str) -> tuple[str, list[Row]]:
        stems = (split, *self.aliases.get(split, ()))
        for stem in stems:
            for extension in EXTENSIONS:
                path = self.directory / f"{stem}{extension}"
                if path.is_file():
                    return str(path), read_rows(path)
        expected = ", ".join(f"{stems[0]}{extension}" for extension in EXTENSIONS)
        raise UserError(f"no {split} file in {self.directory}: expected one of {expected}")


@dataclass(frozen=True)
class FileSource:
    """Explicit ``{split: file}`` paths (a user-defined task's ``data_files``)."""

    files: Mapping[str, str]

    def rows(self, split: str) -> tuple[str, list[Row]]:
        if split not in self.files:
            raise UserError(
                f"data_files has no {split!r} entry; add data_files.{split}: path/to/file"
            )
        path = Path(self.files[split])
        return str(path), read_rows(path)


@dataclass(frozen=True)
class GeneratedSource:
    """Rows made by a function of the split (the synthetic demo suite)."""

    label: str
    generate: Callable[[str], list[Row]]

    def rows(self, split: str) -> tuple[str, list[Row]]:
        return f"{self.label} [{split}]", self.generate(split)


def read_rows(path: Path) -> list[Row]:
    """Read a ``.jsonl``, ``.json``, ``.csv`` or ``.parquet`` file into a list of row dicts."""
    if not path.is_file():
        raise UserError(f"data file not found: {path}")
    suffix = path.suffix.lower()
    if suffix not in EXTENSIONS:
        raise UserError(f"{path}: unsupported file type; use one of {', '.join(EXTENSIONS)}")
    try:
        rows = _read_file(path, suffix)
    except UnicodeDecodeError as error:
        raise UserError(
            f"{path} is not UTF-8 text (bad byte at offset {error.start}); save it as UTF-8"
        ) from None
    except (OSError, ValueError, csv.Error) as error:  # pyarrow's errors are among these
        raise UserError(f"{path} cannot be read as {suffix[1:]} ({error})") from None
    for number, row in enumerate(rows, start=1):
        if not isinstance(row, dict):
            raise UserError(f"{path}, row {number}: expected an object with named columns")
    return rows


def _read_file(path: Path, suffix: str) -> list[Any]:
    if suffix == ".jsonl":
        return _read_json_lines(path)
    if suffix == ".json":
        return _read_json(path)
    if suffix == ".csv":
        with path.open(newline="", encoding="utf-8") as handle:
            return list(csv.DictReader(handle))
    import pyarrow.parquet as pq

    return pq.read_table(path).to_pylist()


def _read_json_lines(path: Path) -> list[Any]:
    rows = []
    with path.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as error:
                raise UserError(f"{path}, line {number}: invalid JSON ({error.msg})") from None
    return rows


def _read_json(path: Path) -> list[Any]:
    text = path.read_text(encoding="utf-8")
    try:
        data = json.loads(text)
    except json.JSONDecodeError:
        return _read_json_lines(path)  # JSON lines saved as .json, as `datasets` accepts
    if not isinstance(data, list):
        raise UserError(f"{path}: expected a list of objects (or one object per line)")
    return data
