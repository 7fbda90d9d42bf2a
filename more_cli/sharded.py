"""Whole tensors from parameters that FSDP2 shards across processes.

Under FSDP2 (accelerate's ``fsdp_version: 2``) every wrapped parameter, and the optimizer
state that follows it, is a ``DTensor`` of which each process holds one shard. Adapter files,
heads and checkpoints hold whole tensors, so writing gathers the shards (:func:`whole`, a
collective: every process calls it, for the same tensors in the same order) and loading cuts
each process's shard out of the whole tensor it read (:func:`shard_like`, no communication).
Plain tensors pass through both unchanged, so one-process and DDP runs take the same path.
"""

from __future__ import annotations

import torch

try:
    from torch.distributed.tensor import DTensor, distribute_tensor
except ImportError:  # a torch without distributed support (or < 2.5): nothing is sharded
    DTensor = None


def is_sharded(tensor: torch.Tensor) -> bool:
    return DTensor is not None and isinstance(tensor, DTensor)


def whole(tensor: torch.Tensor) -> torch.Tensor:
    """``tensor`` itself, or all of a sharded tensor gathered from every process."""
    return tensor.full_tensor() if is_sharded(tensor) else tensor


def shard_like(value: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """``value`` (whole) laid out like ``reference``: this process's shard when it is sharded."""
    if not is_sharded(reference):
        return value
    value = value.to(reference.device, reference.dtype)
    # src_data_rank=None: every process holds the whole value and keeps its own shard of it.
    return distribute_tensor(value, reference.device_mesh, reference.placements, src_data_rank=None)


def copy_whole_into(target: torch.Tensor, value: torch.Tensor) -> None:
    """Overwrite ``target`` (a parameter, sharded or not) with the whole tensor ``value``."""
    with torch.no_grad():
        if is_sharded(target):
            target.to_local().copy_(shard_like(value, target).to_local())
        else:
            target.copy_(value.to(target.dtype))
