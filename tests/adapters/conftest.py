"""Tiny models (the shared builders of tests/helpers/tiny.py) and inputs for the adapter tests."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from tests.helpers.tiny import TINY_VOCAB, tiny_bert, tiny_gpt2, tiny_llama, tiny_t5

VOCAB = TINY_VOCAB
BUILDERS = {"t5": tiny_t5, "llama": tiny_llama, "bert": tiny_bert, "gpt2": tiny_gpt2}


class OneLinear(nn.Module):
    """A model of one linear layer named ``proj``: an adapter on it is one AdapterLayer."""

    def __init__(self, d_in: int, d_out: int) -> None:
        super().__init__()
        self.proj = nn.Linear(d_in, d_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x)


def model_inputs(family: str, batch: int, seed: int = 0) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, VOCAB, (batch, 6), generator=generator)
    if family == "t5":
        return {"input_ids": ids, "decoder_input_ids": ids[:, :3]}
    return {"input_ids": ids}


def output_of(model: torch.nn.Module, inputs: dict, **kwargs) -> torch.Tensor:
    out = model(**inputs, **kwargs)
    return (
        out.logits if hasattr(out, "logits") and out.logits is not None else out.last_hidden_state
    )


def randomize_adapter(adapter, seed: int = 0, scale: float = 0.2) -> None:
    """B starts at zero (as LoRA); give every adapter tensor values so updates are visible.

    Merge tests use a small ``scale``: fp32 rounding grows with the size of the update.
    """
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in adapter.state_dict().values():
            if param.is_floating_point():
                param.copy_(torch.randn(param.shape, generator=generator) * scale)


@pytest.fixture(params=sorted(BUILDERS))
def family(request) -> str:
    return request.param
