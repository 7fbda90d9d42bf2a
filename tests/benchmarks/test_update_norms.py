"""The update-norm diagnostic: norms of ΔW recomputed from the factors, pooled by rank."""

from __future__ import annotations

import statistics

import pytest
import torch

from benchmarks.update_norms import markdown, update_norms
from more_cli.adapters import AdapterConfig, inject_adapter
from tests.adapters.conftest import BUILDERS, randomize_adapter

TASKS = ["alpha", "beta", "gamma"]


def _adapter(**config):
    torch.manual_seed(0)
    adapter = inject_adapter(BUILDERS["bert"](), AdapterConfig(r=4, **config), TASKS)
    randomize_adapter(adapter)
    return adapter


@pytest.mark.parametrize("rank_scaling", [True, False])
def test_norms_follow_the_factors_of_each_chosen_rank(rank_scaling: bool) -> None:
    adapter = _adapter(kind="more", initial_rank="random", rank_scaling=rank_scaling)
    result = update_norms(adapter)
    ranks = adapter.chosen_ranks()
    expected: dict[int, list[float]] = {}
    for task in TASKS:
        for name, layer in adapter.layers.items():
            k = ranks[task][name]
            s = torch.arange(1, layer.r + 1, dtype=torch.float32) / layer.r
            s2 = (s if rank_scaling else torch.ones_like(s))[:k] ** 2
            delta = layer.scaling * layer.lora_B[:, :k] @ torch.diag(s2) @ layer.lora_A[:k]
            expected.setdefault(k, []).append(delta.detach().norm().item())
    assert set(result["by_rank"]) == {str(k) for k in expected}
    for k, norms in expected.items():
        entry = result["by_rank"][str(k)]
        assert entry["pairs"] == len(norms)
        assert abs(entry["mean_norm"] - statistics.fmean(norms)) < 1e-4 * entry["mean_norm"]
    assert sum(e["pairs"] for e in result["by_rank"].values()) == len(TASKS) * len(adapter.layers)
    table = markdown([{"run": "r"} | result])
    for k, entry in result["by_rank"].items():
        assert f"rank {k}" in table and f"{entry['mean_norm']:.3f} ({entry['pairs']})" in table


def test_lora_has_one_update_for_every_task_at_full_rank() -> None:
    result = update_norms(_adapter(kind="lora"))
    assert list(result["by_rank"]) == ["4"]
    norms = {round(t["mean_norm"], 6) for t in result["tasks"].values()}
    assert len(norms) == 1 and next(iter(norms)) > 0
    assert all(t["mean_rank"] == 4 for t in result["tasks"].values())
