"""Tiny models built from configs, for the adapter tests (no tokenizer, no download)."""

from __future__ import annotations

import pytest
import torch
from transformers import (
    BertConfig,
    BertModel,
    GPT2Config,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
    T5Config,
    T5ForConditionalGeneration,
)

VOCAB = 64


def build_t5() -> torch.nn.Module:
    config = T5Config(
        vocab_size=VOCAB, d_model=16, d_kv=4, d_ff=32, num_layers=2, num_heads=4,
        decoder_start_token_id=0, dropout_rate=0.0,
    )  # fmt: skip
    return T5ForConditionalGeneration(config).eval()


def build_llama() -> torch.nn.Module:
    config = LlamaConfig(
        vocab_size=VOCAB, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2,
    )  # fmt: skip
    return LlamaForCausalLM(config).eval()


def build_bert() -> torch.nn.Module:
    config = BertConfig(
        vocab_size=VOCAB, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
        num_attention_heads=4, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
    )  # fmt: skip
    return BertModel(config).eval()


def build_gpt2() -> torch.nn.Module:
    config = GPT2Config(vocab_size=VOCAB, n_embd=16, n_layer=2, n_head=4, resid_pdrop=0.0,
                        embd_pdrop=0.0, attn_pdrop=0.0)  # fmt: skip
    return GPT2LMHeadModel(config).eval()


BUILDERS = {"t5": build_t5, "llama": build_llama, "bert": build_bert, "gpt2": build_gpt2}


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
