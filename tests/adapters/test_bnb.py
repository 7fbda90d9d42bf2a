"""The adapter around a bitsandbytes 4-bit base (bitsandbytes 0.50 runs NF4 on the CPU)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from more_cli.adapters import AdapterConfig, base_layers, inject_adapter
from tests.adapters.conftest import randomize_adapter

bnb = pytest.importorskip("bitsandbytes")


class TwoLayers(nn.Module):
    def __init__(self, linear: type, **kwargs) -> None:
        super().__init__()
        # Widths are multiples of the 4-bit block size (64), as in real models.
        self.up = linear(64, 128, **kwargs)
        self.down = linear(128, 64, **kwargs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down(torch.relu(self.up(x)))


def quantized_pair() -> tuple[nn.Module, nn.Module]:
    torch.manual_seed(0)
    full = TwoLayers(nn.Linear)
    quantized = TwoLayers(bnb.nn.Linear4bit, compute_dtype=torch.float32, quant_type="nf4")
    quantized.load_state_dict(full.state_dict())
    return full, quantized.to("cpu")  # moving to a device quantizes the weights


def test_layer_trains_around_a_4bit_base() -> None:
    _, model = quantized_pair()
    adapter = inject_adapter(
        model, AdapterConfig(kind="more", r=4, targets=["up", "down"]), ["a", "b"]
    )
    assert {type(layer.base_layer).__name__ for layer in adapter.layers.values()} == {"Linear4bit"}
    optimizer = torch.optim.AdamW(adapter.named_trainable_parameters().values(), lr=1e-2)
    x, target = torch.randn(8, 64), torch.randn(8, 64)
    task_ids = torch.tensor([0, 1] * 4)
    losses = []
    for _ in range(10):
        loss = nn.functional.mse_loss(model(x, task_ids=task_ids), target)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]


def test_merge_from_4bit_goes_into_a_dequantized_copy() -> None:
    _, model = quantized_pair()
    adapter = inject_adapter(
        model, AdapterConfig(kind="more", r=4, targets=["up", "down"]), ["a", "b"]
    )
    randomize_adapter(adapter)
    model.eval()
    x = torch.randn(4, 64)
    with torch.no_grad():
        expected = model(x, task_ids=torch.tensor([1] * 4))  # runs the CPU 4-bit kernel
        with pytest.raises(ValueError, match="cannot merge into 4-bit"):
            adapter.merge("b")
        dequantized = {
            name: base_layers.dense_weight(layer.base_layer).clone()
            for name, layer in adapter.layers.items()
        }
        deltas = adapter.delta_weights("b")
        plain = adapter.merge_and_unload("b")
        got = plain(x)
    assert isinstance(plain.up, nn.Linear) and plain.up.weight.dtype == torch.float32
    for name in ("up", "down"):
        merged = plain.get_submodule(name).weight
        torch.testing.assert_close(merged, dequantized[name] + deltas[name], atol=1e-6, rtol=0)
    # bitsandbytes' CPU kernel computes in bf16 with bf16 absmax: outputs agree to its precision.
    torch.testing.assert_close(got, expected, atol=5e-2, rtol=5e-2)
