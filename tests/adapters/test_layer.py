"""The adapted layer's math: MoRE against LoRA, mixed batches, every kind trains."""

from __future__ import annotations

import pytest
import torch

from more_cli.adapters import AdapterConfig, inject_adapter
from tests.adapters.conftest import (
    BUILDERS,
    OneLinear,
    model_inputs,
    output_of,
    randomize_adapter,
)
from tests.helpers.kinds import KINDS, MERGEABLE_KINDS, adapter_config

TASKS = ["alpha", "beta", "gamma"]


def test_more_at_full_rank_without_scaling_equals_lora(family: str) -> None:
    more_model, lora_model = BUILDERS[family](), BUILDERS[family]()
    lora_model.load_state_dict(more_model.state_dict())
    more = inject_adapter(
        more_model, AdapterConfig(kind="more", r=4, fixed_ranks=4, rank_scaling=False), TASKS
    )
    lora = inject_adapter(lora_model, AdapterConfig(kind="lora", r=4), TASKS)
    randomize_adapter(more)
    with torch.no_grad():
        for name, layer in lora.layers.items():
            layer.lora_A.copy_(more.layers[name].lora_A)
            layer.lora_B.copy_(more.layers[name].lora_B)
    inputs = model_inputs(family, batch=3)
    task_ids = torch.tensor([0, 1, 2])
    with torch.no_grad():
        expected = output_of(lora_model, inputs, task_ids=task_ids)
        got = output_of(more_model, inputs, task_ids=task_ids)
    assert torch.equal(got, expected)


@pytest.mark.parametrize("kind", KINDS)
def test_mixed_task_batch_equals_each_task_alone(family: str, kind: str) -> None:
    model = BUILDERS[family]()
    adapter = inject_adapter(model, adapter_config(kind, r=4, num_experts=2), TASKS)
    randomize_adapter(adapter)
    inputs = model_inputs(family, batch=5)
    task_ids = torch.tensor([2, 0, 1, 0, 2])
    with torch.no_grad():
        mixed = output_of(model, inputs, task_ids=task_ids)
        alone = torch.cat(
            [
                output_of(
                    model,
                    {k: v[i : i + 1] for k, v in inputs.items()},
                    task_ids=task_ids[i : i + 1],
                )
                for i in range(5)
            ]
        )
    # Batching order only (mosld's token router adds one more matmul of rounding).
    tolerance = 3e-4 if kind == "mosld" else 1e-4
    torch.testing.assert_close(mixed, alone, atol=tolerance, rtol=tolerance)


@pytest.mark.parametrize("kind", MERGEABLE_KINDS)
def test_forward_and_gradients_follow_each_tasks_delta_weight(kind: str) -> None:
    """The layer's forward is ``W x + ΔW_t x`` per sample, in value and in the gradients of
    the factors: where the layer applies ``scaling`` (or rank scaling, or routing) must not
    matter. ``delta_weight`` is the independent path (scaling applied to ΔW last)."""
    torch.manual_seed(0)
    config = adapter_config(kind, r=4, num_experts=2, dropout=0.0, targets=["proj"])
    model = OneLinear(12, 10)
    adapter = inject_adapter(model, config.model_copy(update={"alpha": 3.0}), TASKS)
    randomize_adapter(adapter)
    model.eval()
    layer = adapter.layers["proj"]
    factors = dict(layer.adapter_parameters())
    x, task_ids = torch.randn(3, 5, 12), torch.tensor([2, 0, 1])

    def gradients(output: torch.Tensor) -> dict[str, torch.Tensor]:
        weights = torch.linspace(-1, 1, output.numel()).reshape(output.shape)
        grads = torch.autograd.grad((output * weights).sum(), list(factors.values()))
        return dict(zip(factors, grads, strict=True))

    got = model(x, task_ids=task_ids)
    with torch.no_grad():
        routing = adapter.routing()
    expected = torch.stack([
        layer.base_layer(x[i])
        + x[i] @ layer.delta_weight(t, None if routing is None else routing[0, t]).T
        for i, t in enumerate(task_ids.tolist())
    ])  # fmt: skip
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    got_gradients, expected_gradients = gradients(got), gradients(expected)
    assert set(got_gradients) >= {"lora_A", "lora_B"}
    for name, gradient in expected_gradients.items():
        torch.testing.assert_close(got_gradients[name], gradient, atol=1e-5, rtol=1e-5)


def test_tasks_at_different_ranks_give_different_outputs() -> None:
    model = BUILDERS["t5"]()
    adapter = inject_adapter(
        model, AdapterConfig(kind="more", r=4, fixed_ranks={"alpha": 1, "beta": 4}), TASKS
    )
    randomize_adapter(adapter)
    inputs = model_inputs("t5", batch=1)
    with torch.no_grad():
        low = output_of(model, inputs, task_ids=torch.tensor([0]))
        high = output_of(model, inputs, task_ids=torch.tensor([1]))
    assert not torch.allclose(low, high)


@pytest.mark.parametrize("kind", KINDS)
def test_every_kind_learns_a_toy_problem(kind: str) -> None:
    """A few AdamW steps on a fixed multi-task batch must lower the loss."""
    torch.manual_seed(0)
    model = BUILDERS["llama"]()
    adapter = inject_adapter(model, adapter_config(kind, r=4, num_experts=2, dropout=0.0), TASKS)
    model.train()
    inputs = model_inputs("llama", batch=6, seed=1)
    task_ids = torch.tensor([0, 1, 2, 0, 1, 2])
    params = list(adapter.named_trainable_parameters().values())
    optimizer = torch.optim.AdamW(params, lr=1e-2)
    losses = []
    for _ in range(15):
        out = model(**inputs, labels=inputs["input_ids"], task_ids=task_ids)
        aux = adapter.auxiliary_loss()
        loss = out.loss + (0.1 * aux if aux is not None else 0.0)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(out.loss.item())
    assert losses[-1] < losses[0] - 0.1


@pytest.mark.parametrize("kind", KINDS)
def test_batch_with_some_tasks_leaves_no_trainable_parameter_unused(kind: str) -> None:
    """DDP fails on parameters outside the graph; per-task state lives in stacked tensors."""
    model = BUILDERS["t5"]()
    adapter = inject_adapter(model, adapter_config(kind, r=4, num_experts=2), TASKS)
    randomize_adapter(adapter)
    model.train()
    inputs = model_inputs("t5", batch=2)
    out = model(
        **inputs, labels=inputs["input_ids"][:, :3].contiguous(), task_ids=torch.tensor([1, 1])
    )
    aux = adapter.auxiliary_loss()
    (out.loss + (aux if aux is not None else 0)).backward()
    unused = [k for k, p in adapter.named_trainable_parameters().items() if p.grad is None]
    assert unused == []
