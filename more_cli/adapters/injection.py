"""Putting an adapter into a Hugging Face model, and the handle used to drive it afterwards."""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator, Sequence

import torch
from torch import nn

from more_cli.adapters import base_layers
from more_cli.adapters.config import TARGET_PRESETS, AdapterConfig
from more_cli.adapters.context import RoutingContext
from more_cli.adapters.layer import AdapterLayer
from more_cli.adapters.router import Router, TaskGate
from more_cli.errors import UserError

ROUTER_ATTRIBUTE = "more_router"
HANDLE_ATTRIBUTE = "_more_adapter"

_FAMILY_OF_MODEL_TYPE = {
    "t5": "t5", "mt5": "t5", "umt5": "t5", "longt5": "t5",
    "llama": "llama", "mistral": "llama", "qwen2": "llama", "qwen3": "llama", "gemma": "llama",
    "gemma2": "llama", "phi3": "llama", "olmo": "llama", "smollm3": "llama",
    "bert": "bert", "roberta": "bert", "xlm-roberta": "bert", "electra": "bert",
    "gpt2": "gpt2",
}  # fmt: skip
_REGEX_CHARACTERS = set(".*+?[](){}|^$\\")
# T5-style decoders: in the first block the self-attention and the cross-attention query see
# only the decoder start token at position 0, the same for every sample, so their summaries
# cannot tell tasks apart and stay out of MoRE's contrastive loss.
_SAME_FIRST_TOKEN = re.compile(
    r"(.*\.)?decoder\.block\.0\.layer\.(0\.SelfAttention\.[qkvo]|1\.EncDecAttention\.q)"
)


def resolve_target_patterns(model: nn.Module, targets: list[str] | str) -> list[str]:
    """Turn ``targets`` ("auto", a preset name, or names/regexes) into a list of patterns."""
    if targets == "auto":
        model_type = getattr(getattr(model, "config", None), "model_type", None)
        preset = _FAMILY_OF_MODEL_TYPE.get(model_type)
        if preset is None:
            raise UserError(
                f"no default target modules for model type {model_type!r}; set adapter.targets "
                "to module names, e.g. [q_proj, v_proj]"
            )
        return TARGET_PRESETS[preset]
    if isinstance(targets, str):
        if targets not in TARGET_PRESETS:
            return [targets]
        return TARGET_PRESETS[targets]
    return list(targets)


def find_target_modules(model: nn.Module, patterns: Sequence[str]) -> list[str]:
    """Paths of the supported linear layers whose leaf name or full path matches a pattern.

    A pattern with regex characters must match the whole module path; any other pattern
    must equal the module's leaf name (``q`` matches ``encoder.block.0...SelfAttention.q``).
    """
    found = []
    for path, module in model.named_modules():
        if not path or isinstance(module, AdapterLayer) or not base_layers.is_supported(module):
            continue
        leaf = path.rsplit(".", 1)[-1]
        for pattern in patterns:
            is_regex = bool(set(pattern) & _REGEX_CHARACTERS)
            if (is_regex and re.fullmatch(pattern, path)) or (not is_regex and leaf == pattern):
                found.append(path)
                break
    return found


class MultiTaskAdapter:
    """Handle on an adapter living inside ``model``: routing, merging, accounting, state.

    Create it with :func:`inject_adapter` or :func:`more_cli.adapters.load_adapter`.
    """

    def __init__(self, model: nn.Module, config: AdapterConfig, tasks: list[str]) -> None:
        self.model = model
        self.config = config
        self.tasks = list(tasks)
        self.context = RoutingContext()
        self.layers: dict[str, AdapterLayer] = {}
        self.router: Router | TaskGate | None = None
        self._hook = None
        self._explicit_context: torch.Tensor | None = None

    # ----------------------------------------------------------------- tasks and routing
    def task_index(self, task: str) -> int:
        if task not in self.tasks:
            raise UserError(f"unknown task {task!r}; this adapter knows {', '.join(self.tasks)}")
        return self.tasks.index(task)

    def as_task_ids(self, tasks: torch.Tensor | Sequence[int | str] | str) -> torch.Tensor:
        """Task ids as a LongTensor, from a tensor, ids, names or one name."""
        if isinstance(tasks, torch.Tensor):
            ids = tasks.long()
        else:
            items = [tasks] if isinstance(tasks, str) else list(tasks)
            ids = torch.tensor(
                [self.task_index(t) if isinstance(t, str) else int(t) for t in items],
                dtype=torch.long,
            )
        # Checked eagerly only: under torch.compile the data-dependent test would break the
        # graph (an id out of range still fails there, in the routing's indexing).
        compiling = torch.compiler.is_compiling()
        if ids.numel() and not compiling and (ids.min() < 0 or ids.max() >= len(self.tasks)):
            raise UserError(f"task ids must lie in 0..{len(self.tasks) - 1}, got {ids.tolist()}")
        return ids

    def routing(self) -> torch.Tensor | None:
        """Routing of every task at every layer ``[layers, tasks, n]`` (None for lora kinds)."""
        return None if self.router is None else self.router()

    def sample_routing(self, task_ids: torch.Tensor) -> torch.Tensor | None:
        """Each sample's routing ``[layers, batch, n]`` (None for lora kinds).

        A batch of fewer samples than tasks routes its samples' own tasks only, so that its
        cost follows the batch and not the number of tasks; a larger one gathers every
        task's routing. The values are the same either way (and the gradients, up to the
        order of a sum); the choice depends on shapes only, which ``torch.compile`` allows.
        """
        if self.router is None:
            return None
        if task_ids.numel() < self.router.num_tasks:
            return self.router(task_ids)
        return self.router()[:, task_ids]

    def _activate(self, task_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> None:
        device = next(iter(self.layers.values())).lora_A.device
        task_ids = task_ids.to(device)
        self._check_merged_task(task_ids)
        self.context.set(task_ids, self.sample_routing(task_ids), attention_mask)

    def _check_merged_task(self, task_ids: torch.Tensor) -> None:
        """A merged model serves its merged task only (where the kind's update depends on
        the task): other task ids would silently get the merged task's output."""
        merged = self.context.merged_task
        if merged is None or self.config.kind in ("lora", "multilora"):
            return
        others = sorted({self.tasks[i] for i in task_ids.tolist() if i != merged})
        if others:
            raise UserError(
                f"the adapter has task {self.tasks[merged]!r} merged into the base weights, "
                f"so it cannot serve {', '.join(map(repr, others))}; call adapter.unmerge() "
                "first, or call the model with that task only"
            )

    def _pre_forward(self, module: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
        task_ids = kwargs.pop("task_ids", None)
        mask = kwargs.get("attention_mask")
        if task_ids is not None:
            self._activate(self.as_task_ids(task_ids), mask)
        elif self._explicit_context is not None:
            self._activate(self._explicit_context, mask)
        elif self.context.merged_task is None:
            self.context.clear()
        return args, kwargs

    @contextlib.contextmanager
    def task_context(self, tasks: torch.Tensor | Sequence[int | str] | str) -> Iterator[None]:
        """Route every model call inside the block with these task ids (for ``generate``)."""
        previous = self._explicit_context
        self._explicit_context = self.as_task_ids(tasks)
        self._activate(self._explicit_context)
        try:
            yield
        finally:
            self._explicit_context = previous
            self.context.clear()

    def auxiliary_loss(self) -> torch.Tensor | None:
        """The kind's own loss term of the last training forward, weighted: add it to the
        task loss. MoRE: ``cl_weight`` × the contrastive loss (mean over layers); MoSLD:
        ``balance_weight`` × the load-balancing loss (mean over layers); None otherwise, and
        when the forward did not train."""
        summaries, balance = self.context.summaries, self.context.balance
        if summaries and isinstance(self.router, Router):
            batch = next(iter(summaries.values())).shape[0]
            loss = self.router.contrastive_loss(summaries, self.context.task_ids_for(batch))
            return None if loss is None else self.config.cl_weight * loss
        if balance:
            return self.config.balance_weight * torch.stack(list(balance.values())).mean()
        return None

    def chosen_ranks(self) -> dict[str, dict[str, int]]:
        """The rank each task uses at each layer (MoRE); r everywhere for the other kinds."""
        names = list(self.layers)
        if self.router is None or not self.router.hard:
            return {task: dict.fromkeys(names, self.config.r) for task in self.tasks}
        ranks = self.router.chosen_ranks()
        return {
            task: {name: int(ranks[i, t]) for i, name in enumerate(names)}
            for t, task in enumerate(self.tasks)
        }

    def router_confidence(self) -> dict[str, dict[str, float]]:
        """Gate probability of the chosen expert per task and layer (1.0 without a router)."""
        names = list(self.layers)
        if self.router is None:
            return {task: dict.fromkeys(names, 1.0) for task in self.tasks}
        confidence = self.router.confidence()
        return {
            task: {name: float(confidence[i, t]) for i, name in enumerate(names)}
            for t, task in enumerate(self.tasks)
        }

    def add_tasks(self, tasks: Sequence[str], train_gates: bool = False) -> None:
        """Transfer: add new tasks that train only their task embeddings (and the gates).

        The shared low-rank experts and everything else freeze, so the old tasks'
        predictions stay exactly as they were unless ``train_gates`` is set (the gates are
        shared by all tasks, so training them also moves the old tasks' ranks).
        """
        if self.router is None:
            raise UserError(
                f"adapter kind {self.config.kind!r} has no task embeddings to add tasks to; "
                "transfer needs kind more or moelora"
            )
        clashes = sorted(set(tasks) & set(self.tasks))
        if clashes:
            raise UserError(f"tasks {clashes} are already in this adapter; pick new names")
        fixed = self.config.fixed_ranks
        ranks = [fixed if isinstance(fixed, int) else 0 for _ in tasks]
        for param in self._named_parameters().values():
            param.requires_grad_(False)
        for table in self.router.add_tasks(len(tasks), ranks):
            table.requires_grad_(True)
        if train_gates:
            for gate in self.router.gate_parameters():
                gate.requires_grad_(True)
        self.tasks.extend(tasks)

    # ------------------------------------------------------------------------- merging
    def delta_weights(self, task: str) -> dict[str, torch.Tensor]:
        """Exact per-layer update ``ΔW`` of one task, ``{layer: [d_out, d_in]}`` in fp32."""
        index = self.task_index(task)
        self.check_mergeable()
        with torch.no_grad():
            routing = self.routing()
            return {
                name: layer.delta_weight(index, None if routing is None else routing[i, index])
                for i, (name, layer) in enumerate(self.layers.items())
            }

    def check_mergeable(self) -> None:
        """Refuse kinds whose update is not one fixed ``ΔW`` per task (mosld)."""
        if not self.config.mergeable:
            raise UserError(
                f"a {self.config.kind} adapter cannot be merged or exported per task: its "
                "router picks experts for every token, so no single weight update serves a "
                "task; serve it unmerged (more predict, more eval)"
            )

    def merge(self, task: str) -> None:
        """Add task's update into the base weights in place; the model then serves only it."""
        if self.context.merged_task is not None:
            raise UserError(
                f"task {self.tasks[self.context.merged_task]!r} is already merged; unmerge first"
            )
        for name, delta in self.delta_weights(task).items():
            base_layers.add_to_weight(self.layers[name].base_layer, delta)
        self.context.merged_task = self.task_index(task)

    def unmerge(self) -> None:
        """Subtract the merged task's update again (exact up to floating-point rounding)."""
        if self.context.merged_task is None:
            return
        for name, delta in self.delta_weights(self.tasks[self.context.merged_task]).items():
            base_layers.add_to_weight(self.layers[name].base_layer, -delta)
        self.context.merged_task = None

    def merge_and_unload(self, task: str, dtype: torch.dtype | None = None) -> nn.Module:
        """Replace every adapted layer by a plain layer holding ``W + ΔW_task``; return model.

        4-bit base layers are dequantized into ``dtype`` (default float32) first: the update
        is never added to 4-bit weights. The adapter is removed from the model afterwards.
        """
        if self.context.merged_task is not None:
            self.unmerge()
        deltas = self.delta_weights(task)
        for name, layer in self.layers.items():
            base = layer.base_layer
            if base_layers.is_4bit(base) or dtype is not None:
                target_dtype = dtype or torch.float32
                base = base_layers.dequantized_copy(base, target_dtype)
            base_layers.add_to_weight(base, deltas[name])
            _replace_module(self.model, name, base)
        self.remove()
        return self.model

    def remove(self) -> None:
        """Detach the hook and router from the model (layers already replaced stay so)."""
        if self._hook is not None:
            self._hook.remove()
            self._hook = None
        if hasattr(self.model, ROUTER_ATTRIBUTE):
            delattr(self.model, ROUTER_ATTRIBUTE)
        if HANDLE_ATTRIBUTE in self.model.__dict__:
            del self.model.__dict__[HANDLE_ATTRIBUTE]

    # ------------------------------------------------------------------ parameters
    def named_trainable_parameters(self) -> dict[str, nn.Parameter]:
        """Adapter and router parameters that train, keyed as in :meth:`state_dict`."""
        return {k: p for k, p in self._named_parameters().items() if p.requires_grad}

    def _named_parameters(self) -> dict[str, nn.Parameter]:
        named = {}
        for name, layer in self.layers.items():
            for key, param in layer.adapter_parameters().items():
                named[f"layers.{name}.{key}"] = param
        if self.router is not None:
            for key, param in self.router.named_parameters():
                named[f"router.{key}"] = param
        return named

    def state_dict(self) -> dict[str, torch.Tensor]:
        """All adapter tensors (trainable or frozen, plus router buffers), detached."""
        state = {k: p.detach() for k, p in self._named_parameters().items()}
        if self.router is not None:
            for key, buffer in self.router.named_buffers():
                if key in self.router.state_dict():
                    state[f"router.{key}"] = buffer.detach()
        return state

    def parameter_counts(self) -> dict[str, int]:
        """Trainable parameter counts by component, total and per task."""
        counts = {"lora": 0, "gates": 0, "task_embeddings": 0, "cl_projection": 0}
        per_task_specific = 0
        for key, param in self.named_trainable_parameters().items():
            n = param.numel()
            if key.endswith("lora_gate"):
                counts["gates"] += n
            elif key.startswith("layers."):
                counts["lora"] += n
                if self.config.kind == "per_task_lora":
                    per_task_specific += n // len(self.tasks)
            elif "embedding" in key:
                counts["task_embeddings"] += n
                per_task_specific += n // len(self.tasks)
            elif "cl_projection" in key:
                counts["cl_projection"] += n
            else:
                counts["gates"] += n
        counts["total"] = sum(counts.values())
        counts["per_task_specific"] = per_task_specific
        counts["per_task_average"] = counts["total"] // len(self.tasks)
        counts["lora_same_rank"] = sum(
            self.config.r * (layer.d_in + layer.d_out) for layer in self.layers.values()
        )
        return counts


def _replace_module(model: nn.Module, path: str, new: nn.Module) -> None:
    parent_path, _, child = path.rpartition(".")
    parent = model.get_submodule(parent_path) if parent_path else model
    setattr(parent, child, new)


def _is_encoder_decoder(model: nn.Module) -> bool:
    return bool(getattr(getattr(model, "config", None), "is_encoder_decoder", False))


def inject_adapter(
    model: nn.Module, config: AdapterConfig, tasks: Sequence[str]
) -> MultiTaskAdapter:
    """Wrap the target layers of ``model`` in place and return the adapter's handle.

    Base weights are frozen; only adapter layers, gates and task embeddings train. The
    router is registered on the model as ``more_router`` so that optimizers, ``.to()`` and
    distributed wrappers see it.
    """
    if not tasks:
        raise UserError("an adapter needs at least one task")
    if HANDLE_ATTRIBUTE in model.__dict__:
        raise UserError("this model already holds a more adapter; load into a fresh model")
    patterns = resolve_target_patterns(model, config.targets)
    paths = find_target_modules(model, patterns)
    if not paths:
        examples = sorted(
            {p.rsplit(".", 1)[-1] for p, m in model.named_modules() if base_layers.is_supported(m)}
        )
        raise UserError(
            f"adapter.targets {patterns} matched no linear layer; this model's linear layers "
            f"are named {', '.join(examples[:12])}"
        )
    for param in model.parameters():
        param.requires_grad_(False)
    adapter = MultiTaskAdapter(model, config, list(tasks))
    encoder_decoder = _is_encoder_decoder(model)
    for index, path in enumerate(paths):
        base = model.get_submodule(path)
        layer = AdapterLayer(base, config, len(tasks), index, adapter.context)
        layer.train(base.training)  # a layer injected into an eval-mode model stays in eval
        layer.cl_pooling = "first" if encoder_decoder else "mean"
        if encoder_decoder and _SAME_FIRST_TOKEN.fullmatch(path):
            layer.summarises = False
        _replace_module(model, path, layer)
        adapter.layers[path] = layer
    if config.task_routed:
        widths = [layer.d_in for layer in adapter.layers.values()]
        device = next(iter(adapter.layers.values())).lora_A.device
        router = (
            Router(config, adapter.tasks, widths)
            if config.kind == "more"
            else TaskGate(config, adapter.tasks, len(widths))
        )
        adapter.router = router.to(device).train(model.training)
        model.add_module(ROUTER_ATTRIBUTE, adapter.router)
    adapter._hook = model.register_forward_pre_hook(adapter._pre_forward, with_kwargs=True)
    model.__dict__[HANDLE_ATTRIBUTE] = adapter
    return adapter


def get_adapter(model: nn.Module) -> MultiTaskAdapter:
    """The adapter handle of a model (unwrapping DDP/accelerate wrappers)."""
    inner = getattr(model, "module", model)
    adapter = inner.__dict__.get(HANDLE_ATTRIBUTE) or model.__dict__.get(HANDLE_ATTRIBUTE)
    if adapter is None:
        raise UserError("this model holds no more adapter; call inject_adapter first")
    return adapter
