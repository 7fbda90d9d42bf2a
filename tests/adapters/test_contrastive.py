"""The contrastive loss is method.md §3's per-layer InfoNCE, averaged over adapted layers."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from more_cli.adapters import AdapterConfig, inject_adapter
from tests.adapters.conftest import BUILDERS, model_inputs, randomize_adapter

TASKS = ["alpha", "beta", "gamma"]


def per_layer_reference(adapter, inputs: dict[int, torch.Tensor], task_ids) -> torch.Tensor:
    """The loss written out layer by layer, from each adapted layer's recorded input."""
    router, temperature = adapter.router, adapter.config.cl_temperature
    losses = []
    for layer in adapter.layers.values():
        x = inputs[layer.index]
        summary = x.mean(dim=1) if layer.cl_pooling == "mean" else x[:, 0, :]
        group = next(i for i, members in enumerate(router.group_layers) if layer.index in members)
        owner = router.groups[group]
        if owner.embedding is None:
            bank, summary = router.shared_embedding, summary @ owner.cl_projection.T
        else:
            bank = owner.embedding[router.group_layers[group].index(layer.index)]
        similarity = F.normalize(summary, dim=-1) @ F.normalize(bank, dim=-1).T
        losses.append(F.cross_entropy(similarity / temperature, task_ids))
    return torch.stack(losses).mean()


@pytest.mark.parametrize(
    ("family", "task_embedding"), [("t5", "per_layer"), ("bert", "per_layer"), ("t5", "shared")]
)
def test_batched_loss_equals_the_per_layer_definition(family: str, task_embedding: str) -> None:
    model = BUILDERS[family]()
    config = AdapterConfig(r=4, dropout=0.0, task_embedding=task_embedding, task_embedding_dim=8)
    adapter = inject_adapter(model, config, TASKS)
    randomize_adapter(adapter)
    recorded: dict[int, torch.Tensor] = {}
    for layer in adapter.layers.values():
        layer.register_forward_pre_hook(
            lambda module, args: recorded.__setitem__(module.index, args[0].detach())
        )
    model.train()
    task_ids = torch.tensor([0, 2, 1, 2])
    model(**model_inputs(family, batch=4), task_ids=task_ids)
    got = adapter.auxiliary_loss()
    assert len(recorded) == len(adapter.layers)
    torch.testing.assert_close(got, per_layer_reference(adapter, recorded, task_ids))


def test_no_loss_outside_training_or_without_weight() -> None:
    model = BUILDERS["llama"]()
    adapter = inject_adapter(model, AdapterConfig(r=4), TASKS)
    inputs = model_inputs("llama", batch=2)
    model.eval()
    model(**inputs, task_ids=torch.tensor([0, 1]))
    assert adapter.auxiliary_loss() is None
    model = BUILDERS["llama"]()
    adapter = inject_adapter(model, AdapterConfig(r=4, cl_weight=0.0), TASKS)
    model.train()
    model(**inputs, task_ids=torch.tensor([0, 1]))
    assert adapter.auxiliary_loss() is None
