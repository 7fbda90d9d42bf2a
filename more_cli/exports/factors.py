"""Each task's low-rank update as a pair of LoRA factors ``(A_k, B_k)`` with ``B_k A_k = ΔW_t``:
the scaling, MoRE's rank scaling and the gate weights folded in (what the PEFT export writes)."""

from __future__ import annotations

import torch

from more_cli.adapters import MultiTaskAdapter
from more_cli.adapters.layer import AdapterLayer


def lora_factors(
    adapter: MultiTaskAdapter, task: str
) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """The task's update at each layer as ``(A_k [k, d_in], B_k [d_out, k])`` in float32.

    ``B_k @ A_k == adapter.delta_weights(task)[layer]``: the LoRA scaling, MoRE's rank scaling
    and the gate weights (MOELoRA: ``B diag(w) A``; MultiLoRA: its scaling vectors) are folded
    in, split evenly between the two factors. ``k`` is the task's chosen rank at the layer
    for MoRE (components beyond it are masked off), ``n·r`` for MultiLoRA's ``n`` parallel
    modules and ``r`` for the other kinds.
    """
    index = adapter.task_index(task)
    adapter.check_mergeable()
    ranks = adapter.chosen_ranks()[task]
    with torch.no_grad():
        routing = adapter.routing()
        factors = {}
        for i, (name, layer) in enumerate(adapter.layers.items()):
            row = None if routing is None else routing[i, index].float()
            a, b, weights = _task_pair(layer, index, row)
            k = ranks[name] if layer.kind == "more" else a.shape[0]
            root = (weights[:k] * layer.scaling).sqrt()
            factors[name] = ((a[:k] * root[:, None]).cpu(), (b[:, :k] * root).cpu())
    return factors


def _task_pair(
    layer: AdapterLayer, task: int, routing: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One task's ``(A [r, d_in], B [d_out, r], w [r])`` with ``ΔW = scaling · B diag(w) A``."""
    if layer.kind == "multilora":
        a, b = (factor.float() for factor in layer.parallel_factors())
        return a, b, torch.ones(a.shape[0], device=a.device)
    a, b = layer.lora_A.float(), layer.lora_B.float()
    weights = torch.ones(layer.r, device=a.device)
    if layer.kind == "per_task_lora":
        return a[task], b[task], weights
    if layer.kind == "moelora":
        weights = routing.repeat_interleave(layer.r // layer.experts)
    elif layer.kind == "more":
        weights = routing  # the rank mask: ones on the first k_t components
    if layer.component_scale is not None:
        weights = weights * layer.component_scale
    return a, b, weights
