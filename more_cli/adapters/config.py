"""Adapter configuration: one validated model shared by the recipe and the Python API.

Every field is documented here, once; the recipe schema embeds this model as its
``adapter:`` section and the docs are generated from these descriptions.

Some fields belong to one method only (``KIND_FIELDS``). Such a field is ``None`` for every
other kind, setting it there is an error naming the kinds it applies to, and it is left
out of every dump (``recipe.resolved.yaml``, the saved adapter description), so nothing
shows a setting that is not in force.
"""

from __future__ import annotations

from typing import Any, Literal, get_args

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictInt,
    model_serializer,
    model_validator,
)

AdapterKind = Literal["more", "lora", "per_task_lora", "multilora", "moelora", "mosld"]

# Target presets per model family, by module leaf name (see ``injection.py``).
TARGET_PRESETS: dict[str, list[str]] = {
    "t5": ["q", "k", "v", "o", "wi", "wi_0", "wi_1", "wo"],
    "llama": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
    # Not the pooler: the task heads mean-pool the last hidden states, so an adapter on the
    # pooler would sit outside the graph (and an unused parameter breaks DDP).
    "bert": ["query", "key", "value", r".*\.(intermediate|output)\.dense"],
    "gpt2": ["c_attn", "c_proj", "c_fc"],
}

# The fields that only some kinds read, with their default for those kinds.
KIND_FIELDS: dict[str, tuple[tuple[str, ...], Any]] = {
    "rank_scaling": (("more",), False),
    "task_embedding": (("more",), "per_layer"),
    "task_embedding_dim": (("more", "moelora"), 64),
    "router": (("more",), "ste"),
    "fixed_ranks": (("more",), None),
    "initial_rank": (("more",), "full"),
    "router_lr_scale": (("more",), 1.0),
    "cl_weight": (("more",), 0.0),
    "cl_temperature": (("more",), 0.05),
    "cl_detach_inputs": (("more",), False),
    "num_experts": (("multilora", "moelora", "mosld"), 4),
    "top_k": (("mosld",), 2),
    "shared_dropout": (("mosld",), 0.1),
    "balance_weight": (("mosld",), 0.01),
}


def applies_to(field: str, config: dict[str, Any]) -> bool:
    """Whether ``field`` has an effect for the kind (and embedding layout) of ``config``."""
    kinds, _ = KIND_FIELDS[field]
    kind = config.get("kind", "more")
    if kind not in kinds:
        return False
    if field == "task_embedding_dim" and kind == "more":
        return config.get("task_embedding", "per_layer") == "shared"
    return True


def without_inactive(config: dict[str, Any]) -> dict[str, Any]:
    """``config`` (an adapter config as a dict) without the kind-specific keys its kind does
    not read."""
    return {k: v for k, v in config.items() if k not in KIND_FIELDS or applies_to(k, config)}


def with_legacy_defaults(config: dict[str, Any]) -> dict[str, Any]:
    """A MoRE config written before MoRE's defaults moved, with the settings it was trained
    with spelled out.

    Adapter format 3 and older wrote ``initial_rank`` as null or not at all, meaning the
    random initial gate's choice, and rank scaling was on unless the config said otherwise.
    Benchmark configurations written before the contrastive loss went off by default
    (2026-12-03) leave ``cl_weight`` out, meaning 0.1; adapters and resolved recipes always
    name it. Read through today's defaults such a config would mean another adapter. Other
    kinds, and keys a config names, are returned as they are.
    """
    if config.get("kind", "more") != "more":
        return config
    legacy = {"initial_rank": "random", "rank_scaling": True, "cl_weight": 0.1}
    return config | {key: value for key, value in legacy.items() if config.get(key) is None}


def _inactive_message(field: str, kind: str) -> str:
    kinds = KIND_FIELDS[field][0]
    if field == "task_embedding_dim" and kind == "more":
        return (
            "task_embedding_dim has no effect with task_embedding: per_layer (those tables "
            "are d_in wide); set task_embedding: shared or remove it"
        )
    applies = " and ".join(kinds)
    if field == "task_embedding_dim":
        applies = "more with task_embedding: shared and moelora"
    return f"{field} has no effect for kind {kind}; it applies to {applies} only: remove it"


class AdapterConfig(BaseModel):
    """How the adapter is built. ``kind`` switches between MoRE and the baselines."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    kind: AdapterKind = Field(
        "more",
        description="more = MoRE (nested rank experts, hard task router); lora = one LoRA "
        "shared by all tasks; per_task_lora = one independent LoRA per task; multilora = "
        "MultiLoRA (num_experts parallel LoRAs with learnable scaling, shared by all tasks); "
        "moelora = MOELoRA (rank-r/E experts mixed by one task gate); mosld = MoSLD (experts "
        "share the down-projection A, token-level top-k router).",
    )
    r: int = Field(
        8, ge=1, le=1024, description="LoRA rank (MoRE: number of nested experts; multilora "
        "and mosld: the rank of each module / expert)."
    )  # fmt: skip
    alpha: float = Field(32.0, gt=0, description="LoRA alpha; updates are scaled by alpha / r.")
    dropout: float = Field(0.1, ge=0.0, lt=1.0, description="Dropout on the adapter input.")
    targets: list[str] | str = Field(
        "auto",
        description="Module leaf names or regexes to adapt (e.g. [q, v]), a preset name "
        "(t5, llama, bert, gpt2), or 'auto' to pick the preset from the model type.",
    )
    rank_scaling: bool | None = Field(
        None,
        description="more (default false): true = the paper's linear rank scaling, component "
        "i is scaled by (i+1)/r on A and B, so the components shared by all experts move "
        "least (and a task routed to rank 1-3 is nearly unadapted).",
    )
    task_embedding: Literal["per_layer", "shared"] | None = Field(
        None,
        description="more (default per_layer): per_layer = one task-embedding table per layer "
        "of width d_in (authors' code); shared = one small table of width task_embedding_dim "
        "feeding every gate.",
    )
    task_embedding_dim: int | None = Field(
        None,
        ge=1,
        le=65536,
        description="Width of the one task-embedding table (default 64): more with "
        "task_embedding shared, and moelora.",
    )
    router: Literal["ste", "frozen_random"] | None = Field(
        None,
        description="more (default ste): ste = trainable hard router with a straight-through "
        "estimator; frozen_random = each task's rank frozen at the argmax of the random "
        "initial gate (reproduces the authors' released behaviour).",
    )
    fixed_ranks: dict[str, int] | int | None = Field(
        None,
        description="more: force ranks instead of routing, one rank for every task or "
        "{task: rank}. For ablations and tests.",
    )
    initial_rank: StrictInt | Literal["full", "random"] | None = Field(
        None,
        description="more (default full; random with router frozen_random): the rank every "
        "task starts at, full = r (the whole LoRA, which the router then prunes) or a number "
        "from 1 to r; the gate biases are set so that this expert has at least 0.75 of each "
        "gate's probability, and the router moves from there. random = the random initial "
        "gate's choice, as in the paper.",
    )
    router_lr_scale: float | None = Field(
        None,
        gt=0.0,
        le=100.0,
        description="more (default 1): the router's learning rate (task embeddings, gates) "
        "as a multiple of train.lr; below 1 the gates commit to ranks more slowly.",
    )
    cl_weight: float | None = Field(
        None,
        ge=0.0,
        description="more (default 0, off; the paper: 0.1): weight lambda of the contrastive "
        "loss on task embeddings.",
    )
    cl_temperature: float | None = Field(
        None, gt=0.0, description="more (default 0.05): temperature tau of that loss."
    )
    cl_detach_inputs: bool | None = Field(
        None,
        description="more (default false): true stops the contrastive loss's gradient at the "
        "layer inputs, so it trains the task embeddings (and the projection) only and never "
        "pulls the model's hidden states towards them.",
    )
    num_experts: int | None = Field(
        None,
        ge=1,
        le=1024,
        description="multilora, moelora, mosld (default 4): parallel modules (multilora), "
        "experts of rank r/E each (moelora), or experts sharing one A (mosld).",
    )
    top_k: int | None = Field(
        None, ge=1, le=1024, description="mosld (default 2): experts each token is routed to."
    )
    shared_dropout: float | None = Field(
        None,
        ge=0.0,
        lt=1.0,
        description="mosld (default 0.1): dropout on the shared matrix A's entries during "
        "training (MoSLD's dropout against imbalanced updates), besides the input dropout.",
    )
    balance_weight: float | None = Field(
        None,
        ge=0.0,
        description="mosld (default 0.01): weight of the router's load-balancing loss.",
    )

    @model_validator(mode="before")
    @classmethod
    def _kind_fields(cls, data: Any) -> Any:
        """Refuse a field that the kind does not read; fill in the ones it does."""
        if not isinstance(data, dict) or data.get("kind", "more") not in get_args(AdapterKind):
            return data  # an unknown kind is reported by the field's own check
        data = dict(data)
        more = data.get("kind", "more") == "more"
        if more and data.get("router") == "frozen_random" and data.get("initial_rank") is None:
            data["initial_rank"] = "random"  # frozen at the random gate's choice, as released
        for field, (_, default) in KIND_FIELDS.items():
            if applies_to(field, data):
                if data.get(field) is None:
                    data[field] = default
            elif data.get(field) is not None:
                raise ValueError(_inactive_message(field, data.get("kind", "more")))
        return data

    @model_validator(mode="after")
    def _check_consistency(self) -> AdapterConfig:
        if self.kind == "moelora" and self.r % self.num_experts:
            raise ValueError(
                f"moelora needs r divisible by num_experts (r={self.r}, "
                f"num_experts={self.num_experts}); change one of them"
            )
        if self.kind == "mosld" and self.top_k > self.num_experts:
            raise ValueError(
                f"top_k={self.top_k} is more than num_experts={self.num_experts}; lower top_k"
            )
        ranks = (
            [self.fixed_ranks]
            if isinstance(self.fixed_ranks, int)
            else list((self.fixed_ranks or {}).values())
        )
        checked = [("fixed_ranks value", rank) for rank in ranks]
        if isinstance(self.initial_rank, int):
            checked.append(("initial_rank", self.initial_rank))
        for name, rank in checked:
            if not 1 <= rank <= self.r:
                raise ValueError(f"{name} {rank} must be between 1 and r={self.r}; change it")
        return self

    @model_serializer(mode="wrap")
    def _drop_inactive(self, handler: Any) -> dict[str, Any]:
        return without_inactive(handler(self))

    @property
    def scaling(self) -> float:
        return self.alpha / self.r

    @property
    def start_rank(self) -> int | None:
        """The rank the router starts every task at; None = the random initial gate's."""
        if self.initial_rank == "full":
            return self.r
        return None if self.initial_rank in (None, "random") else self.initial_rank

    @property
    def contrastive(self) -> bool:
        """True when layers summarise their input for MoRE's contrastive loss."""
        return self.kind == "more" and self.cl_weight > 0

    @property
    def task_routed(self) -> bool:
        """True when each task has its own routing row (MoRE's router, MOELoRA's gate)."""
        return self.kind in ("more", "moelora")

    @property
    def mergeable(self) -> bool:
        """False for mosld: its router reads every token, so no single ΔW per task exists."""
        return self.kind != "mosld"
