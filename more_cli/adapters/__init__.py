"""The MoRE adapter library: usable from Python without the CLI.

See ``docs/adapters.md`` for a worked example. Names are imported on first use, so that
reading :class:`AdapterConfig` (every recipe does) does not import torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from more_cli.lazy import lazy_getattr

if TYPE_CHECKING:
    from more_cli.adapters.config import AdapterConfig
    from more_cli.adapters.injection import MultiTaskAdapter, get_adapter, inject_adapter
    from more_cli.adapters.state import load_adapter, load_adapter_weights, save_adapter

_HOMES = {
    "AdapterConfig": "config",
    "MultiTaskAdapter": "injection",
    "get_adapter": "injection",
    "inject_adapter": "injection",
    "load_adapter": "state",
    "load_adapter_weights": "state",
    "save_adapter": "state",
}

__all__ = [
    "AdapterConfig",
    "MultiTaskAdapter",
    "get_adapter",
    "inject_adapter",
    "load_adapter",
    "load_adapter_weights",
    "save_adapter",
]


__getattr__ = lazy_getattr(__name__, _HOMES)
