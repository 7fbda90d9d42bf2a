"""Contrastive (InfoNCE) loss between layer inputs and the task-embedding bank (method.md §3)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def task_contrastive_loss(
    summary: torch.Tensor,
    bank: torch.Tensor,
    task_ids: torch.Tensor,
    temperature: float,
    projection: torch.Tensor | None = None,
) -> torch.Tensor:
    """Cross-entropy of cosine similarities / tau, with each sample's own task as the label.

    Args:
        summary: ``[batch, d_in]`` layer input at the first position (or its mean).
        bank: ``[tasks, width]`` task embeddings.
        task_ids: ``[batch]`` true task of each sample.
        temperature: tau (0.05 in the paper).
        projection: ``[width, d_in]`` used when the bank is narrower than the input.
    """
    query = summary.float()
    if projection is not None:
        query = query @ projection.T
    similarity = F.normalize(query, dim=-1) @ F.normalize(bank.float(), dim=-1).T
    return F.cross_entropy(similarity / temperature, task_ids)
