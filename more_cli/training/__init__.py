"""Multi-task training with accelerate: ``train(recipe)`` (:mod:`.loop`), with the session
set-up (:mod:`.session`), checkpoints (:mod:`.checkpoints`), signals (:mod:`.signals`) and
reporting (:mod:`.reporting`) beside it. Names are imported on first use."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from more_cli.training.loop import train
    from more_cli.training.signals import TrainingInterrupted

_HOMES = {"train": "loop", "TrainingInterrupted": "signals"}

__all__ = ["TrainingInterrupted", "train"]


def __getattr__(name: str) -> Any:
    if name not in _HOMES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_HOMES[name]}"), name)
