"""The accelerate engines ``more train`` runs under, and what each asks of the loop.

- **One process, DDP** (``--num-processes N``): parameters and optimizer state are whole on
  every process; nothing special.
- **FSDP2**: parameters and their optimizer state are sharded ``DTensor``s; checkpoints
  gather them into whole tensors (:mod:`more_cli.sharded`).
- **DeepSpeed ZeRO stage 1 or 2**: parameters stay whole on every process, the optimizer
  state is partitioned. Checkpoints keep it as DeepSpeed's own engine checkpoint (one file
  per process, trainable parameters only) in ``trainer/deepspeed/``; resuming needs the same
  engine and number of processes. The recipe sets batch size, accumulation and clipping.

Refused before the model loads, each with the fix: FSDP1, ZeRO stage 3 (use FSDP2 to shard
parameters), FSDP or DeepSpeed with a 4-bit base (use DDP), and FSDP or DeepSpeed asked
for on a machine without accelerators, where accelerate would quietly run plain DDP.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch
import yaml
from accelerate import Accelerator
from accelerate.utils import DistributedType
from torch import nn

from more_cli.errors import UserError
from more_cli.recipe import Recipe

ENGINE_STATE_DIR = "deepspeed"
_ENGINE_TAG = "state"
# What accelerate launch sets in every process when its config asks for the engine.
_REQUESTED_BY = {"FSDP": "ACCELERATE_USE_FSDP", "DeepSpeed": "ACCELERATE_USE_DEEPSPEED"}


@dataclass(frozen=True)
class EngineRequest:
    """A sharding engine as asked for: by a launched process's accelerator, or by an
    accelerate config file before the launch."""

    name: str  # "FSDP" or "DeepSpeed"
    fsdp_version: int | None = None
    zero_stage: int | None = None
    runs_here: bool = True  # False: accelerate would drop it (no GPU) and run plain DDP


def check_engine(accelerator: Accelerator, recipe: Recipe) -> None:
    """In a launched process: refuse the engines whose state this loop cannot save and
    restore, and a launch that asked for FSDP or DeepSpeed but did not get it."""
    engine = accelerator.distributed_type
    if engine == DistributedType.FSDP:
        request = EngineRequest("FSDP", fsdp_version=accelerator.state.fsdp_plugin.fsdp_version)
    elif engine == DistributedType.DEEPSPEED:
        request = EngineRequest("DeepSpeed", zero_stage=_zero_stage(accelerator))
    else:
        dropped = [n for n, v in _REQUESTED_BY.items() if os.environ.get(v, "").lower() == "true"]
        if not dropped:
            return
        request = EngineRequest(dropped[0], runs_here=False)
    _check(request, recipe)


def check_launch_config(path: Path, recipe: Recipe) -> None:
    """Before ``more train`` launches anything: the same refusals, read from the accelerate
    config file, so that they are one error line instead of one per process."""
    try:
        config = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as error:
        raise UserError(f"cannot read the accelerate config {path}: {error}") from None
    if not isinstance(config, dict):
        raise UserError(f"{path} is not an accelerate config (a YAML mapping)")
    kind = str(config.get("distributed_type", "")).upper()
    runs_here = not config.get("use_cpu", False) and _has_accelerator()
    if kind == "FSDP":
        version = (config.get("fsdp_config") or {}).get("fsdp_version", 1)
        _check(EngineRequest("FSDP", fsdp_version=int(version), runs_here=runs_here), recipe)
    elif kind == "DEEPSPEED":
        stage = (config.get("deepspeed_config") or {}).get("zero_stage")
        stage = None if stage is None else int(stage)  # or in a DeepSpeed JSON: checked later
        _check(EngineRequest("DeepSpeed", zero_stage=stage, runs_here=runs_here), recipe)


def _check(request: EngineRequest, recipe: Recipe) -> None:
    if not request.runs_here:
        raise UserError(
            f"the accelerate config asks for {request.name}, which accelerate runs only on "
            "GPUs (or other accelerators), and this machine has none",
            details=["train with data parallelism here: more train RECIPE --num-processes N"],
        )
    if recipe.model.load_in_4bit:
        raise UserError(
            f"a 4-bit base cannot be trained under {request.name} by more train",
            details=["train a 4-bit base with data parallelism: --num-processes N"],
        )
    if request.fsdp_version not in (None, 2):
        raise UserError(
            "more train supports FSDP2 only, and this accelerate config asks for FSDP1",
            details=["set fsdp_version: 2 under fsdp_config (recipes/accelerate/fsdp.yaml)"],
        )
    if request.zero_stage not in (None, 0, 1, 2):
        raise UserError(
            f"more train supports DeepSpeed ZeRO stages 1 and 2, not {request.zero_stage}",
            details=[
                "set zero_stage: 2 (recipes/accelerate/deepspeed.yaml)",
                "to shard the parameters too, use FSDP2: recipes/accelerate/fsdp.yaml",
            ],
        )


def _has_accelerator() -> bool:
    accelerator = getattr(torch, "accelerator", None)  # torch >= 2.6
    return accelerator.is_available() if accelerator else torch.cuda.is_available()


def is_deepspeed(accelerator: Accelerator) -> bool:
    return accelerator.distributed_type == DistributedType.DEEPSPEED


def plain(accelerator: Accelerator) -> bool:
    """True when no engine shards the model or the optimizer (one process, or DDP): the
    optimizer then sees the model's own parameters."""
    return accelerator.distributed_type != DistributedType.FSDP and not is_deepspeed(accelerator)


def configure(accelerator: Accelerator, recipe: Recipe) -> None:
    """Before ``prepare``: give DeepSpeed the recipe's batch, accumulation and clipping.

    DeepSpeed reads them from its own config, where an accelerate config leaves them unset
    or ``auto``; the recipe is the single source, as for mixed precision.
    """
    if not is_deepspeed(accelerator):
        return
    train = recipe.train
    config = accelerator.state.deepspeed_plugin.deepspeed_config
    config["train_micro_batch_size_per_gpu"] = train.batch_size
    config["gradient_accumulation_steps"] = train.grad_accum
    config["train_batch_size"] = train.batch_size * train.grad_accum * accelerator.num_processes
    config["gradient_clipping"] = train.max_grad_norm or 0.0


def describe(accelerator: Accelerator) -> str | None:
    """A line for the log when the engine shards anything, else None."""
    processes = accelerator.num_processes
    if accelerator.distributed_type == DistributedType.FSDP:
        return f"model sharded with FSDP2 across {processes} processes"
    if is_deepspeed(accelerator):
        stage = _zero_stage(accelerator)
        return f"DeepSpeed ZeRO stage {stage}: optimizer state split across {processes} processes"
    return None


def save_engine_state(engine: nn.Module, directory: Path) -> None:
    """DeepSpeed's checkpoint of the partitioned optimizer state into ``directory``.

    Every process calls it and writes its own partition; frozen base weights are left out.
    """
    engine.save_checkpoint(str(directory), tag=_ENGINE_TAG, exclude_frozen_parameters=True)


def load_engine_state(engine: nn.Module, directory: Path) -> None:
    """Restore what :func:`save_engine_state` wrote (the frozen base is not in it)."""
    engine.load_checkpoint(
        str(directory), tag=_ENGINE_TAG, load_module_strict=False,
        load_optimizer_states=True, load_lr_scheduler_states=False,
    )  # fmt: skip


def _zero_stage(accelerator: Accelerator) -> int:
    """The ZeRO stage in effect: DeepSpeed's config (a JSON file's too), else the plugin's."""
    plugin = accelerator.state.deepspeed_plugin
    stage = plugin.deepspeed_config.get("zero_optimization", {}).get("stage", plugin.zero_stage)
    return int(stage or 0)
