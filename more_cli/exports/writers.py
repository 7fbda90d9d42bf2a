"""Writing one task's exports: the PEFT LoRA adapter and the merged Hugging Face checkpoint.

``export_peft`` / ``export_merged`` write one folder through a temporary sibling renamed into
place; ``write_peft`` / ``write_merged`` fill a folder the caller stages (``more merge``
verifies both staged folders before either replaces what was there)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch
from huggingface_hub import ModelCard
from safetensors.torch import save_file
from torch import nn
from transformers.pytorch_utils import Conv1D

from more_cli.adapters import MultiTaskAdapter, base_layers
from more_cli.errors import UserError
from more_cli.exports.cards import CARD_FILE
from more_cli.exports.factors import lora_factors
from more_cli.exports.heads import TaskHead, task_head
from more_cli.integrity import write_manifest
from more_cli.modeling import (
    Family,
)
from more_cli.run_loading import (
    LoadedRun,
)
from more_cli.rundir import atomic_directory

PEFT_TASK_TYPES: dict[str, str] = {
    "seq2seq": "SEQ_2_SEQ_LM",
    "decoder": "CAUSAL_LM",
    "encoder": "FEATURE_EXTRACTION",
}


DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


EXPORT_DESCRIPTION = "more_export.json"


_SHARD_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(B|KB|MB|GB|TB|KIB|MIB|GIB|TIB)\s*$", re.I)


def export_peft(
    adapter: MultiTaskAdapter,
    task: str,
    out_dir: str | Path,
    base_model_name_or_path: str,
    *,
    family: Family,
    dtype: torch.dtype = torch.float32,
    head: TaskHead | None = None,
    card: ModelCard | None = None,
    force: bool = False,
) -> Path:
    """Write ``task``'s update as a standard PEFT LoRA adapter into ``out_dir`` (with
    ``card`` as its ``README.md``), through a temporary sibling folder.

    Module paths are those of the model the adapter was injected into (the backbone for
    encoders), so ``PeftModel.from_pretrained(<that base model>, out_dir)`` loads it.

    Raises:
        UserError: ``out_dir`` exists and ``force`` is False.
    """
    out_dir = Path(out_dir)
    refuse_existing(out_dir, force)
    with atomic_directory(out_dir) as temporary:
        write_peft(
            adapter, task, temporary, base_model_name_or_path,
            family=family, dtype=dtype, head=head, card=card,
        )  # fmt: skip
    return out_dir


def write_peft(
    adapter: MultiTaskAdapter,
    task: str,
    directory: Path,
    base_model_name_or_path: str,
    *,
    family: Family,
    dtype: torch.dtype = torch.float32,
    head: TaskHead | None = None,
    card: ModelCard | None = None,
) -> None:
    """:func:`export_peft`'s files, written into the existing empty ``directory``."""
    from peft import LoraConfig

    factors = lora_factors(adapter, task)
    ranks = {name: a.shape[0] for name, (a, _) in factors.items()}
    common = max(sorted(set(ranks.values())), key=list(ranks.values()).count)
    different = {name: rank for name, rank in ranks.items() if rank != common}
    config = LoraConfig(
        r=common,
        lora_alpha=common,  # alpha = rank everywhere: PEFT's scaling is 1
        rank_pattern=different,
        alpha_pattern=dict(different),
        target_modules=list(factors),
        lora_dropout=0.0,
        bias="none",
        fan_in_fan_out=any(isinstance(lay.base_layer, Conv1D) for lay in adapter.layers.values()),
        task_type=PEFT_TASK_TYPES[family],
        base_model_name_or_path=base_model_name_or_path,
    )
    tensors = {}
    for name, (a, b) in factors.items():
        tensors[f"base_model.model.{name}.lora_A.weight"] = a.to(dtype).contiguous()
        tensors[f"base_model.model.{name}.lora_B.weight"] = b.to(dtype).contiguous()
    config.save_pretrained(str(directory))
    save_file(tensors, str(directory / "adapter_model.safetensors"), metadata={"format": "pt"})
    if head is not None:
        head.save(directory)
    if card is not None:
        card.save(directory / CARD_FILE)
    write_manifest(directory)


def export_merged(
    run: LoadedRun,
    task: str,
    out_dir: str | Path,
    *,
    dtype: torch.dtype = torch.float32,
    max_shard_size: str = "2GB",
    card: ModelCard | None = None,
    force: bool = False,
) -> Path:
    """Merge ``task``'s update into ``run``'s base and save a plain Hugging Face checkpoint
    (with ``card`` as its ``README.md``).

    The merge consumes ``run``: its adapter is removed and its layers replaced; load the run
    again for another task. The update is added in float32, then the model is cast to
    ``dtype``. The checkpoint holds the tokenizer, the generation config where the model
    generates, a ``more_export.json`` saying where it came from and, for encoder runs, the
    task head (see the module docstring).

    Raises:
        UserError: ``out_dir`` exists and ``force`` is False, or ``max_shard_size`` is malformed.
        ValueError: the run was loaded with 4-bit base weights (load it with
            ``base_weights="full_precision"`` or ``"nf4_roundtrip"``).
    """
    out_dir = Path(out_dir)
    refuse_existing(out_dir, force)
    with atomic_directory(out_dir) as temporary:
        write_merged(run, task, temporary, dtype=dtype, max_shard_size=max_shard_size, card=card)
    return out_dir


def write_merged(
    run: LoadedRun,
    task: str,
    directory: Path,
    *,
    dtype: torch.dtype = torch.float32,
    max_shard_size: str = "2GB",
    card: ModelCard | None = None,
) -> None:
    """:func:`export_merged`'s files, written into the existing empty ``directory``."""
    check_shard_size(max_shard_size)
    if any(base_layers.is_4bit(module) for module in run.host.modules()):
        raise ValueError(
            "the run's base holds 4-bit layers; load it with base_weights='full_precision' or "
            "'nf4_roundtrip' so the update is merged into full-precision weights"
        )
    head = task_head(run, task)
    provenance = _provenance(run, task, dtype)
    merged = run.adapter.merge_and_unload(task, torch.float32)
    merged.to(dtype)
    _refuse_non_finite(merged, task)
    merged.save_pretrained(str(directory), max_shard_size=max_shard_size)
    run.tokenizer.save_pretrained(str(directory))
    if head is not None:
        head.save(directory)
    (directory / EXPORT_DESCRIPTION).write_text(json.dumps(provenance, indent=2) + "\n")
    if card is not None:
        card.save(directory / CARD_FILE)
    write_manifest(directory)


def _refuse_non_finite(model: nn.Module, task: str) -> None:
    """A merged weight that is NaN or infinite (a damaged adapter, an overflow in the cast)
    must not become a checkpoint: nothing is written, the error names the task."""
    broken = [name for name, tensor in model.state_dict().items()
              if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all())]  # fmt: skip
    if broken:
        raise UserError(
            f"task {task}: {len(broken)} merged tensor(s) hold NaN or infinite values (first: "
            f"{broken[0]}); the adapter is damaged or overflows this dtype: nothing was written"
        )


def _provenance(run: LoadedRun, task: str, dtype: torch.dtype) -> dict:
    ranks = run.adapter.chosen_ranks()[task]
    return {
        "run": str(Path(run.root).resolve()),  # wherever `more merge` ran from
        "adapter": str(Path(run.source).resolve()),
        "task": task,
        "kind": run.adapter.config.kind,
        "base_model": run.recipe.model.name,
        "base_weights": describe_base_weights(run),
        "dtype": str(dtype).removeprefix("torch."),
        "ranks": ranks,
    }


def describe_base_weights(run: LoadedRun) -> str:
    """One sentence on which base weights an export of ``run`` holds."""
    if not run.was_4bit:
        return f"the base's own weights ({run.recipe.model.dtype})"
    if run.base_weights == "nf4_roundtrip":
        return (
            "the 4-bit NF4 base dequantized to float32: the weights the adapter was trained against"
        )
    return (
        f"the original full-precision weights of {run.recipe.model.name}, not their NF4 "
        "rounding the adapter was trained against (--nf4-roundtrip merges into those)"
    )


def refuse_existing(out_dir: Path, force: bool) -> None:
    if out_dir.exists() and not force:
        raise UserError(
            f"{out_dir} already exists",
            details=["pass --force (force=True) to replace it, or choose another --out"],
        )


def check_shard_size(text: str) -> None:
    """Accept sizes such as ``2GB``, ``500MB`` or ``1.5GiB`` (what ``save_pretrained`` parses)."""
    if not _SHARD_SIZE.match(text):
        raise UserError(
            f"--max-shard-size {text!r} is not a size",
            details=["write a number and a unit, e.g. 2GB, 500MB or 10GiB"],
        )
