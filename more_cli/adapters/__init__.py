"""The MoRE adapter library: usable from Python without the CLI.

See ``docs/adapters.md`` for a worked example.
"""

from more_cli.adapters.config import AdapterConfig
from more_cli.adapters.injection import MultiTaskAdapter, get_adapter, inject_adapter
from more_cli.adapters.state import load_adapter, load_adapter_weights, save_adapter

__all__ = [
    "AdapterConfig",
    "MultiTaskAdapter",
    "get_adapter",
    "inject_adapter",
    "load_adapter",
    "load_adapter_weights",
    "save_adapter",
]
