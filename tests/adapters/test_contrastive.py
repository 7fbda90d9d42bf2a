"""The contrastive loss is method.md §3's per-layer InfoNCE, averaged over adapted layers,
weighted by cl_weight, pooled over real tokens only, and MoRE's alone."""

from __future__ import annotations

import re

import pytest
import torch
import torch.nn.functional as F

from more_cli.adapters import AdapterConfig, inject_adapter
from tests.adapters.conftest import BUILDERS, model_inputs, randomize_adapter
from tests.helpers.kinds import KINDS, adapter_config

TASKS = ["alpha", "beta", "gamma"]
PAPER_CL = 0.1  # the paper's weight; MoRE's default is 0, the loss off
# Written out independently of the code: T5 decoder block 0's self-attention and
# cross-attention query see only the start token at position 0.
SAME_FOR_EVERY_SAMPLE = re.compile(
    r"decoder\.block\.0\.layer\.0\.SelfAttention\.[qkvo]|decoder\.block\.0\.layer\.1\.EncDecAttention\.q"
)


def per_layer_reference(
    adapter, inputs: dict[int, torch.Tensor], task_ids, mask: torch.Tensor | None = None
) -> torch.Tensor:
    """The loss written out layer by layer, from each adapted layer's recorded input."""
    router, temperature = adapter.router, adapter.config.cl_temperature
    losses = []
    for path, layer in adapter.layers.items():
        if SAME_FOR_EVERY_SAMPLE.fullmatch(path):
            continue
        x = inputs[layer.index]
        if layer.cl_pooling == "first":
            summary = x[:, 0, :]
        elif mask is None:
            summary = x.mean(dim=1)
        else:
            summary = torch.stack([x[b, mask[b].bool()].mean(0) for b in range(x.shape[0])])
        group = next(i for i, members in enumerate(router.group_layers) if layer.index in members)
        owner = router.groups[group]
        if owner.embedding is None:
            bank, summary = router.shared_embedding, summary @ owner.cl_projection.T
        else:
            bank = owner.embedding[router.group_layers[group].index(layer.index)]
        similarity = F.normalize(summary, dim=-1) @ F.normalize(bank, dim=-1).T
        losses.append(F.cross_entropy(similarity / temperature, task_ids))
    return adapter.config.cl_weight * torch.stack(losses).mean()


def recorded_inputs(adapter) -> dict[int, torch.Tensor]:
    recorded: dict[int, torch.Tensor] = {}
    for layer in adapter.layers.values():
        layer.register_forward_pre_hook(
            lambda module, args: recorded.__setitem__(module.index, args[0].detach())
        )
    return recorded


@pytest.mark.parametrize(
    ("family", "task_embedding"), [("t5", "per_layer"), ("bert", "per_layer"), ("t5", "shared")]
)
def test_batched_loss_equals_the_per_layer_definition(family: str, task_embedding: str) -> None:
    model = BUILDERS[family]()
    dim = {"task_embedding_dim": 8} if task_embedding == "shared" else {}
    config = AdapterConfig(r=4, dropout=0.0, cl_weight=0.3, task_embedding=task_embedding, **dim)
    adapter = inject_adapter(model, config, TASKS)
    randomize_adapter(adapter)
    recorded = recorded_inputs(adapter)
    model.train()
    task_ids = torch.tensor([0, 2, 1, 2])
    model(**model_inputs(family, batch=4), task_ids=task_ids)
    got = adapter.auxiliary_loss()
    assert len(recorded) == len(adapter.layers)
    torch.testing.assert_close(got, per_layer_reference(adapter, recorded, task_ids))


def test_t5_decoder_block_0_layers_that_see_only_the_start_token_are_left_out() -> None:
    adapter = inject_adapter(BUILDERS["t5"](), AdapterConfig(r=4, cl_weight=PAPER_CL), TASKS)
    left_out = sorted(path for path, layer in adapter.layers.items() if not layer.summarises)
    assert left_out == sorted(p for p in adapter.layers if SAME_FOR_EVERY_SAMPLE.fullmatch(p))
    assert len(left_out) == 5
    model = adapter.model.train()
    model(**model_inputs("t5", batch=3), task_ids=torch.tensor([0, 1, 2]))
    assert set(adapter.context.summaries) == {
        layer.index for path, layer in adapter.layers.items() if path not in left_out
    }


@pytest.mark.parametrize("family", ["bert", "llama"])
def test_mean_pooling_leaves_padding_out(family: str) -> None:
    """Padded positions change neither the loss nor its reference, whatever they hold."""
    model = BUILDERS[family]()
    adapter = inject_adapter(model, AdapterConfig(r=4, dropout=0.0, cl_weight=PAPER_CL), TASKS)
    randomize_adapter(adapter)
    recorded = recorded_inputs(adapter)
    model.train()
    ids = model_inputs(family, batch=3)["input_ids"]
    mask = torch.ones_like(ids)
    mask[0, 3:] = 0
    mask[2, 5:] = 0
    task_ids = torch.tensor([0, 1, 2])
    model(input_ids=ids, attention_mask=mask, task_ids=task_ids)
    got = adapter.auxiliary_loss()
    torch.testing.assert_close(got, per_layer_reference(adapter, recorded, task_ids, mask))
    assert not torch.allclose(got, per_layer_reference(adapter, recorded, task_ids))
    other = ids.clone()
    other[0, 3:] = 7  # other tokens where the mask is 0
    model(input_ids=other, attention_mask=mask, task_ids=task_ids)
    if family == "llama":  # causal: padding at the end never reaches the real positions
        torch.testing.assert_close(adapter.auxiliary_loss(), got)


def test_no_loss_outside_training_or_without_weight() -> None:
    model = BUILDERS["llama"]()
    adapter = inject_adapter(model, AdapterConfig(r=4, cl_weight=PAPER_CL), TASKS)
    inputs = model_inputs("llama", batch=2)
    model.eval()
    model(**inputs, task_ids=torch.tensor([0, 1]))
    assert adapter.auxiliary_loss() is None
    model = BUILDERS["llama"]()
    adapter = inject_adapter(model, AdapterConfig(r=4), TASKS)  # the default: off
    model.train()
    model(**inputs, task_ids=torch.tensor([0, 1]))
    assert adapter.auxiliary_loss() is None


@pytest.mark.parametrize("kind", [k for k in KINDS if k != "more"])
def test_only_more_trains_with_the_contrastive_loss(kind: str) -> None:
    """Each baseline trains with its own paper's objective: no layer summarises its input,
    and only mosld (load balancing) has an auxiliary loss at all."""
    model = BUILDERS["llama"]()
    adapter = inject_adapter(model, adapter_config(kind, r=4, num_experts=2), TASKS)
    model.train()
    model(**model_inputs("llama", batch=3), task_ids=torch.tensor([0, 1, 2]))
    assert adapter.context.summaries == {}
    assert not any(layer.summarises for layer in adapter.layers.values())
    assert (adapter.auxiliary_loss() is not None) == (kind == "mosld")


@pytest.mark.parametrize("detach", [False, True])
def test_detached_inputs_keep_the_loss_and_train_only_the_task_embeddings(detach: bool) -> None:
    losses, grads = [], []
    for detach_inputs in (False, detach):
        torch.manual_seed(0)
        model = BUILDERS["bert"]()
        config = AdapterConfig(
            kind="more", r=4, dropout=0.0, cl_weight=PAPER_CL, cl_detach_inputs=detach_inputs
        )
        adapter = inject_adapter(model, config, TASKS)
        randomize_adapter(adapter)
        model.train()
        model(**model_inputs("bert", batch=3), task_ids=torch.tensor([0, 1, 2]))
        loss = adapter.auxiliary_loss()
        loss.backward()
        losses.append(loss.detach())
        grads.append({k: p.grad for k, p in adapter.named_trainable_parameters().items()})
    torch.testing.assert_close(losses[0], losses[1])
    lora = [g for k, g in grads[1].items() if "lora_" in k]
    embeddings = [g for k, g in grads[1].items() if "embedding" in k]
    assert embeddings and all(g is not None and g.abs().sum() > 0 for g in embeddings)
    reached = any(g is not None and g.abs().sum() > 0 for g in lora)
    assert reached is not detach
