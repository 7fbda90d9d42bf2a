"""Commands that only read a run never import the training package."""

from __future__ import annotations

import subprocess
import sys

import pytest

READERS = {
    "eval": ["more_cli.cli.eval", "more_cli.evaluation.runs"],
    "merge": ["more_cli.cli.merge", "more_cli.exports.runs"],
    "predict": ["more_cli.cli.predict", "more_cli.prediction"],
    "inspect": ["more_cli.cli.inspect", "more_cli.inspection"],
}


@pytest.mark.parametrize("command", sorted(READERS))
def test_a_reading_command_imports_nothing_from_training(command: str) -> None:
    imports = "; ".join(f"import {module}" for module in READERS[command])
    check = (
        f"import sys; {imports}; "
        "loaded = sorted(m for m in sys.modules if m.startswith('more_cli.training')); "
        "print(loaded); sys.exit(1 if loaded else 0)"
    )
    result = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
