"""SIGINT / SIGTERM during training: noted by the handler, acted on at the next step boundary
(checkpoint, mark the run interrupted, exit 130 / 143)."""

from __future__ import annotations

import contextlib
import shlex
import signal
from pathlib import Path
from typing import Any

import torch

from more_cli.rundir import (
    write_run_info,
)
from more_cli.training.session import Session

_SIGNAL_EXIT_CODES = {signal.SIGINT: 130, signal.SIGTERM: 143}


class TrainingInterrupted(Exception):
    """Training stopped on SIGINT / SIGTERM after saving a checkpoint."""

    def __init__(self, signal_number: int, run_dir: Path) -> None:
        super().__init__(f"interrupted by {signal.Signals(signal_number).name}")
        self.signal_number = signal_number
        self.exit_code = _SIGNAL_EXIT_CODES.get(signal_number, 128 + signal_number)
        self.run_dir = run_dir

    def __reduce__(self) -> tuple[type, tuple[int, Path]]:
        # Picklable, so a run trained in a worker process (multiprocessing, a process pool)
        # hands its interruption back instead of breaking the pool.
        return type(self), (self.signal_number, self.run_dir)


class SignalCatcher:
    """Record SIGINT / SIGTERM so the loop can checkpoint at the next step boundary.

    A second signal of the same kind restores the default behaviour (stop at once).
    """

    def __init__(self) -> None:
        self.received: int | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> SignalCatcher:
        for number in _SIGNAL_EXIT_CODES:
            with contextlib.suppress(ValueError):  # not the main thread: leave signals alone
                self._previous[number] = signal.signal(number, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for number, handler in self._previous.items():
            signal.signal(number, handler)

    def _handle(self, number: int, frame: Any) -> None:
        if self.received is not None:
            signal.signal(number, self._previous.get(number, signal.SIG_DFL))
            signal.raise_signal(number)
            return
        self.received = number


def signal_on_any_process(session: Session, signals: SignalCatcher) -> int | None:
    """The signal some process received, so that all checkpoint and stop at the same step."""
    acc = session.accelerator
    if acc.num_processes == 1:
        return signals.received
    number = torch.tensor([signals.received or 0], device=acc.device)
    return int(acc.gather(number).max()) or None


def interrupt(session: Session, signal_number: int) -> None:
    run = session.run
    if session.accelerator.is_main_process:
        write_run_info(run, status="interrupted", step=session.state.step)
    session.say(
        f"interrupted at step {session.state.step}; checkpoint saved.\n"
        f"  resume with: more train {shlex.quote(str(run.root))} --resume"
    )
    session.accelerator.end_training()
    raise TrainingInterrupted(signal_number, run.root)
