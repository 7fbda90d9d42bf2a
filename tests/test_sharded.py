"""Whole tensors from FSDP2 shards and back, on a one-process gloo group (one shard)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.tensor import DTensor, Shard, distribute_tensor

from more_cli.sharded import copy_whole_into, shard_like, whole


@pytest.fixture
def mesh(tmp_path: Path) -> Iterator[object]:
    store = tmp_path / "store"
    dist.init_process_group("gloo", init_method=f"file://{store}", world_size=1, rank=0)
    yield init_device_mesh("cpu", (1,))
    dist.destroy_process_group()


def test_plain_tensors_pass_through_unchanged() -> None:
    tensor = torch.randn(3, 2)
    assert whole(tensor) is tensor
    assert shard_like(tensor, torch.zeros(3, 2)) is tensor
    target = torch.zeros(3, 2, dtype=torch.float64)
    copy_whole_into(target, tensor)
    assert torch.equal(target, tensor.double())


def test_sharded_tensors_are_gathered_and_cut_back(mesh: object) -> None:
    value = torch.randn(4, 3)
    sharded = distribute_tensor(torch.zeros(4, 3), mesh, [Shard(0)])
    cut = shard_like(value, sharded)
    assert isinstance(cut, DTensor) and cut.placements == sharded.placements
    assert torch.equal(whole(cut), value)

    parameter = torch.nn.Parameter(distribute_tensor(torch.zeros(4, 3), mesh, [Shard(0)]))
    copy_whole_into(parameter, value)
    assert torch.equal(whole(parameter.detach()), value)
