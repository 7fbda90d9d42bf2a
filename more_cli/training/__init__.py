"""Multi-task training with accelerate: ``train(recipe)`` (:mod:`.loop`), with the session
set-up (:mod:`.session`), checkpoints (:mod:`.checkpoints`), signals (:mod:`.signals`) and
reporting (:mod:`.reporting`) beside it. Names are imported on first use."""

from __future__ import annotations

from typing import TYPE_CHECKING

from more_cli.lazy import lazy_getattr

if TYPE_CHECKING:
    from more_cli.training.loop import train
    from more_cli.training.signals import TrainingInterrupted

_HOMES = {"train": "loop", "TrainingInterrupted": "signals"}

__all__ = ["TrainingInterrupted", "train"]


__getattr__ = lazy_getattr(__name__, _HOMES)
