"""Adapter configuration: one validated model shared by the recipe and the Python API.

Every field is documented here, once; the recipe schema embeds this model as its
``adapter:`` section and the docs are generated from these descriptions.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

AdapterKind = Literal["more", "lora", "multilora", "moelora", "mosld"]

# Target presets per model family, by module leaf name (see ``injection.py``).
TARGET_PRESETS: dict[str, list[str]] = {
    "t5": ["q", "k", "v", "o", "wi", "wi_0", "wi_1", "wo"],
    "llama": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
    # Not the pooler: the task heads mean-pool the last hidden states, so an adapter on the
    # pooler would sit outside the graph (and an unused parameter breaks DDP).
    "bert": ["query", "key", "value", r".*\.(intermediate|output)\.dense"],
    "gpt2": ["c_attn", "c_proj", "c_fc"],
}


class AdapterConfig(BaseModel):
    """How the adapter is built. ``kind`` switches between MoRE and the baselines."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    kind: AdapterKind = Field(
        "more",
        description="more = MoRE (nested rank experts + router); lora = one shared LoRA; "
        "multilora = one LoRA per task; moelora = dense mixture of rank-r/E experts; "
        "mosld = experts sharing the up-projection B.",
    )
    r: int = Field(8, ge=1, le=1024, description="LoRA rank (MoRE: number of nested experts).")
    alpha: float = Field(32.0, gt=0, description="LoRA alpha; updates are scaled by alpha / r.")
    dropout: float = Field(0.1, ge=0.0, lt=1.0, description="Dropout on the adapter input.")
    targets: list[str] | str = Field(
        "auto",
        description="Module leaf names or regexes to adapt (e.g. [q, v]), a preset name "
        "(t5, llama, bert, gpt2), or 'auto' to pick the preset from the model type.",
    )
    rank_scaling: bool = Field(
        True,
        description="MoRE linear rank scaling: component i is scaled by (i+1)/r on A and B, "
        "so the components shared by all experts move least.",
    )
    task_embedding: Literal["per_layer", "shared"] = Field(
        "per_layer",
        description="per_layer: one task-embedding table per layer of width d_in (authors' "
        "code); shared: one small table of width task_embedding_dim feeding every gate.",
    )
    task_embedding_dim: int = Field(
        64, ge=1, le=65536, description="Width of the shared task-embedding table."
    )
    router: Literal["ste", "frozen_random"] = Field(
        "ste",
        description="ste = trainable hard router with a straight-through estimator; "
        "frozen_random = each task's rank frozen at the argmax of the random initial gate "
        "(reproduces the authors' released behaviour).",
    )
    fixed_ranks: dict[str, int] | int | None = Field(
        None,
        description="Force ranks instead of routing: one rank for every task, or "
        "{task: rank}. For ablations and tests.",
    )
    cl_weight: float = Field(
        0.1, ge=0.0, description="Weight lambda of the contrastive loss on task embeddings."
    )
    cl_temperature: float = Field(0.05, gt=0.0, description="Temperature tau of that loss.")
    num_experts: int = Field(
        4, ge=1, le=1024, description="moelora / mosld: number of experts (moelora: rank r/E each)."
    )

    @model_validator(mode="after")
    def _check_consistency(self) -> AdapterConfig:
        if self.kind == "moelora" and self.r % self.num_experts:
            raise ValueError(
                f"moelora needs r divisible by num_experts (r={self.r}, "
                f"num_experts={self.num_experts}); change one of them"
            )
        ranks = (
            [self.fixed_ranks]
            if isinstance(self.fixed_ranks, int)
            else list((self.fixed_ranks or {}).values())
        )
        for rank in ranks:
            if not 1 <= rank <= self.r:
                raise ValueError(f"fixed_ranks value {rank} must be between 1 and r={self.r}")
        return self

    @property
    def scaling(self) -> float:
        return self.alpha / self.r

    @property
    def uses_router(self) -> bool:
        """True when task embeddings and gates exist (all kinds but lora/multilora)."""
        return self.kind in ("more", "moelora", "mosld")
