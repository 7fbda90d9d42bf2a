"""The peer the benchmarks measure against: PEFT's own LoRA, on the same layers with the same
r, alpha and dropout as this project's adapters. For speed, PEFT models (one adapter for
training; one, or one per task mixed in a batch through ``adapter_names``, for inference);
for quality, PEFT's LoRA layer computing the update inside this project's training run
(:func:`use_peft_lora_layers`)."""

from __future__ import annotations

from collections.abc import Callable

import torch

from benchmarks.common import adamw, inference_call
from more_cli.adapters import AdapterConfig
from more_cli.adapters.config import TARGET_PRESETS
from more_cli.adapters.layer import AdapterLayer

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


_OWN_FORWARD = AdapterLayer.forward


def use_peft_lora_layers() -> None:
    """From now on in this process, every ``lora`` adapter layer's output is computed by
    PEFT's own LoRA layer (``peft.tuners.lora.Linear``, its dropout, scaling and forward)
    around the same frozen base layer, holding the layer's own factors as its weights.

    The optimizer, checkpoints and evaluation keep working on the project's parameters
    (they are the same tensors), so a run of the quality study trains PEFT's LoRA with
    everything else exactly as for the ``lora`` row: data, heads, schedule, selection.
    Meant for a benchmark worker process, which trains one run and exits.
    """
    AdapterLayer.forward = _peft_forward


def _peft_forward(self: AdapterLayer, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
    if self.kind != "lora" or self.context.merged_task is not None:
        return _OWN_FORWARD(self, x, *args, **kwargs)
    peer = self.__dict__.get("peft_layer") or _attach_peft_layer(self)
    peer.train(self.training)
    return peer(x, *args, **kwargs)


def _attach_peft_layer(layer: AdapterLayer) -> torch.nn.Module:
    """PEFT's LoRA layer around ``layer.base_layer`` whose factors are ``layer``'s own
    parameters, kept on ``layer`` outside its submodules (its state dict stays the same)."""
    from peft import LoraConfig
    from peft.tuners.lora import Linear

    alpha, dropout = layer.scaling * layer.r, getattr(layer.dropout, "p", 0.0)
    config = LoraConfig(r=layer.r, lora_alpha=alpha, lora_dropout=dropout)
    # PEFT draws its own initial factors, about to be replaced: not from this run's RNG,
    # which the dropout masks and the batches go on drawing from.
    with torch.random.fork_rng():
        peer = Linear(layer.base_layer, "default", config=config, r=layer.r, lora_alpha=alpha)
    peer.lora_A["default"].weight = layer.lora_A
    peer.lora_B["default"].weight = layer.lora_B
    object.__setattr__(layer, "peft_layer", peer)
    return peer
