"""``python -m tests.helpers.fsdp_on_cpu train ...``: ``more`` under accelerate's FSDP on a CPU.

accelerate turns FSDP on only for accelerators: on a CPU-only machine it quietly falls back
to plain multi-process training, although torch's FSDP2 itself runs on the CPU over gloo.
This shim lifts that one gate (when the launch config asked for FSDP, the accelerator state
becomes FSDP, with the plugin accelerate built from that config) so that the tests drive
the real FSDP2 path of ``more train`` here: sharded ``DTensor`` parameters and optimizer
state, gathered checkpoints and adapters. Everything else is ``more`` unchanged.
"""

from __future__ import annotations

from typing import Any

from accelerate.state import AcceleratorState, PartialState
from accelerate.utils import DistributedType

from more_cli.cli.app import main

_original_init = AcceleratorState.__init__


def _init_with_fsdp_on_cpu(self: AcceleratorState, *args: Any, **kwargs: Any) -> None:
    _original_init(self, *args, **kwargs)
    plugin = kwargs.get("fsdp_plugin")
    if plugin is not None and self.distributed_type == DistributedType.MULTI_CPU:
        PartialState._shared_state["distributed_type"] = DistributedType.FSDP
        self.distributed_type = DistributedType.FSDP
        self.fsdp_plugin = plugin


AcceleratorState.__init__ = _init_with_fsdp_on_cpu  # type: ignore[method-assign]

if __name__ == "__main__":
    main()
