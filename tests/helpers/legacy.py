"""Adapter folders as older versions of more wrote them (for the loading-compatibility tests)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from more_cli.adapters.state import CONFIG_FILE, LEGACY_FILES
from more_cli.integrity import MANIFEST


def as_older_format(directory: Path, version: int, config: dict[str, Any] | None = None) -> None:
    """Rewrite a freshly saved adapter folder as format ``version`` (≤ 2) wrote it: PEFT-like
    file names, no manifest, that format version and optionally another config."""
    (directory / MANIFEST).unlink()
    for name, legacy in LEGACY_FILES.items():
        os.replace(directory / name, directory / legacy)
    path = directory / LEGACY_FILES[CONFIG_FILE]
    description = json.loads(path.read_text())
    description["format_version"] = version
    if config is not None:
        description["config"] = config
    path.write_text(json.dumps(description))
