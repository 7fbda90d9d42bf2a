"""Kill and resume with a real process: ``python -m more_cli train`` is started, killed with
SIGKILL (no chance to save or clean up) once a checkpoint past step 2 x save_every exists,
resumed with ``more train RUN --resume``, and must end with the adapter of an uninterrupted
run, bitwise. (SIGINT / SIGTERM: ``tests/test_reliability.py``.)

The recipe exercises every piece of resumable state: two tasks drawn by the seeded sampler
(data order, sampler position), adapter dropout (torch RNG), warm-up then linear decay
(scheduler) and AdamW moments (optimizer).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file
from typer.testing import CliRunner

from more_cli.cli.app import app
from more_cli.recipe_io import load_recipe
from more_cli.rundir import RunDir, list_checkpoints, read_run_info
from more_cli.training.loop import train

STEPS = 12
SAVE_EVERY = 2
STARTUP_TIMEOUT_S = 300  # importing torch + transformers on a busy 2-core CI machine


@pytest.fixture
def write_run_recipe(
    tmp_path: Path, tiny_model_dir: Callable[[str], Path], glue_data: Path
) -> Callable[[str], Path]:
    """``write_run_recipe(name)`` → a recipe file whose run goes to ``<tmp>/<name>``."""

    def write(name: str) -> Path:
        recipe = {
            "model": {"name": str(tiny_model_dir("seq2seq"))},
            "adapter": {"r": 4, "alpha": 8, "dropout": 0.1},
            "tasks": [{"name": task, "source": str(glue_data / task)} for task in ("sst2", "rte")],
            "data": {"max_source_length": 32, "max_target_length": 4},
            "train": {
                "lr": 0.01, "warmup_steps": 3, "scheduler": "linear", "batch_size": 4,
                "max_steps": STEPS, "save_every": SAVE_EVERY, "log_every": 2, "seed": 0,
            },
            "output_dir": str(tmp_path / name),
        }  # fmt: skip
        path = tmp_path / f"{name}.yaml"
        path.write_text(yaml.safe_dump(recipe, sort_keys=False))
        return path

    return write


def _adapter(run: Path) -> dict[str, torch.Tensor]:
    return load_file(str(run / "adapter" / "more_adapter.safetensors"))


def _start(recipe: Path, log: Path) -> subprocess.Popen:
    """``python -m more_cli train RECIPE`` on one thread, like the in-process reference."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    with log.open("w") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "more_cli", "train", str(recipe)],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
        )


def _wait_for_checkpoint(process: subprocess.Popen, run: RunDir, min_step: int, log: Path) -> int:
    """Poll until a complete checkpoint at ``min_step`` or later exists; return its step."""
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while time.monotonic() < deadline:
        steps = [step for step, _ in list_checkpoints(run) if step >= min_step]
        if steps:
            return steps[-1]
        if process.poll() is not None:
            pytest.fail(f"training exited ({process.returncode}) early:\n{log.read_text()}")
        time.sleep(0.01)
    process.kill()
    pytest.fail(f"no checkpoint after {STARTUP_TIMEOUT_S} s:\n{log.read_text()}")


@pytest.mark.slow
def test_sigkill_then_resume_matches_an_uninterrupted_run(
    write_run_recipe: Callable[[str], Path], tmp_path: Path
) -> None:
    recipe = write_run_recipe("killed")
    run = RunDir(load_recipe(recipe).output_dir)
    log = tmp_path / "train.log"
    process = _start(recipe, log)
    killed_after = _wait_for_checkpoint(process, run, min_step=2 * SAVE_EVERY, log=log)
    process.send_signal(signal.SIGKILL)
    assert process.wait(timeout=60) == -signal.SIGKILL
    # Killed mid-run: no final adapter and the run still says "running".
    assert killed_after < STEPS and not run.adapter.exists()
    assert read_run_info(run)["status"] == "running"

    # The reference: the same recipe in one go, in this process (one thread too).
    expected = _adapter(train(load_recipe(write_run_recipe("uninterrupted"))))
    result = CliRunner().invoke(app, ["train", str(run.root), "--resume"])
    assert result.exit_code == 0, result.output
    assert "resuming" in result.stdout
    assert read_run_info(run)["status"] == "finished"
    resumed = _adapter(run.root)
    assert resumed.keys() == expected.keys()
    for key in expected:
        assert torch.equal(resumed[key], expected[key]), key
    steps = [json.loads(line)["step"] for line in run.metrics.read_text().splitlines()]
    assert steps == list(range(2, STEPS + 1, 2)), "metrics of the killed steps must be dropped"
