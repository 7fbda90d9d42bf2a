"""Task-level routing: task embeddings and gates, MoRE's hard rank router and MOELoRA's gate.

Both depend on the task only, never on the tokens (method.md §2), so one call computes the
routing of *every task at every layer* as a ``[layers, tasks, n]`` tensor, or (given task
ids) of just those tasks, ``[layers, len(ids), n]``: a batch smaller than the task count
then costs what the batch needs, not what every task's gates would.

- :class:`Router` (MoRE): ``n = r`` and row ``[l, t]`` is task t's rank mask at layer l.
  Layers are grouped by input width so that every group's gates run as one batched einsum:
  with ``task_embedding: per_layer`` each layer owns a table of width ``d_in`` (the
  authors' layout); with ``shared`` one small table feeds every gate.
- :class:`TaskGate` (MOELoRA): ``n = num_experts`` dense softmax weights from one task
  embedding table and one bias-free gate shared by every layer, as in MOELoRA.

(MoSLD routes per token; its router lives in the layer.)
"""

from __future__ import annotations

import math

import torch
from torch import nn

from more_cli.adapters.config import AdapterConfig
from more_cli.adapters.contrastive import task_contrastive_losses


class _WidthGroup(nn.Module):
    """Gates (and, per layer, task embeddings) of the layers that share one input width."""

    def __init__(
        self, num_layers: int, num_tasks: int, d_in: int, outputs: int, config: AdapterConfig
    ) -> None:
        super().__init__()
        per_layer = config.task_embedding == "per_layer"
        width = d_in if per_layer else config.task_embedding_dim
        self.embedding = (
            nn.Parameter(torch.randn(num_layers, num_tasks, d_in)) if per_layer else None
        )
        bound = 1.0 / math.sqrt(width)
        self.gate_weight = nn.Parameter(
            torch.empty(num_layers, outputs, width).uniform_(-bound, bound)
        )
        self.gate_bias = nn.Parameter(torch.zeros(num_layers, outputs))
        # Shared embeddings are narrower than the layer input: the contrastive loss compares
        # them with the layer input through a learned projection d_in -> width. One per input
        # width, shared by the group's layers: per-layer projections would cost more
        # parameters than the per-layer embeddings the shared layout is meant to save.
        wants_projection = not per_layer and config.cl_weight > 0
        in_bound = 1.0 / math.sqrt(d_in)
        self.cl_projection = (
            nn.Parameter(torch.empty(width, d_in).uniform_(-in_bound, in_bound))
            if wants_projection
            else None
        )

    def logits(
        self, shared_embedding: torch.Tensor | None, tasks: torch.Tensor | None = None
    ) -> torch.Tensor:
        """``[group layers, tasks, n]``; ``shared_embedding`` already holds the rows of
        ``tasks``, the per-layer tables are indexed here (all tasks when ``tasks`` is None)."""
        if self.embedding is not None:
            table = self.embedding if tasks is None else self.embedding[:, tasks]
            scores = torch.einsum("ltd,lnd->ltn", table, self.gate_weight)
        else:
            scores = torch.einsum("td,lnd->ltn", shared_embedding, self.gate_weight)
        return scores + self.gate_bias[:, None, :]


class Router(nn.Module):
    """MoRE's task embeddings and gates for every adapted layer of one model.

    Args:
        config: the adapter config (kind, r, router mode, embedding layout, fixed ranks).
        tasks: task names, in task-id order.
        layer_widths: input width ``d_in`` of each adapted layer, in layer order.
    """

    hard = True

    def __init__(self, config: AdapterConfig, tasks: list[str], layer_widths: list[int]) -> None:
        super().__init__()
        self.config = config
        self.num_layers = len(layer_widths)
        self.num_tasks = len(tasks)
        outputs = config.r
        self.shared_embedding = (
            nn.Parameter(torch.randn(len(tasks), config.task_embedding_dim))
            if config.task_embedding == "shared"
            else None
        )
        widths = sorted(set(layer_widths))
        self.group_layers = [[i for i, w in enumerate(layer_widths) if w == d] for d in widths]
        self.groups = nn.ModuleList(
            _WidthGroup(len(layers), len(tasks), d, outputs, config)
            for d, layers in zip(widths, self.group_layers, strict=True)
        )
        order = [i for layers in self.group_layers for i in layers]
        self.register_buffer("_layer_order", torch.argsort(torch.tensor(order)), persistent=False)
        self.register_buffer("fixed_ranks", self._fixed_rank_table(config, tasks))
        if config.start_rank is not None:
            self._start_at_rank(config.start_rank)
        if config.router == "frozen_random":
            self._freeze_at_initial_choice()
        if bool((self.fixed_ranks > 0).all()):
            # Every rank is forced: the gates play no part in the forward and must not train
            # (an unused trainable parameter breaks DDP).
            for group in self.groups:
                group.gate_weight.requires_grad_(False)
                group.gate_bias.requires_grad_(False)

    def add_tasks(self, count: int, fixed_ranks: list[int]) -> list[nn.Parameter]:
        """Grow every task-embedding table by ``count`` new tasks; return the grown tables.

        Only the new rows may change: a gradient hook zeroes the old rows' gradients, so
        with no weight decay on them (the training loop's rule for embeddings) the old
        tasks' routing stays bit-for-bit the same.
        """
        old = self.num_tasks
        grown = []
        for owner, name in self._embedding_tables():
            table: nn.Parameter = getattr(owner, name)
            task_dim = table.dim() - 2
            fresh = torch.randn(*table.shape[:task_dim], count, table.shape[-1])
            merged = torch.cat([table.detach(), fresh.to(table)], dim=task_dim)
            parameter = nn.Parameter(merged)
            parameter.register_hook(_keep_rows_fixed(task_dim, old))
            setattr(owner, name, parameter)
            grown.append(parameter)
        self.num_tasks = old + count
        self.fixed_ranks = torch.cat(
            [self.fixed_ranks, torch.tensor(fixed_ranks).to(self.fixed_ranks)]
        )
        if hasattr(self, "frozen_choice"):
            with torch.no_grad():
                initial = self.logits().argmax(-1)[:, old:] + 1
            self.frozen_choice = torch.cat([self.frozen_choice, initial], dim=1)
        return grown

    def gate_parameters(self) -> list[nn.Parameter]:
        """The gates shared by all tasks (transfer trains them only when asked)."""
        return [p for group in self.groups for p in (group.gate_weight, group.gate_bias)]

    def _embedding_tables(self) -> list[tuple[nn.Module, str]]:
        if self.shared_embedding is not None:
            return [(self, "shared_embedding")]
        return [(group, "embedding") for group in self.groups]

    def _fixed_rank_table(self, config: AdapterConfig, tasks: list[str]) -> torch.Tensor:
        """[tasks] forced rank per task, 0 where the router chooses."""
        fixed = config.fixed_ranks
        if fixed is None:
            return torch.zeros(len(tasks), dtype=torch.long)
        if isinstance(fixed, int):
            return torch.full((len(tasks),), fixed, dtype=torch.long)
        return torch.tensor([fixed.get(task, 0) for task in tasks], dtype=torch.long)

    def _start_at_rank(self, rank: int) -> None:
        """Raise each layer's gate bias of expert ``rank`` until that expert leads every
        task's logits by log(3 (r - 1)): its probability is then at least 0.75 for every
        task, and the gradient still reaches the gate (it is not saturated)."""
        if self.config.r == 1:
            return
        margin = math.log(3 * (self.config.r - 1))
        with torch.no_grad():
            for group in self.groups:
                logits = group.logits(self.shared_embedding)  # [layers, tasks, r]
                others = torch.cat([logits[..., : rank - 1], logits[..., rank:]], dim=-1)
                lead = logits[..., rank - 1] - others.max(-1).values  # [layers, tasks]
                group.gate_bias[:, rank - 1] += (margin - lead.min(-1).values).clamp_min(0)

    def _freeze_at_initial_choice(self) -> None:
        """Reproduce the authors' released code: ranks stay at the initial gate's argmax."""
        with torch.no_grad():
            initial = self.logits().argmax(-1) + 1  # [layers, tasks]
        self.register_buffer("frozen_choice", initial)
        for group in self.groups:
            group.gate_weight.requires_grad_(False)
            group.gate_bias.requires_grad_(False)

    def logits(self, tasks: torch.Tensor | None = None) -> torch.Tensor:
        """Gate logits ``[layers, tasks, n]`` of every task, or of the task ids ``tasks`` (in
        their order, repeats allowed)."""
        shared = self.shared_embedding
        if shared is not None and tasks is not None:
            shared = shared[tasks]
        per_group = [group.logits(shared, tasks) for group in self.groups]
        return torch.cat(per_group)[self._layer_order]

    def forward(self, tasks: torch.Tensor | None = None) -> torch.Tensor:
        """Routing of every task (or of the task ids ``tasks``) at every layer:
        ``[layers, tasks, r]``, differentiable rank masks (hard in the forward,
        straight-through gradient to the gates and task embeddings)."""
        logits = self.logits(tasks)
        fixed_ranks = self.fixed_ranks if tasks is None else self.fixed_ranks[tasks]
        if self.config.router == "frozen_random":
            frozen = self.frozen_choice if tasks is None else self.frozen_choice[:, tasks]
            choice = _one_hot_rank(frozen, self.config.r, logits.dtype)
        else:
            probs = logits.softmax(-1)
            hard = torch.zeros_like(probs).scatter_(-1, probs.argmax(-1, keepdim=True), 1.0)
            choice = probs - probs.detach() + hard  # straight-through estimator
        # Applied whether or not any rank is forced: a branch on the buffer's values would
        # break a torch.compile graph, and where() with nothing forced returns choice as is.
        forced = fixed_ranks > 0
        fixed = _one_hot_rank(fixed_ranks.clamp(min=1), self.config.r, logits.dtype)
        choice = torch.where(forced[None, :, None], fixed.expand_as(choice), choice)
        # Component j is on when the chosen expert k >= j + 1: reverse cumulative sum.
        return choice.flip(-1).cumsum(-1).flip(-1)

    def chosen_ranks(self) -> torch.Tensor:
        """The rank each task uses at each layer, ``[layers, tasks]`` (1..r)."""
        with torch.no_grad():
            return self.forward().round().sum(-1).long()

    def confidence(self) -> torch.Tensor:
        """Gate probability of the chosen expert, ``[layers, tasks]``."""
        with torch.no_grad():
            probs = self.logits().softmax(-1)
            chosen = self.chosen_ranks() - 1
            return probs.gather(-1, chosen[..., None])[..., 0]

    def contrastive_loss(
        self, summaries: dict[int, torch.Tensor], task_ids: torch.Tensor
    ) -> torch.Tensor | None:
        """Mean over layers of each layer's contrastive loss (method.md §3).

        Args:
            summaries: layer index -> ``[batch, d_in]`` summary of that layer's input, for
                the layers that ran in the last training forward.
            task_ids: ``[batch]`` true task of each sample.

        One batched computation per input width: per-layer losses on tiny ``[batch, tasks]``
        similarity matrices would cost dozens of small kernels per adapted layer.
        """
        per_group = []
        for group, layers in zip(self.groups, self.group_layers, strict=True):
            positions = [p for p, layer in enumerate(layers) if layer in summaries]
            if not positions:
                continue
            stacked = torch.stack([summaries[layers[p]] for p in positions])
            if self.config.cl_detach_inputs:
                stacked = stacked.detach()  # the loss then trains the embeddings only
            if group.embedding is None:
                banks = self.shared_embedding[None]
            elif len(positions) == len(layers):
                banks = group.embedding
            else:
                banks = group.embedding[positions]
            per_group.append(
                task_contrastive_losses(
                    stacked, banks, task_ids, self.config.cl_temperature, group.cl_projection
                )
            )
        return torch.cat(per_group).mean() if per_group else None

    def task_embeddings(self) -> torch.Tensor:
        """One vector per task for plots: the shared table, or the per-layer tables joined."""
        if self.shared_embedding is not None:
            return self.shared_embedding.detach()
        per_layer = [group.embedding.detach().permute(1, 0, 2) for group in self.groups]
        return torch.cat([p.reshape(self.num_tasks, -1) for p in per_layer], dim=-1)


class TaskGate(nn.Module):
    """MOELoRA's gate: ``w_t = softmax(W_g e_t)`` over the experts, one task-embedding table
    (width ``task_embedding_dim``) and one bias-free gate shared by all adapted layers, as in
    the MOELoRA reference code.

    Args:
        config: the adapter config (num_experts, task_embedding_dim).
        tasks: task names, in task-id order.
        num_layers: adapted layers; each reads the same weights.
    """

    hard = False

    def __init__(self, config: AdapterConfig, tasks: list[str], num_layers: int) -> None:
        super().__init__()
        self.num_layers = num_layers
        self.num_tasks = len(tasks)
        # nn.Embedding's and nn.Linear's default initialisations, as in the reference.
        self.embedding = nn.Parameter(torch.randn(len(tasks), config.task_embedding_dim))
        bound = 1.0 / math.sqrt(config.task_embedding_dim)
        self.gate_weight = nn.Parameter(
            torch.empty(config.num_experts, config.task_embedding_dim).uniform_(-bound, bound)
        )

    def logits(self, tasks: torch.Tensor | None = None) -> torch.Tensor:
        """Gate logits ``[layers, tasks, E]`` of every task or of the ids ``tasks`` (the same
        at every layer; a view, no copy)."""
        table = self.embedding if tasks is None else self.embedding[tasks]
        scores = table @ self.gate_weight.T
        return scores[None].expand(self.num_layers, -1, -1)

    def forward(self, tasks: torch.Tensor | None = None) -> torch.Tensor:
        return self.logits(tasks).softmax(-1)

    def confidence(self) -> torch.Tensor:
        """Largest expert weight per layer and task, ``[layers, tasks]``."""
        with torch.no_grad():
            return self.forward().max(-1).values

    def gate_parameters(self) -> list[nn.Parameter]:
        return [self.gate_weight]

    def add_tasks(self, count: int, fixed_ranks: list[int]) -> list[nn.Parameter]:
        """Grow the task-embedding table by ``count`` rows; only the new rows train."""
        del fixed_ranks  # MOELoRA has no ranks to fix
        old = self.num_tasks
        fresh = torch.randn(count, self.embedding.shape[-1]).to(self.embedding)
        self.embedding = nn.Parameter(torch.cat([self.embedding.detach(), fresh]))
        self.embedding.register_hook(_keep_rows_fixed(0, old))
        self.num_tasks = old + count
        return [self.embedding]

    def task_embeddings(self) -> torch.Tensor:
        return self.embedding.detach()


def _keep_rows_fixed(task_dim: int, rows: int):
    def hook(grad: torch.Tensor) -> torch.Tensor:
        grad = grad.clone()
        grad.narrow(task_dim, 0, rows).zero_()
        return grad

    return hook


def _one_hot_rank(ranks: torch.Tensor, r: int, dtype: torch.dtype) -> torch.Tensor:
    return nn.functional.one_hot(ranks - 1, r).to(dtype)
