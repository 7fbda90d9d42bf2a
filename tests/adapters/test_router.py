"""Routing: hard forward, straight-through gradients, frozen and forced ranks."""

from __future__ import annotations

import pytest
import torch

from more_cli.adapters import AdapterConfig, inject_adapter
from tests.adapters.conftest import BUILDERS, model_inputs, randomize_adapter

TASKS = ["alpha", "beta", "gamma"]


def test_forward_uses_exactly_the_hard_choice() -> None:
    model = BUILDERS["llama"]()
    # The paper's MoRE: random initial ranks (so the choice varies), rank scaling on.
    config = AdapterConfig(kind="more", r=4, dropout=0.0, initial_rank="random", rank_scaling=True)
    adapter = inject_adapter(model, config, TASKS)
    randomize_adapter(adapter)
    routing = adapter.routing()
    ranks = adapter.router.chosen_ranks()
    hard_masks = (torch.arange(4)[None, None, :] < ranks[..., None]).float()
    assert torch.equal(routing.detach(), hard_masks)
    # The layer output is the update of the chosen prefix only.
    name, layer = next(iter(adapter.layers.items()))
    x = torch.randn(2, 3, layer.d_in)
    task_ids = torch.tensor([0, 2])
    adapter.context.set(task_ids, adapter.sample_routing(task_ids))
    got = layer(x)
    for row, task in enumerate([0, 2]):
        k = int(ranks[0, task])
        scale = (torch.arange(1, 5) / 4.0) ** 2
        a, b = layer.lora_A[:k], layer.lora_B[:, :k] * scale[:k]
        expected = layer.base_layer(x[row]) + layer.scaling * (x[row] @ a.T) @ b.T
        torch.testing.assert_close(got[row], expected, atol=1e-5, rtol=1e-5)


def test_straight_through_gradients_reach_gates_and_task_embeddings() -> None:
    model = BUILDERS["t5"]()
    adapter = inject_adapter(model, AdapterConfig(kind="more", r=4, cl_weight=0.0), TASKS)
    randomize_adapter(adapter)
    inputs = model_inputs("t5", batch=2)
    model(
        **inputs, labels=inputs["input_ids"][:, :3].contiguous(), task_ids=torch.tensor([0, 1])
    ).loss.backward()
    grads = {k: p.grad for k, p in adapter.named_trainable_parameters().items() if "router" in k}
    assert grads and all(g is not None and g.abs().sum() > 0 for g in grads.values())
    embedding_grad = adapter.router.groups[0].embedding.grad
    assert embedding_grad[:, 2].abs().sum() == 0  # task not in the batch
    assert embedding_grad[:, 0].abs().sum() > 0


def test_routing_is_computed_once_per_forward() -> None:
    model = BUILDERS["t5"]()
    adapter = inject_adapter(model, AdapterConfig(kind="more", r=4), TASKS)
    calls = []
    adapter.router.register_forward_hook(lambda *args: calls.append(1))
    inputs = model_inputs("t5", batch=2)
    with torch.no_grad():
        model(**inputs, task_ids=torch.tensor([0, 1]))
    assert len(calls) == 1


def test_frozen_random_router_keeps_initial_ranks() -> None:
    model = BUILDERS["t5"]()
    config = AdapterConfig(kind="more", r=4, router="frozen_random", cl_weight=0.1)
    adapter = inject_adapter(model, config, TASKS)
    before = adapter.router.chosen_ranks().clone()
    trainable = adapter.named_trainable_parameters()
    assert not any("gate" in k for k in trainable)
    optimizer = torch.optim.SGD(trainable.values(), lr=10.0)
    model.train()
    inputs = model_inputs("t5", batch=3)
    for _ in range(3):
        out = model(
            **inputs,
            labels=inputs["input_ids"][:, :3].contiguous(),
            task_ids=torch.tensor([0, 1, 2]),
        )
        (out.loss + adapter.auxiliary_loss()).backward()
        optimizer.step()
    assert torch.equal(adapter.router.chosen_ranks(), before)


def test_fixed_ranks_override_the_router() -> None:
    model = BUILDERS["bert"]()
    adapter = inject_adapter(
        model, AdapterConfig(kind="more", r=8, fixed_ranks={"alpha": 2, "gamma": 7}), TASKS
    )
    ranks = adapter.chosen_ranks()
    assert set(ranks["alpha"].values()) == {2}
    assert set(ranks["gamma"].values()) == {7}


@pytest.mark.parametrize("layout", ["per_layer", "shared"])
@pytest.mark.parametrize("rank", [1, 5, 8])
def test_initial_rank_starts_every_task_there_with_an_unsaturated_gate(
    layout: str, rank: int
) -> None:
    routers = {}
    for start in ("random", rank):
        torch.manual_seed(0)
        config = AdapterConfig(kind="more", r=8, initial_rank=start, task_embedding=layout)
        routers[start] = inject_adapter(BUILDERS["bert"](), config, TASKS).router
    router = routers[rank]
    assert torch.equal(router.chosen_ranks(), torch.full_like(router.chosen_ranks(), rank))
    confidence = router.confidence()
    assert bool((confidence >= 0.75 - 1e-6).all()) and bool((confidence < 0.999).all())
    # Only the biases moved: the same seed with a random start has the same gate weights.
    for a, b in zip(routers["random"].groups, router.groups, strict=True):
        assert torch.equal(a.gate_weight, b.gate_weight)
        changed = (a.gate_bias != b.gate_bias).any(0)
        assert changed.nonzero().flatten().tolist() in ([], [rank - 1])


def test_by_default_every_task_starts_at_rank_r() -> None:
    adapter = inject_adapter(BUILDERS["t5"](), AdapterConfig(kind="more", r=4), TASKS)
    assert set(adapter.router.chosen_ranks().flatten().tolist()) == {4}
    paper = AdapterConfig(kind="more", r=4, initial_rank="random")
    torch.manual_seed(0)
    assert (
        len(
            set(
                inject_adapter(BUILDERS["t5"](), paper, TASKS)
                .router.chosen_ranks()
                .flatten()
                .tolist()
            )
        )
        > 1
    )


def test_initial_rank_keeps_the_router_live() -> None:
    model = BUILDERS["t5"]()
    config = AdapterConfig(kind="more", r=4, initial_rank=4, cl_weight=0.0)
    adapter = inject_adapter(model, config, TASKS)
    with torch.no_grad():  # B starts at zero; the gates keep their initial state
        for layer in adapter.layers.values():
            layer.lora_B.normal_()
    assert set(adapter.router.chosen_ranks().flatten().tolist()) == {4}
    inputs = model_inputs("t5", batch=2)
    model(
        **inputs, labels=inputs["input_ids"][:, :3].contiguous(), task_ids=torch.tensor([0, 1])
    ).loss.backward()
    assert adapter.router.groups[0].gate_bias.grad.abs().sum() > 0


def test_shared_task_embedding_is_leaner_and_feeds_the_contrastive_loss() -> None:
    with_cl = {"r": 4, "cl_weight": 0.1}  # the paper's weight; the default is 0
    per_layer = inject_adapter(BUILDERS["t5"](), AdapterConfig(**with_cl), TASKS)
    model = BUILDERS["t5"]()
    shared = AdapterConfig(**with_cl, task_embedding="shared", task_embedding_dim=4)
    adapter = inject_adapter(model, shared, TASKS)
    counts, per_layer_counts = adapter.parameter_counts(), per_layer.parameter_counts()
    assert counts["task_embeddings"] == 3 * 4
    assert counts["task_embeddings"] < per_layer_counts["task_embeddings"]
    # The contrastive loss's projection is per width, not per layer.
    assert counts["total"] < per_layer_counts["total"]
    model.train()
    inputs = model_inputs("t5", batch=3)
    model(
        **inputs, labels=inputs["input_ids"][:, :3].contiguous(), task_ids=torch.tensor([0, 1, 2])
    )
    loss = adapter.auxiliary_loss()
    assert loss is not None and torch.isfinite(loss)
    loss.backward()
    assert adapter.router.shared_embedding.grad.abs().sum() > 0


@pytest.mark.parametrize(
    "fields",
    [
        {"kind": "more", "initial_rank": "random"},
        {"kind": "more", "task_embedding": "shared", "initial_rank": "random"},
        {"kind": "more", "router": "frozen_random", "initial_rank": "random"},
        {"kind": "more", "initial_rank": "random", "fixed_ranks": {"t1": 2}},
        {"kind": "moelora", "num_experts": 2},
    ],
    ids=["per_layer", "shared", "frozen_random", "fixed_ranks", "moelora"],
)
def test_routing_only_the_batch_s_tasks_equals_gathering_every_task_s(fields) -> None:
    tasks = [f"t{i}" for i in range(12)]
    model = BUILDERS["llama"]()
    adapter = inject_adapter(model, AdapterConfig(r=4, **fields), tasks)
    randomize_adapter(adapter, scale=1.0)
    task_ids = torch.tensor([3, 1, 3, 7])  # fewer samples than tasks, one task twice
    params = [p for p in adapter.router.parameters() if p.requires_grad]
    weights = torch.randn(adapter.router(task_ids).shape)
    results = []
    for routing in (adapter.router(task_ids), adapter.router()[:, task_ids]):
        live = routing.requires_grad  # a frozen router's masks depend on no parameter
        grads = torch.autograd.grad((routing * weights).sum(), params) if live else ()
        results.append((routing.detach(), grads))
    (ours, our_grads), (gathered, gathered_grads) = results
    torch.testing.assert_close(ours, gathered, rtol=0, atol=0)
    for mine, theirs in zip(our_grads, gathered_grads, strict=True):
        torch.testing.assert_close(mine, theirs, rtol=1e-5, atol=1e-6)  # order of a sum
    # The model call takes the batch's path (4 samples, 12 tasks) and gives the same masks.
    torch.testing.assert_close(adapter.sample_routing(task_ids), gathered, rtol=0, atol=0)
