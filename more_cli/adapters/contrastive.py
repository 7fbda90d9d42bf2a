"""Contrastive (InfoNCE) loss between layer inputs and the task-embedding bank (method.md §3)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def task_contrastive_losses(
    summaries: torch.Tensor,
    banks: torch.Tensor,
    task_ids: torch.Tensor,
    temperature: float,
    projection: torch.Tensor | None = None,
) -> torch.Tensor:
    """Per layer, the cross-entropy of cosine similarities / tau with each sample's own task
    as the label, for several layers of one input width at once.

    Args:
        summaries: ``[layers, batch, d_in]`` layer inputs at the first position (or their mean).
        banks: ``[layers, tasks, width]`` task embeddings of each layer, or ``[1, tasks, width]``
            for one bank shared by every layer.
        task_ids: ``[batch]`` true task of each sample.
        temperature: tau (0.05 in the paper).
        projection: ``[width, d_in]`` used when the bank is narrower than the input.

    Returns:
        ``[layers]``: each layer's loss, averaged over the batch.
    """
    query = summaries.float()
    if projection is not None:
        query = query @ projection.T
    # Cosine similarity, dividing the dot products by the bank's norms instead of
    # normalising the bank: with many tasks the bank is the large side, and a normalised
    # copy of it costs several passes over it forward and backward.
    banks = banks.float()
    dots = F.normalize(query, dim=-1) @ banks.transpose(-1, -2)
    similarity = dots / banks.norm(dim=-1).clamp_min(1e-12).unsqueeze(-2)
    layers, batch, tasks = similarity.shape
    losses = F.cross_entropy(
        (similarity / temperature).reshape(layers * batch, tasks),
        task_ids.repeat(layers),
        reduction="none",
    )
    return losses.reshape(layers, batch).mean(-1)
