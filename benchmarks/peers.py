"""The peer the speed benchmark measures against: PEFT's own LoRA, on the same layers with
the same r, alpha and dropout as this project's adapters (one adapter for training; one, or
one per task mixed in a batch through ``adapter_names``, for inference)."""

from __future__ import annotations

from collections.abc import Callable

import torch

from benchmarks.common import adamw, inference_call
from more_cli.adapters import AdapterConfig
from more_cli.adapters.config import TARGET_PRESETS

PEERS_TRAIN = ("peft_lora",)
PEERS_INFER = ("peft_lora", "peft_mixed")


def peft_model(base: torch.nn.Module, family: str, r: int, adapters: int = 1) -> torch.nn.Module:
    """``base`` with PEFT LoRA adapters ``task0`` … (the first one active)."""
    from peft import LoraConfig, get_peft_model

    defaults = AdapterConfig(r=r)
    config = LoraConfig(
        r=r, lora_alpha=defaults.alpha, lora_dropout=defaults.dropout,
        target_modules=[t for t in TARGET_PRESETS[family] if _present(base, t)],
    )  # fmt: skip
    model = get_peft_model(base, config, adapter_name="task0")
    for index in range(1, adapters):
        model.add_adapter(f"task{index}", config)
    return model


def _present(model: torch.nn.Module, leaf: str) -> bool:
    return any(name.rsplit(".", 1)[-1] == leaf for name, _ in model.named_modules())


def peft_train_step(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> Callable[[], None]:
    """One AdamW step of the active PEFT adapter, as :func:`benchmarks.speed.train_step`."""
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = adamw(params)

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        model(**batch).loss.backward()
        optimizer.step()

    return step


def peft_forward(
    model: torch.nn.Module, batch: dict[str, torch.Tensor], task_ids: torch.Tensor | None
) -> Callable[[], None]:
    """Inference with the active adapter, or (``task_ids``) each sample's own adapter."""
    names = None if task_ids is None else [f"task{t}" for t in task_ids.tolist()]
    return inference_call(model, batch, {} if names is None else {"adapter_names": names})
