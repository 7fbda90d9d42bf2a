"""Adding tasks to a trained adapter: only the new task embeddings train."""

from __future__ import annotations

import pytest
import torch

from more_cli.adapters import AdapterConfig, inject_adapter, load_adapter, save_adapter
from more_cli.errors import UserError
from tests.adapters.conftest import BUILDERS, model_inputs, output_of, randomize_adapter


def train_new_task(model, adapter, steps: int = 3) -> None:
    params = adapter.named_trainable_parameters().values()
    optimizer = torch.optim.AdamW(params, lr=0.1, weight_decay=0.0)
    inputs = model_inputs("t5", batch=2)
    model.train()
    for _ in range(steps):
        labels = inputs["input_ids"][:, :3].contiguous()
        out = model(**inputs, labels=labels, task_ids=torch.tensor([2, 2]))
        auxiliary = adapter.auxiliary_loss()
        (out.loss if auxiliary is None else out.loss + auxiliary).backward()
        optimizer.step()
        optimizer.zero_grad()
    model.eval()


@pytest.mark.parametrize("cl_weight", [0.0, 0.1])  # the default, and the paper's loss on
def test_new_task_trains_and_old_tasks_stay_bit_for_bit(tmp_path, cl_weight: float) -> None:
    model = BUILDERS["t5"]()
    base_state = {k: v.clone() for k, v in model.state_dict().items()}
    config = AdapterConfig(kind="more", r=4, cl_weight=cl_weight)
    adapter = inject_adapter(model, config, ["a", "b"])
    randomize_adapter(adapter)
    inputs = model_inputs("t5", batch=2)
    with torch.no_grad():
        before = output_of(model, inputs, task_ids=torch.tensor([0, 1]))
    adapter.add_tasks(["c"])
    trainable = adapter.named_trainable_parameters()
    assert trainable and all("embedding" in name for name in trainable)
    new_rows_before = adapter.router.groups[0].embedding[:, 2].clone()
    train_new_task(model, adapter)
    assert not torch.equal(adapter.router.groups[0].embedding[:, 2], new_rows_before)
    with torch.no_grad():
        assert torch.equal(output_of(model, inputs, task_ids=torch.tensor([0, 1])), before)
    save_adapter(adapter, tmp_path)
    fresh = BUILDERS["t5"]()
    fresh.load_state_dict(base_state)
    assert load_adapter(fresh, tmp_path).tasks == ["a", "b", "c"]


def test_transfer_needs_task_embeddings_and_new_names() -> None:
    lora = inject_adapter(BUILDERS["t5"](), AdapterConfig(kind="lora", r=4), ["a"])
    with pytest.raises(UserError, match="transfer needs kind more"):
        lora.add_tasks(["b"])
    more = inject_adapter(BUILDERS["t5"](), AdapterConfig(kind="more", r=4), ["a"])
    with pytest.raises(UserError, match="already in this adapter"):
        more.add_tasks(["a"])
