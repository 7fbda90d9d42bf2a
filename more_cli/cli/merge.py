"""``more merge``: export tasks of a run as merged Hugging Face checkpoints and PEFT adapters."""

from __future__ import annotations

import json
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

if TYPE_CHECKING:
    from rich.table import Table

    from more_cli.exports.runs import ExportResult

EPILOG = """\
Examples:

  more merge runs/glue --task rte

  more merge runs/glue --all-tasks --dtype bfloat16 --max-shard-size 5GB

  more merge runs/qlora --task boolq --nf4-roundtrip --out exports/qlora

Writes OUT/merged/<task>/ (load with AutoModel...from_pretrained, no more needed) and
OUT/peft/<task>/ (load with peft.PeftModel.from_pretrained on the base model).
"""


class ExportDtype(str, Enum):
    float32 = "float32"
    bfloat16 = "bfloat16"


def merge(
    run_dir: Annotated[Path, typer.Argument(help="Run directory written by `more train`.")],
    task: Annotated[
        list[str] | None,
        typer.Option("--task", help="Task to export (repeatable, or comma-separated)."),
    ] = None,
    all_tasks: Annotated[bool, typer.Option("--all-tasks", help="Export every task.")] = False,
    out: Annotated[
        Path | None, typer.Option("--out", help="Export folder (default: RUN_DIR/exports).")
    ] = None,
    dtype: Annotated[
        ExportDtype, typer.Option("--dtype", help="dtype of the exported weights.")
    ] = ExportDtype.float32,
    max_shard_size: Annotated[
        str, typer.Option("--max-shard-size", help="Largest safetensors shard, e.g. 2GB.")
    ] = "2GB",
    no_verify: Annotated[
        bool,
        typer.Option("--no-verify", help="Skip reloading the exports and comparing outputs."),
    ] = False,
    force: Annotated[bool, typer.Option("--force", help="Replace existing exports.")] = False,
    checkpoint: Annotated[
        str | None,
        typer.Option("--checkpoint", help="Export checkpoints/step-N instead of adapter/."),
    ] = None,
    nf4_roundtrip: Annotated[
        bool,
        typer.Option(
            "--nf4-roundtrip",
            help="4-bit runs: merge into the NF4-rounded base weights the adapter was trained "
            "against (dequantized to float32) instead of the original full-precision weights.",
        ),
    ] = False,
) -> None:
    """Merge each task's update into the base and export it (merged checkpoint + PEFT adapter)."""
    import torch
    from rich.console import Console

    from more_cli.cli.quiet import quiet_model_loading
    from more_cli.errors import UserError
    from more_cli.exports.runs import export_run
    from more_cli.exports.verify import TOLERANCES
    from more_cli.places import writable_folder

    names = [name.strip() for item in task or [] for name in item.split(",") if name.strip()]
    if bool(names) == all_tasks:
        raise UserError("give --task NAME (one or more) or --all-tasks, not both and not neither")
    if out is not None:
        writable_folder(out, "--out")
    quiet_model_loading()
    console = Console()
    torch_dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16}[dtype.value]
    results = export_run(
        run_dir, names or None, out,
        dtype=torch_dtype, max_shard_size=max_shard_size, verify=not no_verify, force=force,
        checkpoint=checkpoint, nf4_roundtrip=nf4_roundtrip, say=console.print,
    )  # fmt: skip
    console.print(_results_table(results))
    if not no_verify:
        console.print(
            "verification ok: every export, reloaded from disk, gives the unmerged adapter's "
            f"outputs (allowed: {TOLERANCES[torch_dtype]:g} x max(1, max |output|), "
            f"{dtype.value})"
        )
    first = results[0]
    config = json.loads((first.merged_dir / "config.json").read_text())
    architecture = (config.get("architectures") or ["AutoModel"])[0]
    console.print(f"load a merged task:  {architecture}.from_pretrained('{first.merged_dir}')")
    console.print(f"load a PEFT adapter: PeftModel.from_pretrained(base, '{first.peft_dir}')")


def _results_table(results: list[ExportResult]) -> Table:
    from rich.table import Table

    out_dir = results[0].merged_dir.parent.parent
    # Every task's folders are <out>/merged/<task> and <out>/peft/<task>: named once here.
    table = Table(title=f"exports in {out_dir}/{{merged,peft}}/<task>")
    for column in ("task", "mean rank", "check (max |Δ| merged / peft)"):
        table.add_column(column, justify="right" if column == "mean rank" else "left")
    for result in results:
        differences = result.differences
        # A difference beyond the tolerance raises before the table: shown means passed.
        check = (
            f"ok ({differences['merged']:.1e} / {differences['peft']:.1e})"
            if differences
            else "not verified"
        )
        table.add_row(result.task, f"{result.mean_rank:.2f}", check)
    return table


def register(app: typer.Typer) -> None:
    app.command("merge", epilog=EPILOG)(merge)
