"""torch.compile: an adapted model compiles as one graph (``fullgraph=True``: no graph break
in the adapter layers, the task-id hook or the routing) and computes what eager mode does,
in eval and in training (gradients). The ``aot_eager`` backend traces exactly what inductor
would compile, without a C++ toolchain; the speed-up is measured by ``python -m
benchmarks.speed --only compile``."""

from __future__ import annotations

import pytest
import torch

from more_cli.adapters import inject_adapter
from tests.adapters.conftest import randomize_adapter
from tests.helpers.kinds import KINDS, adapter_config
from tests.helpers.tiny import tiny_llama


@pytest.fixture(autouse=True)
def _fresh_compile_caches() -> None:
    torch._dynamo.reset()


@pytest.mark.parametrize("kind", KINDS)
def test_an_adapted_model_compiles_as_one_graph_with_eager_results(kind: str) -> None:
    torch.manual_seed(0)
    model = tiny_llama()
    # No dropout anywhere: eager and compiled code draw their random masks differently.
    config = adapter_config(kind, r=4, num_experts=2, dropout=0.0, shared_dropout=0.0)
    adapter = inject_adapter(model, config, ["a", "b"])
    randomize_adapter(adapter)
    ids = torch.randint(1, 50, (4, 12))
    task_ids = torch.tensor([0, 1, 1, 0])
    compiled = torch.compile(model, backend="aot_eager", fullgraph=True)

    model.eval()
    with torch.no_grad():
        expected = model(input_ids=ids, task_ids=task_ids).logits
        got = compiled(input_ids=ids, task_ids=task_ids).logits
    torch.testing.assert_close(got, expected)

    model.train()
    grads = []
    for forward in (model, compiled):
        model.zero_grad(set_to_none=True)
        loss = forward(input_ids=ids, labels=ids, task_ids=task_ids).loss
        auxiliary = adapter.auxiliary_loss()
        (loss if auxiliary is None else loss + auxiliary).backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys() and grads[0]
    for name, grad in grads[0].items():
        torch.testing.assert_close(grads[1][name], grad, msg=name)
