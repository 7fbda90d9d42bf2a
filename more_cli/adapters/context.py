"""The per-call state shared by the adapted layers of one model.

A forward pre-hook fills it once per model call (task ids, each sample's routing at every
layer, the call's attention mask); each layer reads its row. This is how task ids reach
the layers without changing any model's forward signature.
"""

from __future__ import annotations

import torch

from more_cli.errors import UserError


class RoutingContext:
    """Task ids and routing for the current forward, plus what the layers hand back."""

    def __init__(self) -> None:
        self.task_ids: torch.Tensor | None = None
        self.per_sample: torch.Tensor | None = None  # [layers, batch, n] or None
        # The model call's attention mask ([batch, seq]) when it had one: MoRE's
        # contrastive loss pools the layer inputs over the non-padding positions.
        self.attention_mask: torch.Tensor | None = None
        # What layers hand back in a training forward, by layer index: summaries of their
        # inputs for MoRE's contrastive loss ([batch, d_in] each) and MoSLD's
        # load-balancing terms (scalars).
        self.summaries: dict[int, torch.Tensor] = {}
        self.balance: dict[int, torch.Tensor] = {}
        self.merged_task: int | None = None

    def set(
        self,
        task_ids: torch.Tensor,
        per_sample: torch.Tensor | None,
        attention_mask: torch.Tensor | None = None,
    ) -> None:
        """Task ids ``[batch]`` and each sample's routing ``[layers, batch, n]`` (or None)."""
        self.task_ids = task_ids
        self.per_sample = per_sample
        self.attention_mask = attention_mask
        self.summaries = {}
        self.balance = {}

    def clear(self) -> None:
        self.task_ids = self.per_sample = self.attention_mask = None
        self.summaries = {}
        self.balance = {}

    def for_layer(self, layer: int, batch: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Task ids and routing weights ``[batch, n]`` of one layer for a batch of ``batch``."""
        task_ids = self.task_ids_for(batch)
        weights = None if self.per_sample is None else self.per_sample[layer]
        if weights is not None and batch != weights.shape[0]:
            weights = weights.repeat_interleave(batch // weights.shape[0], dim=0)
        return task_ids, weights

    def task_ids_for(self, batch: int) -> torch.Tensor:
        """The task id of each of ``batch`` samples.

        A batch that generation expanded (beams, several sequences per input) is a whole
        multiple of the task-id count; each id is repeated to match.
        """
        if self.task_ids is None:
            raise UserError(
                "the model was called without task ids; pass task_ids=... to the model call "
                "or wrap the call in `with adapter.task_context(task_ids):`"
            )
        count = self.task_ids.shape[0]
        if batch == count:
            return self.task_ids
        if batch % count:
            raise UserError(
                f"batch of {batch} samples but {count} task ids; give one task id per sample"
            )
        return self.task_ids.repeat_interleave(batch // count)
