"""Start ``more train`` under ``accelerate launch`` for several processes, GPUs or machines.

``more train RECIPE --num-processes N`` (or ``--accelerate-config FILE``, or the multi-node
options) does not distribute anything itself: it runs ::

    python -m accelerate.commands.launch [launch options] -m more_cli train RECIPE [...]

with the same interpreter, waits for it and exits with its exit code. Each process then
runs the ordinary training loop, which takes its rank from accelerate (data sharding,
main-process-only writing and DDP are in :mod:`more_cli.training` and :mod:`more_cli.data`).
Running ``accelerate launch -m more_cli train RECIPE`` directly is the same thing.

On a machine without a GPU the processes form a ``gloo`` process group on the CPU
(:func:`use_cpu_process_group`): accelerate only does that when told to use the CPU, and
otherwise every process would train alone and write the same run directory.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

# What torchrun / accelerate launch set in every process they start.
_LAUNCHER_VARIABLES = ("WORLD_SIZE", "LOCAL_RANK")
_PRECISION_FLAGS = {"fp32": "no", "bf16": "bf16", "fp16": "fp16"}
_FORWARDED = (signal.SIGINT, signal.SIGTERM)


@dataclass(frozen=True)
class LaunchOptions:
    """The ``accelerate launch`` options ``more train`` passes through."""

    num_processes: int | None = None
    """Processes in all (one per GPU; on a CPU-only machine, CPU processes)."""
    config_file: Path | None = None
    """An accelerate config (``accelerate config``, or one of ``recipes/accelerate/``)."""
    num_machines: int | None = None
    machine_rank: int | None = None
    main_process_ip: str | None = None
    main_process_port: int | None = None
    gpu_ids: str | None = None
    """Comma-separated GPU ids this machine uses, e.g. ``0,1``."""

    @property
    def wanted(self) -> bool:
        """Whether these options ask for a launch (one process needs none)."""
        return (
            (self.num_processes or 1) > 1
            or self.config_file is not None
            or (self.num_machines or 1) > 1
        )


def under_launcher() -> bool:
    """True inside a process started by ``accelerate launch`` or ``torchrun``."""
    return any(name in os.environ for name in _LAUNCHER_VARIABLES)


def is_main_process() -> bool:
    """False in every launched process but global rank 0 (True without a launcher)."""
    return os.environ.get("RANK", "0") == "0"


def use_cpu_process_group() -> bool:
    """Whether this launched process must ask accelerate for a CPU (gloo) process group."""
    several = int(os.environ.get("WORLD_SIZE", "1")) > 1
    return under_launcher() and several and not torch.cuda.is_available()


def launch_command(options: LaunchOptions, train_args: Sequence[str], precision: str) -> list[str]:
    """The ``accelerate launch`` command line running ``more train`` with ``train_args``.

    Args:
        options: the launch options given to ``more train``.
        train_args: the ``more train`` arguments without launch options (recipe, ``--set``,
            ``--resume``, ``--output-dir``).
        precision: the recipe's ``train.precision``; the recipe decides mixed precision, the
            launcher is told the same so that it does not fall back to its default.
    """
    command = [sys.executable, "-m", "accelerate.commands.launch"]
    if options.config_file is not None:
        command += ["--config_file", str(options.config_file)]
    elif (options.num_processes or 1) > 1 or (options.num_machines or 1) > 1:
        # Without a config, plain data parallelism; accelerate reaches its torchrun
        # launcher only through --multi_gpu, on a CPU-only machine too.
        command.append("--multi_gpu")
    flags = {
        "--num_processes": options.num_processes,
        "--num_machines": options.num_machines,
        "--machine_rank": options.machine_rank,
        "--main_process_ip": options.main_process_ip,
        "--main_process_port": options.main_process_port,
        "--gpu_ids": options.gpu_ids,
    }
    for flag, value in flags.items():
        if value is not None:
            command += [flag, str(value)]
    if options.config_file is None and options.num_machines is None:
        command += ["--num_machines", "1"]
    command += ["--mixed_precision", _PRECISION_FLAGS[precision], "--dynamo_backend", "no"]
    return [*command, "-m", "more_cli", "train", *train_args]


def run_launch(command: Sequence[str]) -> int:
    """Run ``command`` and return its exit code, passing SIGINT / SIGTERM on exactly once.

    The launcher runs in its own session, so a Ctrl-C at the terminal reaches it only
    through this process: it forwards the signal to its workers, which checkpoint and stop
    (a second signal would stop them at once, without a checkpoint).
    """
    process = subprocess.Popen(list(command), start_new_session=True)

    def forward(number: int, frame: object) -> None:
        process.send_signal(number)

    previous = {number: signal.signal(number, forward) for number in _FORWARDED}
    try:
        return process.wait()
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)
