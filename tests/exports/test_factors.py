"""Each task's update as LoRA factors: B_k A_k reproduces ΔW_t, at the chosen rank."""

from __future__ import annotations

import pytest
import torch

from more_cli.adapters import AdapterConfig, inject_adapter
from more_cli.exports.factors import lora_factors
from tests.exports.conftest import randomize
from tests.helpers.kinds import MERGEABLE_KINDS, adapter_config
from tests.helpers.tiny import tiny_t5

# ---------------------------------------------------------------------------------------------
# lora_factors


@pytest.mark.parametrize("kind", MERGEABLE_KINDS)
def test_factors_reproduce_delta_weights(kind: str) -> None:
    model = tiny_t5()
    config = adapter_config(kind, r=4, targets=["q", "v"], num_experts=2)
    adapter = inject_adapter(model, config, ["a", "b", "c"])
    randomize(model, adapter)
    for task in adapter.tasks:
        deltas = adapter.delta_weights(task)
        for name, (a, b) in lora_factors(adapter, task).items():
            torch.testing.assert_close(b @ a, deltas[name], atol=1e-6, rtol=1e-5)


def test_more_factors_have_the_chosen_rank() -> None:
    model = tiny_t5()
    config = AdapterConfig(r=8, targets=["q", "v"], fixed_ranks={"a": 2, "b": 6})
    adapter = inject_adapter(model, config, ["a", "b"])
    randomize(model, adapter)
    assert {a.shape[0] for a, _ in lora_factors(adapter, "a").values()} == {2}
    assert {b.shape[1] for _, b in lora_factors(adapter, "b").values()} == {6}
