"""Load a finished run (or one of its checkpoints) back into memory: recipe, base, adapter, heads.

Used by ``more eval``, ``more merge``, ``more inspect`` and ``more predict``::

    run = load_run("runs/glue")                          # RUN_DIR/adapter
    run = load_run("runs/glue", checkpoint="step-2000")  # RUN_DIR/checkpoints/step-2000/adapter
    with run.adapter.task_context("rte"):
        run.model(**batch)

Base weights of a run trained on a 4-bit base can be loaded three ways (``base_weights``):

- ``as_trained``: 4-bit, exactly as in training.
- ``full_precision``: the original checkpoint in ``model.dtype``, never quantized.
- ``nf4_roundtrip``: quantized as in training, then dequantized to float32, so the weights are
  the ones the adapter was trained against but live in ordinary ``nn.Linear`` layers.

For a run on a full-precision base all three load the same model.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
from torch import nn
from transformers import PreTrainedTokenizerBase

from more_cli.adapters import MultiTaskAdapter, inject_adapter, load_adapter_weights
from more_cli.adapters.state import check_same_adapter, read_weights, verify_adapter_folder
from more_cli.errors import UserError
from more_cli.modeling import (
    HEADS_FILE,
    Family,
    HeadSpec,
    LoadedBase,
    adapter_host,
    load_base,
    load_heads,
)
from more_cli.recipe import Recipe
from more_cli.recipe_io import load_recipe
from more_cli.rundir import RunDir, resolve_checkpoint

BaseWeights = Literal["as_trained", "full_precision", "nf4_roundtrip"]


@dataclass
class LoadedRun:
    """A run in memory. ``model`` is a :class:`TaskHeadModel` for encoders.

    ``source`` is the adapter folder that was loaded; ``label_names`` holds the label words
    of each classification task (None for regression or when the task is unavailable).
    """

    root: Path
    recipe: Recipe
    model: nn.Module
    tokenizer: PreTrainedTokenizerBase
    family: Family
    adapter: MultiTaskAdapter
    source: Path
    base_weights: BaseWeights
    label_names: dict[str, list[str] | None]

    @property
    def host(self) -> nn.Module:
        """The Hugging Face model holding the adapter (the backbone for encoders)."""
        return adapter_host(self.model)

    @property
    def was_4bit(self) -> bool:
        return self.recipe.model.load_in_4bit


def adapter_source(run_dir: str | Path, checkpoint: str | None = None) -> Path:
    """``RUN_DIR/adapter``, or ``RUN_DIR/checkpoints/<checkpoint>/adapter``, checked to exist
    and to match its manifest."""
    run = RunDir(Path(run_dir))
    if not run.recipe.is_file():
        raise UserError(
            f"{run.root} is not a run directory (no {run.recipe.name})",
            details=["point at a folder written by `more train`"],
        )
    source = resolve_checkpoint(run, checkpoint) / "adapter" if checkpoint else run.adapter
    if not source.is_dir():
        raise UserError(
            f"{run.root} has no final adapter yet",
            details=["finish or resume the run, or use a checkpoint with --checkpoint step-N"],
        )
    verify_adapter_folder(source)
    return source


def load_run(
    run_dir: str | Path,
    checkpoint: str | None = None,
    *,
    base_weights: BaseWeights = "as_trained",
) -> LoadedRun:
    """Load the resolved recipe, the base model, the adapter and (encoders) the task heads.

    Args:
        run_dir: a run directory written by ``more train``.
        checkpoint: ``step-N`` (or ``N``) to load that checkpoint instead of ``adapter/``.
        base_weights: how a 4-bit base is loaded (see the module docstring).

    Raises:
        UserError: not a run directory, no such checkpoint, or files that do not fit.
    """
    source = adapter_source(run_dir, checkpoint)
    run = RunDir(Path(run_dir))
    recipe = load_recipe(run.recipe, resolved=True)
    # Label words matter only where there are task heads (encoders): built for those alone.
    label_names = _label_names(recipe) if (source / HEADS_FILE).is_file() else {}
    heads = _head_specs(source, recipe, label_names)
    model, tokenizer, family = load_base_as(recipe, base_weights, heads)
    adapter = inject_adapter(adapter_host(model), recipe.adapter, recipe.task_names)
    check_same_adapter(adapter, source)  # the run's own adapter, not one from elsewhere
    load_adapter_weights(adapter, source)
    load_heads(model, source)
    return LoadedRun(
        root=run.root,
        recipe=recipe,
        model=model,
        tokenizer=tokenizer,
        family=family,
        adapter=adapter,
        source=source,
        base_weights=base_weights,
        label_names=label_names,
    )


def load_base_as(
    recipe: Recipe, base_weights: BaseWeights, heads: list[HeadSpec] | None
) -> LoadedBase:
    """The run's base model (no adapter) in eval mode; 4-bit weights as ``base_weights`` says."""
    model_cfg = recipe.model
    if model_cfg.load_in_4bit and base_weights == "full_precision":
        model_cfg = model_cfg.model_copy(update={"load_in_4bit": False})
    loaded = load_base(model_cfg, heads)
    # load_base passes the 4-bit loading arguments to the tokenizer too; they are not JSON
    # and would break tokenizer.save_pretrained in exports.
    for key in ("quantization_config", "device_map"):
        loaded.tokenizer.init_kwargs.pop(key, None)
    if model_cfg.load_in_4bit and base_weights == "nf4_roundtrip":
        adapter_host(loaded.model).dequantize(dtype=torch.float32)
    loaded.model.eval()
    return loaded


def _head_specs(
    source: Path, recipe: Recipe, label_names: dict[str, list[str] | None]
) -> list[HeadSpec] | None:
    """Encoder heads as saved (width 1 = regression), so no task data is needed to export;
    where the task's labels are known, a head of another width is refused."""
    path = source / HEADS_FILE
    if not path.is_file():
        return None
    tensors = read_weights(path)
    specs = []
    for task in recipe.task_names:
        weight, bias = tensors.get(f"{task}.weight"), tensors.get(f"{task}.bias")
        if weight is None or weight.dim() != 2:
            raise UserError(f"{path} holds no head for task {task!r}; the file is incomplete")
        width = weight.shape[0]
        labels = label_names.get(task)
        expected = len(labels) if labels else width
        if width != expected or (bias is not None and tuple(bias.shape) != (width,)):
            raise UserError(
                f"{path}: the head of task {task!r} has shape {tuple(weight.shape)}, not "
                f"{expected} outputs for its {expected} labels; the file is damaged"
            )
        specs.append(HeadSpec(task, None if width == 1 else width))
    return specs


def _label_names(recipe: Recipe) -> dict[str, list[str] | None]:
    """Label words per task from the task registry; None where the task cannot be built
    (e.g. its data folder moved) — exports then fall back to ``LABEL_<i>``."""
    from more_cli.tasks import get_task

    names: dict[str, list[str] | None] = {}
    for cfg in recipe.tasks:
        try:
            task = get_task(cfg, seed=recipe.train.seed)
        except UserError:
            names[cfg.name] = None
            continue
        names[cfg.name] = None if task.label_words is None else list(task.label_words)
    return names
