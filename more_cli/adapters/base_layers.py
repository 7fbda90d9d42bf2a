"""What the adapter needs to know about the frozen layers it wraps.

Three kinds of base layer are supported: ``nn.Linear``, GPT-2's ``Conv1D`` (weight stored
transposed, d_in × d_out) and bitsandbytes ``Linear4bit`` (packed 4-bit weight). The rest
of the package only ever sees weights in ``nn.Linear`` layout (d_out × d_in).
"""

from __future__ import annotations

import copy

import torch
from torch import nn
from transformers.pytorch_utils import Conv1D


def is_4bit(layer: nn.Module) -> bool:
    """True for a bitsandbytes 4-bit linear layer (imported lazily: bitsandbytes is optional)."""
    return type(layer).__name__ == "Linear4bit" and hasattr(layer.weight, "quant_state")


def is_supported(layer: nn.Module) -> bool:
    return isinstance(layer, (nn.Linear, Conv1D)) or type(layer).__name__ == "Linear4bit"


def dimensions(layer: nn.Module) -> tuple[int, int]:
    """(d_in, d_out) of a supported base layer."""
    if isinstance(layer, Conv1D):
        return layer.weight.shape[0], layer.weight.shape[1]
    return layer.in_features, layer.out_features


def dense_weight(layer: nn.Module) -> torch.Tensor:
    """The base weight in ``nn.Linear`` layout, dequantized when the layer is 4-bit."""
    if is_4bit(layer):
        import bitsandbytes.functional as bnb_functional

        data, state = layer.weight.data, layer.weight.quant_state
        if getattr(state, "packing_format_for_cpu", False):
            # After a CPU forward, bitsandbytes repacks the weight for its CPU kernel in
            # place; undo that on a copy before dequantizing.
            data, state = bnb_functional._convert_weight_packed_for_cpu_inverse(
                data.clone(), copy.deepcopy(state)
            )
        return bnb_functional.dequantize_4bit(data, state)
    if isinstance(layer, Conv1D):
        return layer.weight.data.T
    return layer.weight.data


def add_to_weight(layer: nn.Module, delta: torch.Tensor) -> None:
    """In place ``W += delta`` (``delta`` in ``nn.Linear`` layout) on a full-precision layer."""
    if is_4bit(layer):
        raise ValueError(
            "cannot merge into 4-bit weights; use merge_and_unload(), which merges into a "
            "dequantized copy"
        )
    weight = layer.weight.data
    update = delta.T if isinstance(layer, Conv1D) else delta
    weight.add_(update.to(device=weight.device, dtype=weight.dtype))


def dequantized_copy(layer: nn.Module, dtype: torch.dtype) -> nn.Module:
    """A plain full-precision copy of ``layer`` (``nn.Linear`` for a 4-bit layer)."""
    d_in, d_out = dimensions(layer)
    if is_4bit(layer):
        plain = nn.Linear(d_in, d_out, bias=layer.bias is not None, dtype=dtype)
        plain.weight.data.copy_(dense_weight(layer).to(dtype))
        if layer.bias is not None:
            plain.bias.data.copy_(layer.bias.data.to(dtype))
        return plain.to(layer.weight.device)
    if isinstance(layer, Conv1D):
        plain = Conv1D(d_out, d_in)
    else:
        plain = nn.Linear(d_in, d_out, bias=layer.bias is not None)
    plain.load_state_dict(layer.state_dict())
    return plain.to(device=layer.weight.device, dtype=dtype)
