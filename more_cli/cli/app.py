"""The ``more`` Typer app. It only wires subcommands; each lives in its own module.

To add a subcommand, write ``more_cli/cli/<name>.py`` with a ``register(app)`` function that
calls ``app.command(...)`` and add the module name to ``SUBCOMMANDS``. A
:class:`~more_cli.errors.UserError` raised by any command is printed as ``error: <message>``
(each detail line indented below it) on stderr, with exit code 2 and no traceback.
"""

from __future__ import annotations

import importlib
import logging
import warnings
from typing import Any

import click
import typer
from typer.core import TyperArgument, TyperGroup, TyperOption

from more_cli.errors import UserError

# Subcommand modules under more_cli.cli, in the order `more --help` lists them.
SUBCOMMANDS = ("train", "eval", "predict", "merge", "inspect", "tasks", "data", "demo")


class _UserErrorsAsMessages(TyperGroup):
    """Turn a ``UserError`` from any subcommand into one line on stderr and exit code 2."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except UserError as error:
            report_user_error(error)
            raise typer.Exit(error.exit_code) from None


def report_user_error(error: UserError) -> None:
    message = str(error)
    typer.echo(f"error: {message}", err=True)
    for detail in error.details:
        if detail not in message:  # a single error is already spelled out in the message
            typer.echo(f"  {detail}", err=True)


def readable_help() -> None:
    """Help that reads as users expect: a flag shows no value type (typer prints ``<bool>``,
    which made users type ``--resume true``) and a required argument is ``RECIPE`` in the
    usage line, not ``{recipe}``. Both are typer's private display hooks; if a typer release
    drops them, help keeps typer's own look."""
    if hasattr(TyperOption, "display_type_rich"):
        shown_type = TyperOption.display_type_rich

        def no_type_for_flags(self: TyperOption, ctx: click.Context) -> str | None:
            return None if self.is_flag else shown_type(self, ctx)

        TyperOption.display_type_rich = no_type_for_flags
    if hasattr(TyperArgument, "_usage_display_name"):

        def usage_name(self: TyperArgument) -> str:
            name = self.display_name_raw.upper()
            name = name if self.required else f"[{name}]"
            return name + ("..." if self.nargs != 1 else "")

        TyperArgument._usage_display_name = usage_name


readable_help()

app = typer.Typer(
    cls=_UserErrorsAsMessages,
    name="more",
    help="Multi-task parameter-efficient fine-tuning with MoRE (Mixture of Low-Rank Experts).",
    epilog="Example: more train recipes/demo.yaml && more eval runs/demo",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_show_locals=False,
)

for _name in SUBCOMMANDS:
    importlib.import_module(f"more_cli.cli.{_name}").register(app)


def quiet_third_party_noise() -> None:
    """Hide two messages that say nothing about the user's run: bitsandbytes' note that an
    optional CPU kernel package is absent, and a transformers deprecation that peft triggers."""
    logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)
    warnings.filterwarnings(
        "ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning
    )


def main() -> None:
    """Console-script entry point (``more``): usage errors from the command line (a bad
    option value, a missing argument, an unknown command) read like every other error, one
    ``error:`` line naming the fix, exit code 2."""
    quiet_third_party_noise()
    try:
        code = app(standalone_mode=False)
    except typer.Abort:
        typer.echo("error: aborted", err=True)
        raise SystemExit(130) from None
    except typer.TyperException as error:  # typer's (vendored) click usage errors
        context = getattr(error, "ctx", None)
        command = context.command_path if context is not None else "more"
        message = error.format_message().replace("Value error, ", "").strip()
        if message:  # bare `more` prints its help, with nothing to report
            message = message[:1].lower() + message[1:]
            typer.echo(f"error: {message} (see: {command} --help)", err=True)
        raise SystemExit(getattr(error, "exit_code", 2)) from None
    raise SystemExit(code if isinstance(code, int) else 0)
