"""Every adapter kind, and configs that give each kind only the keys it reads."""

from __future__ import annotations

from typing import Any, get_args

from more_cli.adapters.config import AdapterConfig, AdapterKind, without_inactive

KINDS = list(get_args(AdapterKind))
MERGEABLE_KINDS = [kind for kind in KINDS if AdapterConfig(kind=kind).mergeable]


def adapter_config(kind: str, **fields: Any) -> AdapterConfig:
    """``AdapterConfig(kind=kind, **fields)`` without the fields ``kind`` does not read, so one
    parametrised test can pass e.g. ``num_experts=2`` to every kind."""
    return AdapterConfig(**without_inactive({"kind": kind, **fields}))
