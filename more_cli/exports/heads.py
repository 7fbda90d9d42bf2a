"""Encoder task heads as they leave the project: a linear layer on the masked mean of the
hidden states, saved beside the backbone as ``task_head.safetensors`` + ``task_head.json``."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from more_cli.modeling import (
    TaskHeadModel,
    mean_pool,
)
from more_cli.run_loading import (
    LoadedRun,
)

HEAD_WEIGHTS = "task_head.safetensors"


HEAD_DESCRIPTION = "task_head.json"


@dataclass(frozen=True)
class TaskHead:
    """An encoder run's head for one task: a linear layer on the masked mean of the hidden
    states, exactly as :class:`~more_cli.modeling.TaskHeadModel` computes it."""

    task: str
    weight: torch.Tensor
    bias: torch.Tensor
    labels: list[str] | None
    regression: bool

    def __call__(
        self, last_hidden_state: torch.Tensor, attention_mask: torch.Tensor
    ) -> torch.Tensor:
        pooled = mean_pool(last_hidden_state, attention_mask)
        return nn.functional.linear(pooled.to(self.weight.dtype), self.weight, self.bias)

    def save(self, directory: Path) -> None:
        tensors = {"weight": self.weight.contiguous(), "bias": self.bias.contiguous()}
        save_file(tensors, str(directory / HEAD_WEIGHTS), metadata={"format": "pt"})
        width = self.weight.shape[0]
        labels = self.labels or [f"LABEL_{i}" for i in range(width)]
        description = {
            "task": self.task,
            "pooling": "mean of last_hidden_state over attention_mask (padding excluded)",
            "formula": "logits = pooled @ weight.T + bias",
            "problem_type": "regression" if self.regression else "single_label_classification",
            "num_labels": width,
            "id2label": {} if self.regression else dict(enumerate(labels)),
        }
        (directory / HEAD_DESCRIPTION).write_text(json.dumps(description, indent=2) + "\n")

    @classmethod
    def load(cls, directory: Path) -> TaskHead:
        tensors = load_file(str(directory / HEAD_WEIGHTS))
        description = json.loads((directory / HEAD_DESCRIPTION).read_text())
        labels = list(description["id2label"].values()) or None
        regression = description["problem_type"] == "regression"
        return cls(description["task"], tensors["weight"], tensors["bias"], labels, regression)


def task_head(run: LoadedRun, task: str) -> TaskHead | None:
    """The run's head for ``task`` (float32, on the CPU), or None when the run has no heads."""
    if not isinstance(run.model, TaskHeadModel):
        return None
    index = run.adapter.task_index(task)
    head, spec = run.model.heads[index], run.model.specs[index]
    return TaskHead(
        task=task,
        weight=head.weight.detach().float().cpu(),
        bias=head.bias.detach().float().cpu(),
        labels=run.label_names.get(task),
        regression=spec.num_labels is None,
    )
