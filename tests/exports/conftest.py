"""Shared pieces of the export tests: a randomised adapter and tiny trained runs."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

from more_cli.adapters import inject_adapter
from more_cli.adapters.state import save_adapter
from more_cli.integrity import write_manifest
from more_cli.modeling import HeadSpec, adapter_host, load_base, save_heads
from more_cli.recipe import Recipe
from more_cli.recipe_io import dump_resolved
from more_cli.rundir import RunDir
from more_cli.tasks import get_task


def randomize(model: torch.nn.Module, adapter: Any, seed: int = 0, scale: float = 0.2) -> None:
    """Random adapter (and head) tensors: B starts at zero, which would hide every update."""
    generator = torch.Generator().manual_seed(seed)
    tensors = list(adapter.state_dict().values())
    tensors += [p for name, p in model.named_parameters() if name.startswith("heads.")]
    with torch.no_grad():
        for tensor in tensors:
            if tensor.is_floating_point():
                tensor.copy_(torch.randn(tensor.shape, generator=generator) * scale)


@pytest.fixture
def make_run(
    tmp_path: Path, tiny_model_dir: Callable[[str], Path], glue_data: Path
) -> Callable[..., Path]:
    """``make_run(kind="seq2seq", adapter={...}, model={...})`` → a finished-looking run dir."""

    def make(kind: str = "seq2seq", adapter: dict | None = None, model: dict | None = None) -> Path:
        recipe = Recipe.model_validate(
            {
                "model": {"name": str(tiny_model_dir(kind)), **(model or {})},
                "adapter": {"r": 4, "alpha": 8, "dropout": 0.0, **(adapter or {})},
                "tasks": [
                    {"name": "sst2", "source": str(glue_data / "sst2")},
                    {"name": "rte", "source": str(glue_data / "rte")},
                ],
                "output_dir": str(tmp_path / "run"),
            }
        )
        run = RunDir(tmp_path / "run")
        dump_resolved(recipe, run.recipe)
        heads = [HeadSpec.for_task(get_task(cfg)) for cfg in recipe.tasks]
        base, _, _ = load_base(recipe.model, heads)
        handle = inject_adapter(adapter_host(base), recipe.adapter, recipe.task_names)
        randomize(base, handle)
        save_adapter(handle, run.adapter, seal=False)
        save_heads(base, run.adapter)
        write_manifest(run.adapter)
        return run.root

    return make
