"""The interruption a signal ends training with."""

from __future__ import annotations

import pickle
import signal
from pathlib import Path

from more_cli.training.signals import TrainingInterrupted


def test_an_interruption_crosses_process_boundaries_intact() -> None:
    """A run trained in a worker process hands its interruption back through pickle (an
    unpicklable exception broke the benchmark suite's whole process pool)."""
    stopped = TrainingInterrupted(signal.SIGTERM, Path("runs/x"))
    copy = pickle.loads(pickle.dumps(stopped))
    assert isinstance(copy, TrainingInterrupted)
    assert (copy.exit_code, copy.run_dir, str(copy)) == (143, Path("runs/x"), str(stopped))
