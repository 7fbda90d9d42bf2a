"""``more train``: fine-tune a base model on several tasks from a recipe."""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

if TYPE_CHECKING:
    from more_cli.launch import LaunchOptions
    from more_cli.recipe import Recipe

EPILOG = """\
Examples:

  more train recipes/demo.yaml

  more train recipes/glue_t5.yaml --set train.lr=1e-4 --set adapter.r=16 -o runs/glue-r16

  more train runs/glue-r16 --resume      # continue an interrupted run from its checkpoint

  more train recipes/glue_t5.yaml --num-processes 4     # 4 GPUs (or CPU processes), DDP

  accelerate launch --num_processes 4 -m more_cli train recipes/glue_t5.yaml   # the same

Several processes, GPUs and machines: docs/scaling.md.
"""

_LAUNCH = "Several processes (accelerate launch)"


def train(
    recipe: Annotated[
        Path, typer.Argument(help="Recipe YAML, or a run directory (its resolved recipe).")
    ],
    overrides: Annotated[
        list[str] | None,
        typer.Option("--set", help="Override a recipe key, e.g. --set train.lr=1e-4 (repeatable)."),
    ] = None,
    resume: Annotated[
        bool,
        typer.Option(
            "--resume",
            help="Continue the run in the output directory from its latest checkpoint.",
        ),
    ] = False,
    output_dir: Annotated[
        Path | None,
        typer.Option("--output-dir", "-o", help="Run directory (overrides output_dir)."),
    ] = None,
    num_processes: Annotated[
        int | None,
        typer.Option(
            min=1,
            rich_help_panel=_LAUNCH,
            help="Train with N processes under accelerate launch (one per GPU; CPU processes "
            "on a machine without GPUs). The global batch is N x train.batch_size.",
        ),
    ] = None,
    accelerate_config: Annotated[
        Path | None,
        typer.Option(
            exists=True,
            dir_okay=False,
            rich_help_panel=_LAUNCH,
            help="accelerate config file, e.g. recipes/accelerate/multi_gpu.yaml.",
        ),
    ] = None,
    num_machines: Annotated[
        int | None, typer.Option(min=1, rich_help_panel=_LAUNCH, help="Machines in all.")
    ] = None,
    machine_rank: Annotated[
        int | None, typer.Option(min=0, rich_help_panel=_LAUNCH, help="This machine's rank.")
    ] = None,
    main_process_ip: Annotated[
        str | None, typer.Option(rich_help_panel=_LAUNCH, help="Address of machine rank 0.")
    ] = None,
    main_process_port: Annotated[
        int | None, typer.Option(rich_help_panel=_LAUNCH, help="Port on machine rank 0.")
    ] = None,
    gpu_ids: Annotated[
        str | None,
        typer.Option(rich_help_panel=_LAUNCH, help="GPUs of this machine to use, e.g. 0,1."),
    ] = None,
) -> None:
    """Train an adapter on every task of RECIPE; write the run directory."""
    from more_cli.launch import LaunchOptions, is_main_process
    from more_cli.places import writable_folder
    from more_cli.recipe_io import load_recipe
    from more_cli.rundir import RunDir
    from more_cli.training.loop import train as run_training
    from more_cli.training.signals import TrainingInterrupted

    run_given = recipe.is_dir()
    if run_given:
        # A run directory: train (usually resume) with the recipe it was started with.
        output_dir = output_dir or recipe
        recipe = RunDir(recipe).recipe
    loaded = load_recipe(recipe, overrides or [], resolved=run_given)
    if output_dir is not None:
        loaded = loaded.model_copy(update={"output_dir": output_dir})
    writable_folder(loaded.output_dir, "output directory")
    launch = LaunchOptions(
        num_processes, accelerate_config, num_machines, machine_rank, main_process_ip,
        main_process_port, gpu_ids,
    )  # fmt: skip
    if launch.wanted:
        # The recipe is valid (loaded above); the launched processes load it again.
        train_args = [str(recipe), *(f"--set={item}" for item in overrides or [])]
        train_args += ["--resume"] * resume + [f"--output-dir={loaded.output_dir}"]
        raise typer.Exit(_launch(launch, train_args, loaded))
    try:
        run_dir = run_training(loaded, resume=resume)
    except TrainingInterrupted as stop:
        raise typer.Exit(stop.exit_code) from None
    if is_main_process():
        typer.echo(f"run finished: {run_dir}")
        typer.echo(f"  evaluate again with: more eval {shlex.quote(str(run_dir))}")


def _launch(options: LaunchOptions, train_args: list[str], recipe: Recipe) -> int:
    """Run ``more train train_args`` under accelerate launch; return its exit code."""
    from more_cli.engines import check_launch_config
    from more_cli.errors import UserError
    from more_cli.launch import launch_command, run_launch, under_launcher

    if under_launcher():
        raise UserError(
            "more train is already running under accelerate launch / torchrun; the launch "
            "options (--num-processes, --accelerate-config, ...) start one",
            details=["pass them to accelerate launch instead, or run more train without it"],
        )
    if options.config_file is not None:
        check_launch_config(options.config_file, recipe)
    command = launch_command(options, train_args, recipe.train.precision)
    typer.echo(f"launching: {' '.join(command[1:])}", err=True)
    return run_launch(command)


def register(app: typer.Typer) -> None:
    app.command("train", epilog=EPILOG)(train)
