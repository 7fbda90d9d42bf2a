"""``more data prepare``: download built-in tasks from the hub once and write them as the
local folders recipes read (``<out>/<task>/{train,validation}.jsonl``, the hub's columns
and label ids), so a run needs no network and a recipe can point ``source:`` at them.

``glue`` stands for its eight tasks. ``hub`` replaces the hub dataset of every task (a
mirror, or a local copy of the dataset repository with the same configs).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path

from more_cli.atomic import atomic_write_bytes
from more_cli.errors import UserError
from more_cli.places import writable_folder
from more_cli.rundir import atomic_directory
from more_cli.tasks.registry import GLUE_TASKS, hub_source
from more_cli.tasks.sources import HubSource

GROUPS = {"glue": GLUE_TASKS}
SPLITS = ("train", "validation")


def expand(names: Sequence[str]) -> list[str]:
    """Task names with every group (``glue``) spelled out, each name once, in order."""
    return list(dict.fromkeys(t for name in names for t in GROUPS.get(name, (name,))))


def prepare(
    names: Sequence[str],
    out: Path,
    *,
    hub: str | None = None,
    force: bool = False,
    say: Callable[[str], None] = print,
) -> list[Path]:
    """Write ``<out>/<task>/{train,validation}.jsonl`` for every named task; return the folders.

    Everything is checked before the first download: the names, a hub dataset for each, the
    output place, and folders that exist (refused without ``force``). Each folder is written
    under a temporary name and renamed into place, so a failed download leaves none.
    """
    tasks = expand(names)
    if not tasks:
        raise UserError("name at least one task or group to prepare, e.g. glue or rte")
    sources = {task: hub_source(task) for task in tasks}
    if hub is not None:
        sources = {task: replace(source, path=hub) for task, source in sources.items()}
    writable_folder(out, "--out")
    existing = [str(out / task) for task in tasks if (out / task).exists()]
    if existing and not force:
        raise UserError(
            f"{existing[0]} already exists ({len(existing)} of the task folders do)",
            details=["pass --force to replace them, or choose another --out"],
        )
    created = not out.exists()
    folders = []
    try:
        for task, source in sources.items():
            with atomic_directory(out / task) as folder:
                for split in SPLITS:
                    origin, rows = _download(source, split)
                    text = "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
                    atomic_write_bytes(folder / f"{split}.jsonl", text.encode("utf-8"))
                    say(f"{task} {split}: {len(rows):,} rows from {origin}")
            folders.append(out / task)
    finally:
        if created and out.is_dir() and not any(out.iterdir()):
            out.rmdir()  # a failure before the first task leaves no empty --out behind
    return folders


def _download(source: HubSource, split: str) -> tuple[str, list[dict]]:
    try:
        return source.rows(split)
    except Exception as error:  # datasets' network, offline and not-found errors alike
        reason = str(error).strip().splitlines()[0] if str(error).strip() else ""
        raise UserError(
            f"cannot read {source.path} ({source.config}) [{split}] from the hub: "
            f"{type(error).__name__}{': ' + reason if reason else ''}",
            details=[
                "connect to the internet (and unset HF_HUB_OFFLINE / HF_DATASETS_OFFLINE if "
                "they are set), or give --hub a mirror or a local copy of the dataset",
            ],
        ) from None
