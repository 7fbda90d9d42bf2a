"""The adapted linear layer: a frozen base layer plus the low-rank update of one adapter kind.

All kinds keep their per-task and per-expert state in stacked tensors and run a fixed number
of matmuls whatever the number of tasks in the batch; none loops over tasks or experts.
``scaling = alpha / r`` throughout. Equations, papers and sections: docs/method.md.

- ``more``: ``h = W x + scaling * ((dropout(x) A^T) * s^2 * m_t) B^T`` with ``m_t`` the
  task's rank mask (method.md §1). ``s_i = (i+1)/r`` scales A's row i and B's column i,
  hence ``s^2`` on the rank-r intermediate.
- ``lora``: the same with every component on and no scaling by ``s``.
- ``per_task_lora``: one rank-r pair per task, gathered per sample (batched matmuls).
- ``multilora`` (MultiLoRA): ``n`` parallel rank-r pairs shared by all tasks, each output
  scaled by a learnable vector ``c_i`` (zeros at init; A and B Kaiming-uniform):
  ``h = W x + scaling * sum_i c_i ⊙ (B_i A_i x)``, computed as one rank-``n·r`` pair with
  ``c_i`` folded into B.
- ``moelora`` (MOELoRA): ``E`` experts of rank ``r/E`` are blocks of one rank-r pair; the
  task gate's weight of expert ``e`` multiplies its block. Identical to the sum-of-experts
  form, computed with one pair of matmuls.
- ``mosld`` (MoSLD): one down-projection ``A`` shared by ``E`` experts, each with its own
  up-projection ``B_e``; a token-level router picks the top-k experts of every token:
  ``h = W x + scaling * sum_e S_e(x) B_e (A' x)``, ``A'`` = ``A`` with dropout on its
  entries during training.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from more_cli.adapters import base_layers
from more_cli.adapters.config import AdapterConfig
from more_cli.adapters.context import RoutingContext
from more_cli.errors import UserError


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
        self.experts = config.num_experts or 1
        # MoRE's contrastive loss reads a summary of the layer input: the first token in
        # T5-style models (the task prefix word), else the mean over the non-padding
        # positions: a causal decoder's first token never sees the rest of the input, and a
        # BERT-style input starts with [CLS], the same for every input. inject_adapter sets
        # the pooling and leaves out layers whose input cannot tell tasks apart.
        self.summarises = config.contrastive
        self.cl_pooling = "first"
        self.dropout = nn.Dropout(config.dropout) if config.dropout > 0 else nn.Identity()
        # A plain attribute, not a submodule: the context belongs to the whole model.
        object.__setattr__(self, "context", context)
        self.d_in, self.d_out = base_layers.dimensions(base_layer)
        device = next(self.base_layer.parameters()).device
        for name, tensor in _initial_parameters(config, num_tasks, self.d_in, self.d_out).items():
            setattr(self, name, nn.Parameter(tensor.to(device)))
        if config.kind == "more" and config.rank_scaling:
            scale = torch.arange(1, config.r + 1, dtype=torch.float32) / config.r
            self.register_buffer("component_scale", scale**2, persistent=False)
        else:
            self.component_scale = None
        self.top_k = config.top_k
        self.shared_dropout = config.shared_dropout or 0.0

    @property
    def weight(self) -> torch.Tensor:
        """The base weight: model code reads ``layer.weight.dtype`` (T5's feed-forward does)."""
        return self.base_layer.weight

    @property
    def bias(self) -> torch.Tensor | None:
        return self.base_layer.bias

    def adapter_parameters(self) -> dict[str, nn.Parameter]:
        """The layer's own trainable tensors by name (``lora_A``, ``lora_B``, and per kind
        ``lora_scale`` for multilora or ``lora_gate`` for mosld)."""
        return {name: p for name, p in self.named_parameters() if not name.startswith("base")}

    def forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        result = self.base_layer(x, *args, **kwargs)
        if self.context.merged_task is not None:
            return result
        task_ids, weights = self.context.for_layer(self.index, x.shape[0])
        dropped = self.dropout(x).to(self.lora_A.dtype)
        if self.kind == "per_task_lora":
            update = self._per_task_update(dropped, task_ids)
        elif self.kind == "multilora":
            update = self._parallel_update(dropped)
        elif self.kind == "mosld":
            update = self._shared_down_update(dropped, x)
        else:
            update = self._masked_update(dropped, weights)
        # A sequence input is summarised for the contrastive loss, computed by the router.
        if self.summarises and self.training and x.dim() >= 3:
            self.context.summaries[self.index] = self._summary(x)
        return result + update.to(result.dtype)

    def _summary(self, x: torch.Tensor) -> torch.Tensor:
        """``[batch, d_in]``: the first position, or the mean over non-padding positions."""
        if self.cl_pooling == "first":
            return x[:, 0, :]
        mask = self.context.attention_mask
        if mask is None or mask.shape[:2] != x.shape[:2]:
            return x.mean(dim=1)
        weights = mask.to(x.dtype)[..., None]
        return (x * weights).sum(1) / weights.sum(1).clamp_min(1.0)

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

    # Each update scales its r-wide hidden by ``scaling`` rather than the d_out-wide output:
    # the same product, and two passes over the narrow tensor instead of the wide one.
    def _masked_update(self, x: torch.Tensor, weights: torch.Tensor | None) -> torch.Tensor:
        hidden = x @ self.lora_A.T
        component = self._component_weights(weights)
        if component is None:
            hidden = hidden * self.scaling
        else:
            hidden = hidden * self._broadcast((component * self.scaling).to(hidden.dtype), x)
        return hidden @ self.lora_B.T

    def _per_task_update(self, x: torch.Tensor, task_ids: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(x.shape[0], -1, self.d_in)
        hidden = torch.bmm(flat, self.lora_A[task_ids].transpose(1, 2)) * self.scaling
        update = torch.bmm(hidden, self.lora_B[task_ids].transpose(1, 2))
        return update.reshape(*x.shape[:-1], self.d_out)

    def parallel_factors(self) -> tuple[torch.Tensor, torch.Tensor]:
        """MultiLoRA's modules as one pair: ``A [n·r, d_in]``, ``B [d_out, n·r]`` with each
        module's learnable output scaling folded into its columns of B."""
        a = self.lora_A.reshape(-1, self.d_in)
        b = (self.lora_B * self.lora_scale[..., None]).permute(1, 0, 2).reshape(self.d_out, -1)
        return a, b

    def _parallel_update(self, x: torch.Tensor) -> torch.Tensor:
        a, b = self.parallel_factors()
        return ((x @ a.T) * self.scaling) @ b.T

    def _shared_down_update(self, x: torch.Tensor, router_input: torch.Tensor) -> torch.Tensor:
        a = self.lora_A
        if self.training and self.shared_dropout > 0:
            a = nn.functional.dropout(a, self.shared_dropout)
        hidden = x @ a.T  # [..., r]
        gates = self._token_gates(router_input).to(hidden.dtype)  # [..., E], top-k, else 0
        gates = gates * self.scaling
        mixed = (gates[..., :, None] * hidden[..., None, :]).flatten(-2)  # [..., E * r]
        up = self.lora_B.permute(1, 0, 2).reshape(self.d_out, -1)  # [d_out, E * r]
        return mixed @ up.T

    def _token_gates(self, x: torch.Tensor) -> torch.Tensor:
        """MoSLD's router: top-k of ``softmax(W_g x)`` per token, renormalised over the k.

        In training it also hands the context this layer's load-balancing term
        ``E · Σ_e f_e P_e`` (f_e: share of routed slots on expert e, P_e: mean probability).
        """
        probs = (x.to(self.lora_gate.dtype) @ self.lora_gate.T).float().softmax(-1)
        top, chosen = probs.topk(self.top_k, dim=-1)
        gates = torch.zeros_like(probs).scatter_(-1, chosen, top / top.sum(-1, keepdim=True))
        if self.training:
            flat_probs = probs.reshape(-1, self.experts)
            routed = torch.zeros_like(flat_probs).scatter_(-1, chosen.reshape(-1, self.top_k), 1)
            share = routed.mean(0) / self.top_k
            self.context.balance[self.index] = self.experts * (share * flat_probs.mean(0)).sum()
        return gates

    def delta_weight(self, task: int, routing: torch.Tensor | None) -> torch.Tensor:
        """The exact update ``ΔW`` of one task, ``[d_out, d_in]`` in fp32.

        Args:
            task: task id.
            routing: this layer's routing row for the task (``[n]``), None for the kinds
                without a task router.
        """
        if self.kind == "mosld":
            raise UserError(
                "a mosld adapter has no per-task weight update to merge: its router picks "
                "experts per token; serve it unmerged (more predict / more eval)"
            )
        if self.kind == "multilora":
            a, b = self.parallel_factors()
            return self.scaling * b.float() @ a.float()
        a, b = self.lora_A.float(), self.lora_B.float()
        if self.kind == "per_task_lora":
            return self.scaling * b[task] @ a[task]
        component = self._component_weights(None if routing is None else routing[None].float())
        if component is not None:
            b = b * component
        return self.scaling * b @ a

    def extra_repr(self) -> str:
        return f"kind={self.kind}, r={self.r}, d_in={self.d_in}, d_out={self.d_out}"


def _initial_parameters(
    config: AdapterConfig, num_tasks: int, d_in: int, d_out: int
) -> dict[str, torch.Tensor]:
    """Each kind's trainable tensors at initialisation, as its paper (or reference code) sets
    them; ``ΔW = 0`` at the start for every kind."""
    r, kind = config.r, config.kind
    if kind == "per_task_lora":
        return {"lora_A": _kaiming(num_tasks, r, d_in), "lora_B": torch.zeros(num_tasks, d_out, r)}
    if kind == "multilora":
        # MultiLoRA: B is Kaiming-uniform like A (not zero); the learnable scaling starts at
        # zero, which keeps ΔW = 0 while every module gets gradients from the first step.
        n = config.num_experts
        return {
            "lora_A": _kaiming(n, r, d_in),
            "lora_B": _kaiming(n, d_out, r),
            "lora_scale": torch.zeros(n, d_out),
        }
    if kind == "moelora":
        # The MOELoRA reference code draws A from N(0, 0.01²), not LoRA's Kaiming-uniform.
        return {"lora_A": torch.randn(r, d_in) * 0.01, "lora_B": torch.zeros(d_out, r)}
    if kind == "mosld":
        # One shared A (the general-feature matrix) and one zero B per expert; the router is
        # a bias-free linear layer on the token, initialised as nn.Linear.
        return {
            "lora_A": _kaiming(r, d_in),
            "lora_B": torch.zeros(config.num_experts, d_out, r),
            "lora_gate": _kaiming(config.num_experts, d_in),
        }
    return {"lora_A": _kaiming(r, d_in), "lora_B": torch.zeros(d_out, r)}


def _kaiming(*shape: int) -> torch.Tensor:
    """LoRA's (and nn.Linear's) init of each trailing 2-D block: Kaiming-uniform, a = √5."""
    tensor = torch.empty(*shape)
    for block in tensor.reshape(-1, shape[-2], shape[-1]):
        nn.init.kaiming_uniform_(block, a=math.sqrt(5))
    return tensor
