"""Checkpoints of a training session: ``checkpoints/step-N`` with the adapter and heads, and
``trainer/`` with the optimizer (as safetensors + JSON), scheduler, sampler position and RNG
state; restoring all of it; the run's final ``adapter/``."""

from __future__ import annotations

import os
import random
import shutil
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import save_file

from more_cli import engines
from more_cli.adapters import load_adapter_weights, save_adapter
from more_cli.adapters.state import adapter_tensors, check_same_adapter, read_weights
from more_cli.errors import UserError
from more_cli.integrity import write_manifest
from more_cli.modeling import (
    head_tensors,
    load_heads,
    save_heads,
)
from more_cli.rundir import (
    FORMAT_VERSION,
    atomic_directory,
    atomic_write_json,
    checkpoint_problem,
    is_complete,
    mark_complete,
    prune_checkpoints,
    read_json,
    truncate_metrics,
    write_run_info,
)
from more_cli.sharded import shard_like, whole
from more_cli.training.session import Session, TrainerState, unwrapped_model


def write_adapter(
    session: Session,
    directory: Path,
    adapter: dict[str, torch.Tensor],
    heads: dict[str, torch.Tensor],
) -> None:
    """The adapter folder: weights, description, heads, and last the manifest over them."""
    save_adapter(session.adapter, directory, adapter, seal=False)
    save_heads(unwrapped_model(session), directory, heads)
    write_manifest(directory)


def save_checkpoint(session: Session) -> None:
    """``checkpoints/step-N``: adapter/ + trainer/ (optimizer, scheduler, sampler, RNG)."""
    acc, run, state = session.accelerator, session.run, session.state
    # Gathered on every process (a collective under FSDP2), written by the main one.
    adapter, heads = adapter_tensors(session.adapter), head_tensors(unwrapped_model(session))
    optimizer_tensors, optimizer_rest, engine_state = None, None, None
    if engines.is_deepspeed(acc):  # every process writes its optimizer partition
        engine_state = run.checkpoints / f".tmp-engine-step-{state.step}"
        engines.save_engine_state(session.model, engine_state)
        acc.wait_for_everyone()
    else:
        optimizer_tensors, optimizer_rest = _split_optimizer_state(session.optimizer.state_dict())
    target = run.checkpoint(state.step)
    # A damaged checkpoint of this step (passed over on resume) is replaced, an intact one kept.
    if acc.is_main_process and (not is_complete(target) or checkpoint_problem(target)):
        with atomic_directory(target) as directory:
            write_adapter(session, directory / "adapter", adapter, heads)
            _write_trainer_state(session, directory / "trainer", optimizer_tensors, optimizer_rest)
            if engine_state is not None:
                os.replace(engine_state, directory / "trainer" / engines.ENGINE_STATE_DIR)
            mark_complete(directory)
        prune_checkpoints(run, session.recipe.train.keep_checkpoints, state.best_step)
        write_run_info(run, status="running", step=state.step, best_step=state.best_step)
    elif acc.is_main_process and engine_state is not None:
        shutil.rmtree(engine_state, ignore_errors=True)
    acc.wait_for_everyone()


def _write_trainer_state(
    session: Session,
    directory: Path,
    optimizer_tensors: dict[str, torch.Tensor] | None,
    optimizer_rest: dict[str, Any] | None,
) -> None:
    """Loop state as JSON and safetensors; the optimizer's too, unless DeepSpeed holds it."""
    directory.mkdir()
    if optimizer_tensors is not None:
        save_file(optimizer_tensors, str(directory / "optimizer.safetensors"))
    save_file(_torch_rng_state(), str(directory / "rng.safetensors"))
    scaler = session.accelerator.scaler
    atomic_write_json(
        directory / "state.json",
        {
            "format_version": FORMAT_VERSION,
            "trainer": asdict(session.state),
            "optimizer": optimizer_rest,
            "scheduler": session.scheduler.state_dict(),
            "sampler": session.batches.state_dict(),
            "grad_scaler": scaler.state_dict() if scaler is not None else None,
            "python_rng": random.getstate(),
            "numpy_rng": _numpy_rng_state(),
        },
    )


def restore_checkpoint(session: Session, checkpoint: Path) -> None:
    """Load everything :func:`save_checkpoint` wrote; drop metrics logged after it."""
    check_same_adapter(session.adapter, checkpoint / "adapter")
    load_adapter_weights(session.adapter, checkpoint / "adapter")
    load_heads(unwrapped_model(session), checkpoint / "adapter")
    trainer = checkpoint / "trainer"
    saved = read_json(trainer / "state.json")
    session.state = TrainerState(**saved["trainer"])
    _restore_optimizer(session, trainer, saved["optimizer"])
    session.scheduler.load_state_dict(saved["scheduler"])
    session.batches.load_state_dict(saved["sampler"])
    if saved["grad_scaler"] is not None and session.accelerator.scaler is not None:
        session.accelerator.scaler.load_state_dict(saved["grad_scaler"])
    version, internal, gauss = saved["python_rng"]
    random.setstate((version, tuple(internal), gauss))
    _set_numpy_rng_state(saved["numpy_rng"])
    _set_torch_rng_state(read_weights(trainer / "rng.safetensors"))
    if session.accelerator.is_main_process:
        truncate_metrics(session.run.metrics, after_step=session.state.step)
        write_run_info(session.run, status="running", step=session.state.step)


def _restore_optimizer(session: Session, trainer: Path, rest: dict[str, Any] | None) -> None:
    engine_state = trainer / engines.ENGINE_STATE_DIR
    if engine_state.is_dir() != engines.is_deepspeed(session.accelerator):
        written = "under DeepSpeed" if engine_state.is_dir() else "without DeepSpeed"
        raise UserError(
            f"{trainer.parent} was written {written}; its optimizer state cannot be "
            "restored under this accelerate set-up",
            details=["resume with the accelerate config (and process count) the run used"],
        )
    if engine_state.is_dir():
        engines.load_engine_state(session.model, engine_state)
        return
    tensors = read_weights(trainer / "optimizer.safetensors")
    session.optimizer.load_state_dict(
        _join_optimizer_state(tensors, rest, _optimized_parameters(session))
    )


def _split_optimizer_state(state: dict[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Optimizer state as whole safetensors tensors (``<param>.<key>``) + a JSON remainder.

    Under FSDP2 the state of a sharded parameter is sharded too: gathering it is a
    collective, so every process calls this.
    """
    tensors: dict[str, torch.Tensor] = {}
    rest: dict[str, Any] = {"param_groups": state["param_groups"], "state": {}}
    for index, values in state["state"].items():
        for key, value in values.items():
            if isinstance(value, torch.Tensor):
                tensors[f"{index}.{key}"] = whole(value.detach()).contiguous().cpu()
            else:
                rest["state"].setdefault(str(index), {})[key] = value
    return tensors, rest


def _join_optimizer_state(
    tensors: dict[str, torch.Tensor], rest: dict[str, Any], parameters: list[torch.Tensor]
) -> dict[str, Any]:
    """The optimizer state dict from :func:`_split_optimizer_state`'s parts; the state of a
    sharded parameter (``parameters`` in optimizer order) is cut to this process's shard."""
    state: dict[int, dict[str, Any]] = {int(i): dict(v) for i, v in rest["state"].items()}
    for name, tensor in tensors.items():
        index, key = name.split(".", 1)
        parameter = parameters[int(index)]
        if tensor.shape == parameter.shape:  # moments follow the parameter; `step` does not
            tensor = shard_like(tensor, parameter)
        state.setdefault(int(index), {})[key] = tensor
    return {"state": state, "param_groups": rest["param_groups"]}


def _optimized_parameters(session: Session) -> list[torch.Tensor]:
    """The optimizer's parameters in the order its state dict numbers them."""
    return [p for group in session.optimizer.param_groups for p in group["params"]]


def _torch_rng_state() -> dict[str, torch.Tensor]:
    state = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.stack(torch.cuda.get_rng_state_all())
    return state


def _set_torch_rng_state(state: dict[str, torch.Tensor]) -> None:
    torch.set_rng_state(state["cpu"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(list(state["cuda"]))


def _numpy_rng_state() -> list[Any]:
    name, keys, position, has_gauss, cached = np.random.get_state()
    return [name, keys.tolist(), position, has_gauss, cached]


def _set_numpy_rng_state(state: list[Any]) -> None:
    name, keys, position, has_gauss, cached = state
    np.random.set_state((name, np.array(keys, dtype=np.uint32), position, has_gauss, cached))
