"""Each baseline is the method its paper defines (docs/method.md §6): written-out equations,
initialisation, routing, and the kind's own objective."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from more_cli.adapters import AdapterConfig, inject_adapter
from tests.adapters.conftest import BUILDERS, OneLinear, model_inputs, randomize_adapter

TASKS = ["alpha", "beta", "gamma"]


def single_layer(config: AdapterConfig, d_in: int = 12, d_out: int = 10):
    """A one-linear-layer model with the adapter on it, and the adapted layer."""
    model = OneLinear(d_in, d_out)
    adapter = inject_adapter(model, config.model_copy(update={"targets": ["proj"]}), TASKS)
    return model, adapter, adapter.layers["proj"]


# ---------------------------------------------------------------------------------- MultiLoRA


def test_multilora_is_a_sum_of_parallel_loras_with_learnable_scaling() -> None:
    torch.manual_seed(0)
    model, adapter, layer = single_layer(
        AdapterConfig(kind="multilora", r=3, alpha=6, dropout=0.0, num_experts=4)
    )
    assert layer.lora_A.shape == (4, 3, 12) and layer.lora_B.shape == (4, 10, 3)
    assert layer.lora_scale.shape == (4, 10)
    randomize_adapter(adapter)
    x = torch.randn(2, 5, 12)
    expected = layer.base_layer(x) + (6 / 3) * sum(
        layer.lora_scale[i] * (x @ layer.lora_A[i].T @ layer.lora_B[i].T) for i in range(4)
    )
    for task_ids in ([0, 1], [2, 2]):  # shared by all tasks: the task does not matter
        got = model(x, task_ids=torch.tensor(task_ids))
        torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    delta = (6 / 3) * sum(
        layer.lora_scale[i][:, None] * (layer.lora_B[i] @ layer.lora_A[i]) for i in range(4)
    )
    got_delta = adapter.delta_weights("beta")["proj"]
    torch.testing.assert_close(got_delta, delta.detach(), atol=1e-6, rtol=1e-5)


def test_multilora_starts_at_zero_with_kaiming_b_and_zero_scaling() -> None:
    torch.manual_seed(0)
    model, adapter, layer = single_layer(AdapterConfig(kind="multilora", r=4, dropout=0.0))
    assert torch.equal(layer.lora_scale, torch.zeros_like(layer.lora_scale))
    b_bound = 1 / math.sqrt(4)  # Kaiming-uniform (a = √5) over fan_in = r
    assert layer.lora_B.abs().max() <= b_bound and layer.lora_B.abs().min() > 0
    assert layer.lora_A.abs().max() <= 1 / math.sqrt(12)
    x = torch.randn(3, 12)
    out = model(x, task_ids=torch.tensor([0, 1, 2]))
    torch.testing.assert_close(out, layer.base_layer(x))
    out.square().sum().backward()
    assert layer.lora_scale.grad.abs().sum() > 0  # the scaling learns from the first step


# ------------------------------------------------------------------------------------ MOELoRA


def test_moelora_gate_is_one_task_embedding_and_one_bias_free_gate_for_all_layers() -> None:
    adapter = inject_adapter(BUILDERS["t5"](), AdapterConfig(kind="moelora", r=8), TASKS)
    gate = adapter.router
    assert gate.embedding.shape == (3, 64)  # MOELoRA's task_embedding_dim
    assert gate.gate_weight.shape == (4, 64)
    assert not any("bias" in name for name, _ in gate.named_parameters())
    routing = adapter.routing()
    assert routing.shape == (len(adapter.layers), 3, 4)
    assert torch.equal(routing, routing[:1].expand_as(routing))  # the same at every layer
    expected = (gate.embedding @ gate.gate_weight.T).softmax(-1)
    torch.testing.assert_close(routing[0], expected)


def test_moelora_is_the_gate_weighted_sum_of_its_experts() -> None:
    torch.manual_seed(0)
    model, adapter, layer = single_layer(
        AdapterConfig(kind="moelora", r=8, alpha=16, dropout=0.0, num_experts=4)
    )
    assert 0.005 < layer.lora_A.std() < 0.015  # N(0, 0.01²), as the reference code
    randomize_adapter(adapter)
    x = torch.randn(3, 12)
    task_ids = torch.tensor([0, 2, 1])
    weights = adapter.routing()[0][task_ids]  # [batch, experts]
    a, b = layer.lora_A, layer.lora_B
    experts = [(b[:, 2 * e : 2 * e + 2] @ a[2 * e : 2 * e + 2]) for e in range(4)]
    update = sum(weights[:, e : e + 1] * (x @ experts[e].T) for e in range(4))
    expected = layer.base_layer(x) + (16 / 8) * update  # scaling alpha / r, r the total rank
    torch.testing.assert_close(model(x, task_ids=task_ids), expected, atol=1e-5, rtol=1e-5)


# -------------------------------------------------------------------------------------- MoSLD


def mosld_reference(layer, x: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
    """Σ_e S_e(x) B_e (a x), S = top-k of softmax(W_g x) renormalised, token by token."""
    out = torch.zeros(*x.shape[:-1], layer.d_out)
    flat_x, flat_out = x.reshape(-1, layer.d_in), out.view(-1, layer.d_out)
    for t, token in enumerate(flat_x):
        probs = (layer.lora_gate @ token).softmax(-1)
        top = probs.topk(layer.top_k)
        for p, e in zip(top.values / top.values.sum(), top.indices, strict=True):
            flat_out[t] += p * (layer.lora_B[e] @ (a @ token))
    return layer.base_layer(x) + layer.scaling * out


def test_mosld_shares_a_across_experts_and_routes_each_token_to_its_top_k() -> None:
    torch.manual_seed(0)
    config = AdapterConfig(kind="mosld", r=4, alpha=8, dropout=0.0, num_experts=3, top_k=2)
    model, adapter, layer = single_layer(config)
    assert layer.lora_A.shape == (4, 12)  # one general-feature A per layer
    assert layer.lora_B.shape == (3, 10, 4) and torch.equal(layer.lora_B, torch.zeros(3, 10, 4))
    assert layer.lora_gate.shape == (3, 12)
    randomize_adapter(adapter, scale=0.5)
    model.eval()
    x = torch.randn(2, 5, 12)
    with torch.no_grad():
        got = model(x, task_ids=torch.tensor([0, 1]))
        torch.testing.assert_close(got, mosld_reference(layer, x, layer.lora_A))
        # The router reads tokens, not tasks: other task ids give the same output.
        torch.testing.assert_close(model(x, task_ids=torch.tensor([2, 2])), got)


def test_mosld_dropout_masks_the_shared_a_in_training_only() -> None:
    torch.manual_seed(0)
    config = AdapterConfig(kind="mosld", r=4, dropout=0.0, shared_dropout=0.5, num_experts=3)
    model, adapter, layer = single_layer(config)
    randomize_adapter(adapter, scale=0.5)
    x = torch.randn(4, 12)
    ids = torch.tensor([0, 1, 2, 0])
    model.train()
    torch.manual_seed(1)
    trained = model(x, task_ids=ids)
    torch.manual_seed(1)
    dropped_a = nn.functional.dropout(layer.lora_A, 0.5)  # the same mask, drawn again
    torch.testing.assert_close(trained, mosld_reference(layer, x, dropped_a).detach())
    model.eval()
    torch.testing.assert_close(model(x, task_ids=ids), mosld_reference(layer, x, layer.lora_A))


def test_mosld_trains_with_its_load_balancing_loss() -> None:
    torch.manual_seed(0)
    config = AdapterConfig(kind="mosld", r=4, dropout=0.0, num_experts=4, balance_weight=0.5)
    model, adapter, layer = single_layer(config)
    randomize_adapter(adapter)
    x = torch.randn(6, 12)
    model.train()
    model(x, task_ids=torch.zeros(6, dtype=torch.long))
    probs = (x @ layer.lora_gate.T).softmax(-1)
    routed = torch.zeros_like(probs).scatter_(-1, probs.topk(2).indices, 1.0)
    expected = 4 * ((routed.mean(0) / 2) * probs.mean(0)).sum()
    torch.testing.assert_close(adapter.auxiliary_loss(), 0.5 * expected)
    adapter.auxiliary_loss().backward()
    assert layer.lora_gate.grad.abs().sum() > 0


def test_mosld_learns_on_a_real_architecture() -> None:
    model = BUILDERS["llama"]()
    adapter = inject_adapter(model, AdapterConfig(kind="mosld", r=4, dropout=0.0), TASKS)
    model.train()
    inputs = model_inputs("llama", batch=4, seed=2)
    optimizer = torch.optim.AdamW(adapter.named_trainable_parameters().values(), lr=1e-2)
    losses = []
    for _ in range(12):
        out = model(**inputs, labels=inputs["input_ids"], task_ids=torch.tensor([0, 1, 2, 0]))
        optimizer.zero_grad()
        (out.loss + adapter.auxiliary_loss()).backward()
        optimizer.step()
        losses.append(out.loss.item())
    assert losses[-1] < losses[0] - 0.1


# ------------------------------------------------------------------------------ per_task_lora


def test_per_task_lora_gives_each_task_its_own_pair() -> None:
    torch.manual_seed(0)
    model, adapter, layer = single_layer(AdapterConfig(kind="per_task_lora", r=2, dropout=0.0))
    assert layer.lora_A.shape == (3, 2, 12) and layer.lora_B.shape == (3, 10, 2)
    randomize_adapter(adapter)
    x = torch.randn(3, 12)
    ids = torch.tensor([2, 0, 1])
    expected = torch.stack(
        [layer.base_layer(x[i]) + layer.scaling * layer.lora_B[t] @ layer.lora_A[t] @ x[i]
         for i, t in enumerate(ids.tolist())]
    )  # fmt: skip
    torch.testing.assert_close(model(x, task_ids=ids), expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("kind", ["multilora", "moelora", "mosld", "per_task_lora", "lora"])
def test_baselines_add_no_contrastive_projection_or_mask(kind: str) -> None:
    adapter = inject_adapter(BUILDERS["bert"](), AdapterConfig(kind=kind, r=4), TASKS)
    names = " ".join(adapter.state_dict())
    assert "cl_projection" not in names and all(
        layer.component_scale is None for layer in adapter.layers.values()
    )
