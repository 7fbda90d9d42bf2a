"""Run ``more`` (or a module standing in for it) in a fresh Python process, one thread."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def run_python(*args: str) -> subprocess.CompletedProcess:
    """``python *args`` from the repository root, with this interpreter and one thread."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [sys.executable, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300
    )


def more_train(*args: str) -> subprocess.CompletedProcess:
    """``more train *args`` in a subprocess (so ``--num-processes`` can launch)."""
    return run_python("-m", "more_cli", "train", *args)
