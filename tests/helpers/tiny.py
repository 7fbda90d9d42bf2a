"""Tiny, deterministic tokenizers and models for fast tests (no downloads).

``tiny_tokenizer()`` is a word-level tokenizer over a fixed vocabulary (task prefixes, field
names, every label word, the demo vocabularies, digits and letters); ``<pad>`` = 0,
``</s>`` = 1, ``<unk>`` = 2, ``<s>`` = 3. The models are randomly initialised from a fixed
seed with ``vocab_size`` = ``TINY_VOCAB`` (enough room for every tokenizer id).
"""

from __future__ import annotations

import torch
from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
from transformers import (
    BertConfig,
    BertModel,
    GPT2Config,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedTokenizerFast,
    T5Config,
    T5ForConditionalGeneration,
)

from more_cli.tasks import demo

TINY_VOCAB = 1000
SPECIAL = ["<pad>", "</s>", "<unk>", "<s>"]
_WORD_TEXT = """
cola sst2 mrpc qqp stsb mnli qnli rte boolq cb scitail piqa openbookqa arc_easy arc_challenge
demo_sentiment demo_topic demo_similarity sentence sentence1 sentence2 question question1
question2 hypothesis premise passage review text goal options
acceptable unacceptable positive negative equivalent not_equivalent duplicate not_duplicate
entailment not_entailment neutral contradiction true false yes no
a b c d e 0 1 2 3 4 5 6 7 8 9 . , : ( ) ? ! ' -
the is was not it this that and of to in for on with as at by an be are good bad
"""


def _vocabulary() -> list[str]:
    words = set(_WORD_TEXT.split())
    for group in (demo.POSITIVE, demo.NEGATIVE, demo.SUBJECTS, demo.INTENSIFIERS):
        words.update(group)
    for group in (*demo.TOPICS.values(), demo.TOPICS, demo.FILLERS, demo.SIMILARITY_WORDS):
        words.update(group)
    words.update(demo.NEGATIONS)
    words.discard("")
    return SPECIAL + sorted(words)


def tiny_tokenizer(add_eos: bool = True) -> PreTrainedTokenizerFast:
    """Word-level, lowercasing; appends ``</s>`` to every input unless ``add_eos`` is False."""
    vocab = {word: index for index, word in enumerate(_vocabulary())}
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tokenizer.normalizer = normalizers.Lowercase()
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    if add_eos:
        tokenizer.post_processor = processors.TemplateProcessing(
            single="$A </s>", pair="$A </s> $B </s>", special_tokens=[("</s>", 1)]
        )
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        pad_token="<pad>",
        eos_token="</s>",
        unk_token="<unk>",
        bos_token="<s>",
    )


def tiny_t5(seed: int = 0) -> T5ForConditionalGeneration:
    torch.manual_seed(seed)
    config = T5Config(
        vocab_size=TINY_VOCAB,
        d_model=32,
        d_kv=8,
        d_ff=64,
        num_layers=2,
        num_decoder_layers=2,
        num_heads=4,
        pad_token_id=0,
        eos_token_id=1,
        decoder_start_token_id=0,
    )
    return T5ForConditionalGeneration(config).eval()


def tiny_llama(seed: int = 0) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=TINY_VOCAB,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        pad_token_id=0,
        eos_token_id=1,
        bos_token_id=3,
    )
    return LlamaForCausalLM(config).eval()


def tiny_gpt2(seed: int = 0) -> GPT2LMHeadModel:
    torch.manual_seed(seed)
    config = GPT2Config(
        vocab_size=TINY_VOCAB,
        n_embd=32,
        n_layer=2,
        n_head=4,
        n_positions=512,
        bos_token_id=3,
        eos_token_id=1,
        pad_token_id=0,
    )
    return GPT2LMHeadModel(config).eval()


def tiny_bert(seed: int = 0) -> BertModel:
    """A bare BERT encoder (no head); the encoder family puts task heads on top."""
    torch.manual_seed(seed)
    config = BertConfig(
        vocab_size=TINY_VOCAB,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=512,
        pad_token_id=0,
    )
    return BertModel(config).eval()


def accept_task_ids(model: torch.nn.Module) -> torch.nn.Module:
    """Let a bare model take (and ignore) ``task_ids=``, as the adapter's pre-hook does."""

    def drop_task_ids(module, args, kwargs):
        kwargs.pop("task_ids", None)
        return args, kwargs

    model.register_forward_pre_hook(drop_task_ids, with_kwargs=True)
    return model
