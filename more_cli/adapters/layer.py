"""The adapted linear layer: a frozen base layer plus the low-rank update of one adapter kind.

All kinds keep their per-task state in stacked tensors and run a fixed number of matmuls
whatever the number of tasks in the batch; none loops over tasks or experts.

- ``more``: ``h = W x + scaling * ((dropout(x) A^T) * s^2 * m_t) B^T`` with ``m_t`` the
  task's rank mask (method.md §1). ``s_i = (i+1)/r`` scales A's row i and B's column i,
  hence ``s^2`` on the rank-r intermediate.
- ``lora``: the same with every component on and no scaling by ``s``.
- ``moelora``: ``E`` experts of rank ``r/E`` are blocks of one rank-r pair; the dense gate
  weight of expert ``e`` multiplies its block. Mathematically identical to the
  sum-of-experts form of MOELoRA, computed with one pair of matmuls.
- ``multilora``: one rank-r pair per task, gathered per sample (batched matmuls).
- ``mosld``: ``E`` down-projections ``A_e`` share one up-projection ``B``:
  ``B (sum_e w_e A_e x)``. Against imbalanced expert updates, dropout is applied to the
  gate weights ``w`` during training (our choice; the MoSLD paper does not pin it down).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from more_cli.adapters import base_layers
from more_cli.adapters.config import AdapterConfig
from more_cli.adapters.context import RoutingContext


class AdapterLayer(nn.Module):
    """A frozen ``base_layer`` with a trainable low-rank update selected by ``config.kind``."""

    def __init__(
        self,
        base_layer: nn.Module,
        config: AdapterConfig,
        num_tasks: int,
        index: int,
        context: RoutingContext,
    ) -> None:
        super().__init__()
        self.base_layer = base_layer
        self.kind = config.kind
        self.r = config.r
        self.scaling = config.scaling
        self.index = index
        self.wants_contrastive = config.uses_router and config.cl_weight > 0
        # What the contrastive loss reads of the layer input: the first token in T5-style
        # models (the task prefix word), else the mean over positions: a causal decoder's
        # first token never sees the rest of the input, and a BERT-style input starts with
        # [CLS], the same for every input at the first layer. Set by inject_adapter.
        self.cl_pooling = "first"
        self.dropout = nn.Dropout(config.dropout) if config.dropout > 0 else nn.Identity()
        self.gate_dropout = config.dropout
        # A plain attribute, not a submodule: the context belongs to the whole model.
        object.__setattr__(self, "context", context)
        self.d_in, self.d_out = base_layers.dimensions(base_layer)
        self.lora_A, self.lora_B = self._init_pair(config, num_tasks)
        if config.kind == "more" and config.rank_scaling:
            scale = torch.arange(1, config.r + 1, dtype=torch.float32) / config.r
            self.register_buffer("component_scale", scale**2, persistent=False)
        else:
            self.component_scale = None
        self.experts = config.num_experts

    def _init_pair(
        self, config: AdapterConfig, num_tasks: int
    ) -> tuple[nn.Parameter, nn.Parameter]:
        leading = {"multilora": (num_tasks,), "mosld": (config.num_experts,)}.get(config.kind, ())
        a = torch.empty(*leading, config.r, self.d_in)
        for block in a.reshape(-1, config.r, self.d_in):
            nn.init.kaiming_uniform_(block, a=math.sqrt(5))  # as LoRA
        b_leading = leading if config.kind == "multilora" else ()
        b = torch.zeros(*b_leading, self.d_out, config.r)
        device = next(self.base_layer.parameters()).device
        return nn.Parameter(a.to(device)), nn.Parameter(b.to(device))

    @property
    def weight(self) -> torch.Tensor:
        """The base weight: model code reads ``layer.weight.dtype`` (T5's feed-forward does)."""
        return self.base_layer.weight

    @property
    def bias(self) -> torch.Tensor | None:
        return self.base_layer.bias

    def forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        result = self.base_layer(x, *args, **kwargs)
        if self.context.merged_task is not None:
            return result
        task_ids, weights = self.context.for_layer(self.index, x.shape[0])
        dropped = self.dropout(x).to(self.lora_A.dtype)
        if self.kind == "multilora":
            update = self._per_task_update(dropped, task_ids)
        elif self.kind == "mosld":
            update = self._shared_up_update(dropped, weights)
        else:
            update = self._masked_update(dropped, weights)
        # A sequence input is summarised for the contrastive loss, computed by the router.
        if self.wants_contrastive and self.training and x.dim() >= 3:
            summary = x.mean(dim=1) if self.cl_pooling == "mean" else x[:, 0, :]
            self.context.summaries[self.index] = summary
        return result + update.to(result.dtype)

    def _broadcast(self, per_sample: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """``[batch, n]`` -> ``[batch, 1, ..., n]`` to match ``x``'s middle dimensions."""
        return per_sample.reshape(per_sample.shape[0], *([1] * (x.dim() - 2)), -1)

    def _component_weights(self, weights: torch.Tensor | None) -> torch.Tensor | None:
        """Per-sample weights on the r components (before the up-projection), or None."""
        if self.kind == "lora":
            return None
        if self.kind == "moelora":
            weights = weights.repeat_interleave(self.r // self.experts, dim=-1)
        if self.component_scale is not None:
            weights = weights * self.component_scale
        return weights

    def _masked_update(self, x: torch.Tensor, weights: torch.Tensor | None) -> torch.Tensor:
        hidden = x @ self.lora_A.T
        component = self._component_weights(weights)
        if component is not None:
            hidden = hidden * self._broadcast(component.to(hidden.dtype), x)
        return (hidden @ self.lora_B.T) * self.scaling

    def _per_task_update(self, x: torch.Tensor, task_ids: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(x.shape[0], -1, self.d_in)
        hidden = torch.bmm(flat, self.lora_A[task_ids].transpose(1, 2))
        update = torch.bmm(hidden, self.lora_B[task_ids].transpose(1, 2)) * self.scaling
        return update.reshape(*x.shape[:-1], self.d_out)

    def _shared_up_update(self, x: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        if self.training and self.gate_dropout > 0:
            weights = nn.functional.dropout(weights, self.gate_dropout)
        hidden = x @ self.lora_A.reshape(-1, self.d_in).T  # [..., E * r]
        hidden = hidden.unflatten(-1, (self.experts, self.r))
        expert_weights = self._broadcast(weights.to(hidden.dtype), x)[..., None]
        mixed = (hidden * expert_weights).sum(-2)
        return (mixed @ self.lora_B.T) * self.scaling

    def delta_weight(self, task: int, routing: torch.Tensor | None) -> torch.Tensor:
        """The exact update ``ΔW`` of one task, ``[d_out, d_in]`` in fp32.

        Args:
            task: task id.
            routing: this layer's routing row for the task (``[n]``), None for lora/multilora.
        """
        a, b = self.lora_A.float(), self.lora_B.float()
        if self.kind == "multilora":
            return self.scaling * b[task] @ a[task]
        if self.kind == "mosld":
            return self.scaling * b @ torch.einsum("e,erd->rd", routing.float(), a)
        component = self._component_weights(None if routing is None else routing[None].float())
        if component is not None:
            b = b * component
        return self.scaling * b @ a

    def extra_repr(self) -> str:
        return f"kind={self.kind}, r={self.r}, d_in={self.d_in}, d_out={self.d_out}"
