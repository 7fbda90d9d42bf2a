"""Our ``lora`` kind is the peer's LoRA: the same initialisation law as PEFT's, and from the
same factors the same losses and factors after AdamW steps on the same batches. This is the
check behind the quality study's LoRA rows (its PEFT reference row, seed 2023, gives the
same run to 2e-6)."""

from __future__ import annotations

import copy
import math

import torch
from peft import LoraConfig, get_peft_model

from more_cli.adapters import AdapterConfig, inject_adapter
from tests.adapters.conftest import model_inputs
from tests.helpers.tiny import tiny_llama

TARGETS = ["q_proj", "v_proj", "down_proj"]


def _pair(r: int = 4, alpha: float = 8.0):
    ours = tiny_llama().train()
    theirs = copy.deepcopy(ours)
    adapter = inject_adapter(
        ours, AdapterConfig(kind="lora", r=r, alpha=alpha, dropout=0.0, targets=TARGETS), ["t"]
    )
    peft_model = get_peft_model(
        theirs, LoraConfig(r=r, lora_alpha=alpha, lora_dropout=0.0, target_modules=TARGETS)
    )
    peft_layers = {
        name.removeprefix("base_model.model."): module
        for name, module in peft_model.named_modules()
        if hasattr(module, "lora_A") and "default" in getattr(module, "lora_A", {})
    }
    assert set(peft_layers) == set(adapter.layers)
    return ours, adapter, peft_model, peft_layers


def test_initialisation_follows_the_same_law() -> None:
    _, adapter, _, peft_layers = _pair()
    for name, layer in adapter.layers.items():
        peer = peft_layers[name]
        a_ours, a_peer = layer.lora_A.detach(), peer.lora_A["default"].weight.detach()
        bound = 1.0 / math.sqrt(layer.d_in)  # Kaiming-uniform with a = sqrt(5)
        assert a_ours.shape == a_peer.shape
        assert a_ours.abs().max() <= bound and a_peer.abs().max() <= bound
        assert torch.count_nonzero(layer.lora_B) == 0
        assert torch.count_nonzero(peer.lora_B["default"].weight) == 0


def test_same_factors_train_to_the_same_losses_and_factors() -> None:
    ours, adapter, peft_model, peft_layers = _pair()
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, layer in adapter.layers.items():
            layer.lora_B.copy_(torch.randn(layer.lora_B.shape, generator=generator) * 0.1)
            peft_layers[name].lora_A["default"].weight.copy_(layer.lora_A)
            peft_layers[name].lora_B["default"].weight.copy_(layer.lora_B)
    mine = [p for p in ours.parameters() if p.requires_grad]
    peer = [p for p in peft_model.parameters() if p.requires_grad]
    assert len(mine) == len(peer) == 2 * len(TARGETS) * 2  # A and B, per target, 2 layers
    optimizers = torch.optim.AdamW(mine, lr=1e-2), torch.optim.AdamW(peer, lr=1e-2)
    for step in range(3):
        inputs = model_inputs("llama", batch=2, seed=step)
        labels = inputs["input_ids"]
        loss_ours = ours(**inputs, labels=labels, task_ids=torch.zeros(2, dtype=torch.long)).loss
        loss_peer = peft_model(**inputs, labels=labels).loss
        torch.testing.assert_close(loss_ours, loss_peer, rtol=1e-5, atol=1e-6)
        for model_loss, optimizer in zip((loss_ours, loss_peer), optimizers, strict=True):
            optimizer.zero_grad()
            model_loss.backward()
            optimizer.step()
    for name, layer in adapter.layers.items():
        peer_layer = peft_layers[name]
        torch.testing.assert_close(layer.lora_A, peer_layer.lora_A["default"].weight)
        torch.testing.assert_close(layer.lora_B, peer_layer.lora_B["default"].weight)
