"""``python -m tests.helpers.engines_on_cpu train ...``: ``more`` under FSDP or DeepSpeed on a CPU.

accelerate runs its FSDP and DeepSpeed engines only on accelerators. On a CPU-only machine
it quietly falls back to plain multi-process training for FSDP, and under DeepSpeed it
counts one process whatever the launcher started; yet torch's FSDP2 and DeepSpeed's CPU
back end both run here over gloo. This shim lifts exactly those gates, so that the tests
drive the real FSDP2 and DeepSpeed paths of ``more train``:

- FSDP: when the launch config asked for it, the accelerator state becomes FSDP with the
  plugin accelerate built from that config.
- DeepSpeed: the process group is not forced onto accelerate's CPU path (which ignores
  DeepSpeed), and the process count and ranks are those of the launched group.

Everything else is ``more`` unchanged.
"""

from __future__ import annotations

import os
from typing import Any

import torch.distributed as dist
from accelerate.state import AcceleratorState, PartialState
from accelerate.utils import DistributedType

from more_cli.cli.app import main
from more_cli.training import session as training_session

_original_init = AcceleratorState.__init__
_deepspeed = os.environ.get("ACCELERATE_USE_DEEPSPEED", "false").lower() == "true"


def _init_on_cpu(self: AcceleratorState, *args: Any, **kwargs: Any) -> None:
    _original_init(self, *args, **kwargs)
    shared = PartialState._shared_state
    plugin = kwargs.get("fsdp_plugin")
    if plugin is not None and self.distributed_type == DistributedType.MULTI_CPU:
        shared["distributed_type"] = DistributedType.FSDP
        self.distributed_type = DistributedType.FSDP
        self.fsdp_plugin = plugin
    if self.distributed_type == DistributedType.DEEPSPEED and dist.is_initialized():
        group = {
            "num_processes": dist.get_world_size(),
            "process_index": dist.get_rank(),
            "local_process_index": int(os.environ["LOCAL_RANK"]),
        }
        shared.update(group)
        self.__dict__.update(group)


AcceleratorState.__init__ = _init_on_cpu  # type: ignore[method-assign]
if _deepspeed:
    training_session.use_cpu_process_group = lambda: False

if __name__ == "__main__":
    main()
