"""``more train`` launch options: the accelerate launch command, exit codes, no nesting."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from typer.testing import CliRunner

from more_cli import launch
from more_cli.cli.app import app
from more_cli.launch import LaunchOptions, launch_command, run_launch, use_cpu_process_group

runner = CliRunner()


def test_one_process_needs_no_launch() -> None:
    assert not LaunchOptions().wanted
    assert not LaunchOptions(num_processes=1).wanted
    assert LaunchOptions(num_processes=2).wanted
    assert LaunchOptions(config_file=Path("fsdp.yaml")).wanted
    assert LaunchOptions(num_machines=2).wanted


def test_data_parallel_command() -> None:
    command = launch_command(LaunchOptions(num_processes=4), ["r.yaml", "--resume"], "bf16")
    assert command[:3] == [sys.executable, "-m", "accelerate.commands.launch"]
    launcher = command[3 : command.index("-m", 3)]
    assert "--multi_gpu" in launcher and "--config_file" not in launcher
    assert _flag(launcher, "--num_processes") == "4"
    assert _flag(launcher, "--num_machines") == "1"
    assert _flag(launcher, "--mixed_precision") == "bf16"
    assert command[command.index("-m", 3) :] == ["-m", "more_cli", "train", "r.yaml", "--resume"]


def test_config_file_decides_the_distribution() -> None:
    options = LaunchOptions(
        config_file=Path("multi_node.yaml"), num_machines=2, machine_rank=1,
        main_process_ip="10.0.0.1", main_process_port=29500, gpu_ids="0,1",
    )  # fmt: skip
    launcher = launch_command(options, ["r.yaml"], "fp32")
    assert "--multi_gpu" not in launcher
    assert _flag(launcher, "--config_file") == "multi_node.yaml"
    assert _flag(launcher, "--machine_rank") == "1"
    assert _flag(launcher, "--main_process_ip") == "10.0.0.1"
    assert _flag(launcher, "--gpu_ids") == "0,1"
    assert _flag(launcher, "--mixed_precision") == "no"


def _flag(command: list[str], name: str) -> str:
    return command[command.index(name) + 1]


def test_exit_code_of_the_launch_is_kept() -> None:
    assert run_launch([sys.executable, "-c", "raise SystemExit(3)"]) == 3


def test_more_train_launches_and_exits_with_its_code(
    write_recipe: Callable[..., Path], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    commands: list[list[str]] = []

    def fake_run(command: list[str]) -> int:
        commands.append(command)
        return 7

    monkeypatch.setattr(launch, "run_launch", fake_run)
    for name in ("WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    recipe = write_recipe()
    out = tmp_path / "elsewhere"
    args = ["train", str(recipe), "--set", "train.lr=0.05", "-o", str(out), "--num-processes", "2"]
    result = runner.invoke(app, args)
    assert result.exit_code == 7
    (command,) = commands
    child = command[command.index("more_cli") + 1 :]
    assert child == ["train", str(recipe), "--set=train.lr=0.05", f"--output-dir={out}"]
    assert not (tmp_path / "run").exists() and not out.exists()  # nothing trained here


def test_launch_options_are_refused_under_a_launcher(
    write_recipe: Callable[..., Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("WORLD_SIZE", "2")
    result = runner.invoke(app, ["train", str(write_recipe()), "--num-processes", "2"])
    assert result.exit_code == 2
    assert "already running under accelerate launch" in result.stderr


def test_bad_recipe_fails_once_before_launching(
    write_recipe: Callable[..., Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(launch, "run_launch", lambda command: pytest.fail("launched"))
    args = ["train", str(write_recipe()), "--set", "train.lr=-1", "--num-processes", "2"]
    result = runner.invoke(app, args)
    assert result.exit_code == 2 and "lr" in result.stderr


def test_cpu_process_group_only_for_several_launched_processes_without_gpus(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(launch.torch.cuda, "is_available", lambda: False)
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert not use_cpu_process_group()
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert not use_cpu_process_group()
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert use_cpu_process_group()
    monkeypatch.setattr(launch.torch.cuda, "is_available", lambda: True)
    assert not use_cpu_process_group()
