"""The per-call state shared by the adapted layers of one model.

A forward pre-hook fills it once per model call (task ids, routing of every layer gathered
per sample); each layer reads its row. This is how task ids reach the layers without
changing any model's forward signature.
"""

from __future__ import annotations

import torch

from more_cli.errors import UserError


class RoutingContext:
    """Task ids and routing for the current forward, plus what the layers hand back."""

    def __init__(self) -> None:
        self.task_ids: torch.Tensor | None = None
        self.per_sample: torch.Tensor | None = None  # [layers, batch, n] or None (lora)
        # Whether layers hand back summaries of their inputs for the contrastive loss, and
        # those summaries by layer index (``[batch, d_in]`` each).
        self.wants_summaries = False
        self.summaries: dict[int, torch.Tensor] = {}
        self.merged_task: int | None = None

    def set(
        self,
        task_ids: torch.Tensor,
        routing: torch.Tensor | None,
        wants_summaries: bool = False,
    ) -> None:
        self.task_ids = task_ids
        self.per_sample = None if routing is None else routing[:, task_ids]
        self.wants_summaries = wants_summaries
        self.summaries = {}

    def clear(self) -> None:
        self.task_ids = self.per_sample = None
        self.wants_summaries = False
        self.summaries = {}

    def for_layer(self, layer: int, batch: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Task ids and routing weights ``[batch, n]`` of one layer for a batch of ``batch``.

        A batch that generation expanded (beams, several sequences per input) is a whole
        multiple of the task-id count; each id is repeated to match.
        """
        if self.task_ids is None:
            raise UserError(
                "the model was called without task ids; pass task_ids=... to the model call "
                "or wrap the call in `with adapter.task_context(task_ids):`"
            )
        task_ids = self.task_ids
        weights = None if self.per_sample is None else self.per_sample[layer]
        if batch != task_ids.shape[0]:
            if batch % task_ids.shape[0]:
                raise UserError(
                    f"batch of {batch} samples but {task_ids.shape[0]} task ids; give one "
                    "task id per sample"
                )
            repeats = batch // task_ids.shape[0]
            task_ids = task_ids.repeat_interleave(repeats)
            weights = None if weights is None else weights.repeat_interleave(repeats, dim=0)
        return task_ids, weights
