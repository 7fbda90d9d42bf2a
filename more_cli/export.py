"""Per-task exports of a multi-task adapter: merged Hugging Face checkpoints and PEFT adapters.

For task t every adapted layer serves ``W + ΔW_t`` (method.md §7), so each task can leave the
project in two standard forms, neither of which needs ``more_cli`` to load:

- ``merged/<task>/``: a plain checkpoint (safetensors, config, tokenizer, generation config)
  holding ``W + ΔW_t``. The update is merged in float32 and the result cast to ``dtype``.
  A run trained on a 4-bit base is merged into a full-precision copy, never into 4-bit
  weights: the original weights, or with ``nf4_roundtrip`` the NF4-rounded weights the
  adapter was trained against.
- ``peft/<task>/``: a standard LoRA adapter for ``peft.PeftModel.from_pretrained``. Each
  module keeps its own rank (``rank_pattern``: MoRE's chosen rank k_t, r for the other
  kinds); alpha equals the rank, so PEFT's scaling is 1 and the factors carry the scaling.

Encoder runs add ``task_head.safetensors`` + ``task_head.json`` to both: the task head reads
the mean of ``last_hidden_state`` over the attention mask (as :class:`TaskHeadModel` does),
which no stock ``*ForSequenceClassification`` class computes (they take the first token,
most through a tanh pooler), so the head ships beside the backbone (see
``docs/merge-and-inspect.md``).

Every export folder is written as a temporary sibling and renamed into place, so a failed
export leaves nothing under the final name; an existing export is only replaced with
``force``. :func:`verify_export` reloads both exports and compares them with the unmerged
adapter on the same inputs.
"""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn
from transformers.pytorch_utils import Conv1D

from more_cli.adapters import MultiTaskAdapter, base_layers
from more_cli.adapters.layer import AdapterLayer
from more_cli.errors import UserError
from more_cli.modeling import (
    Family,
    HeadSpec,
    TaskHeadModel,
    adapter_host,
    mean_pool,
    resolve_model_path,
)
from more_cli.recipe_io import load_recipe
from more_cli.run_loading import (
    BaseWeights,
    LoadedRun,
    adapter_source,
    load_base_as,
    load_run,
)
from more_cli.rundir import RunDir, atomic_directory

PEFT_TASK_TYPES: dict[str, str] = {
    "seq2seq": "SEQ_2_SEQ_LM",
    "decoder": "CAUSAL_LM",
    "encoder": "FEATURE_EXTRACTION",
}
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}
# Allowed max |export - unmerged| relative to max(1, max |unmerged output|). bf16 rounds every
# weight to 8 significant bits, so its bound is set by that rounding, not by the merge.
TOLERANCES = {torch.float32: 1e-4, torch.bfloat16: 2e-2}
HEAD_WEIGHTS = "task_head.safetensors"
HEAD_DESCRIPTION = "task_head.json"
EXPORT_DESCRIPTION = "more_export.json"
_SHARD_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(B|KB|MB|GB|TB|KIB|MIB|GIB|TIB)\s*$", re.I)


# ---------------------------------------------------------------------------------------------
# The task's update as low-rank factors


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


# ---------------------------------------------------------------------------------------------
# Encoder task heads


@dataclass(frozen=True)
class TaskHead:
    """An encoder run's head for one task: a linear layer on the masked mean of the hidden
    states, exactly as :class:`~more_cli.modeling.TaskHeadModel` computes it."""

    task: str
    weight: torch.Tensor
    bias: torch.Tensor
    labels: list[str] | None
    regression: bool

    def __call__(
        self, last_hidden_state: torch.Tensor, attention_mask: torch.Tensor
    ) -> torch.Tensor:
        pooled = mean_pool(last_hidden_state, attention_mask)
        return nn.functional.linear(pooled.to(self.weight.dtype), self.weight, self.bias)

    def save(self, directory: Path) -> None:
        tensors = {"weight": self.weight.contiguous(), "bias": self.bias.contiguous()}
        save_file(tensors, str(directory / HEAD_WEIGHTS), metadata={"format": "pt"})
        width = self.weight.shape[0]
        labels = self.labels or [f"LABEL_{i}" for i in range(width)]
        description = {
            "task": self.task,
            "pooling": "mean of last_hidden_state over attention_mask (padding excluded)",
            "formula": "logits = pooled @ weight.T + bias",
            "problem_type": "regression" if self.regression else "single_label_classification",
            "num_labels": width,
            "id2label": {} if self.regression else dict(enumerate(labels)),
        }
        (directory / HEAD_DESCRIPTION).write_text(json.dumps(description, indent=2) + "\n")

    @classmethod
    def load(cls, directory: Path) -> TaskHead:
        tensors = load_file(str(directory / HEAD_WEIGHTS))
        description = json.loads((directory / HEAD_DESCRIPTION).read_text())
        labels = list(description["id2label"].values()) or None
        regression = description["problem_type"] == "regression"
        return cls(description["task"], tensors["weight"], tensors["bias"], labels, regression)


def task_head(run: LoadedRun, task: str) -> TaskHead | None:
    """The run's head for ``task`` (float32, on the CPU), or None when the run has no heads."""
    if not isinstance(run.model, TaskHeadModel):
        return None
    index = run.adapter.task_index(task)
    head, spec = run.model.heads[index], run.model.specs[index]
    return TaskHead(
        task=task,
        weight=head.weight.detach().float().cpu(),
        bias=head.bias.detach().float().cpu(),
        labels=run.label_names.get(task),
        regression=spec.num_labels is None,
    )


# ---------------------------------------------------------------------------------------------
# Exports


def export_peft(
    adapter: MultiTaskAdapter,
    task: str,
    out_dir: str | Path,
    base_model_name_or_path: str,
    *,
    family: Family,
    dtype: torch.dtype = torch.float32,
    head: TaskHead | None = None,
    force: bool = False,
) -> Path:
    """Write ``task``'s update as a standard PEFT LoRA adapter into ``out_dir``.

    Module paths are those of the model the adapter was injected into (the backbone for
    encoders), so ``PeftModel.from_pretrained(<that base model>, out_dir)`` loads it.

    Raises:
        UserError: ``out_dir`` exists and ``force`` is False.
    """
    from peft import LoraConfig

    out_dir = Path(out_dir)
    _refuse_existing(out_dir, force)
    factors = lora_factors(adapter, task)
    ranks = {name: a.shape[0] for name, (a, _) in factors.items()}
    common = max(sorted(set(ranks.values())), key=list(ranks.values()).count)
    different = {name: rank for name, rank in ranks.items() if rank != common}
    config = LoraConfig(
        r=common,
        lora_alpha=common,  # alpha = rank everywhere: PEFT's scaling is 1
        rank_pattern=different,
        alpha_pattern=dict(different),
        target_modules=list(factors),
        lora_dropout=0.0,
        bias="none",
        fan_in_fan_out=any(isinstance(lay.base_layer, Conv1D) for lay in adapter.layers.values()),
        task_type=PEFT_TASK_TYPES[family],
        base_model_name_or_path=base_model_name_or_path,
    )
    tensors = {}
    for name, (a, b) in factors.items():
        tensors[f"base_model.model.{name}.lora_A.weight"] = a.to(dtype).contiguous()
        tensors[f"base_model.model.{name}.lora_B.weight"] = b.to(dtype).contiguous()
    with atomic_directory(out_dir) as temporary:
        config.save_pretrained(str(temporary))
        save_file(tensors, str(temporary / "adapter_model.safetensors"), metadata={"format": "pt"})
        if head is not None:
            head.save(temporary)
    return out_dir


def export_merged(
    run: LoadedRun,
    task: str,
    out_dir: str | Path,
    *,
    dtype: torch.dtype = torch.float32,
    max_shard_size: str = "2GB",
    force: bool = False,
) -> Path:
    """Merge ``task``'s update into ``run``'s base and save a plain Hugging Face checkpoint.

    The merge consumes ``run``: its adapter is removed and its layers replaced; load the run
    again for another task. The update is added in float32, then the model is cast to
    ``dtype``. The checkpoint holds the tokenizer, the generation config where the model
    generates, a ``more_export.json`` saying where it came from and, for encoder runs, the
    task head (see the module docstring).

    Raises:
        UserError: ``out_dir`` exists and ``force`` is False, or ``max_shard_size`` is malformed.
        ValueError: the run was loaded with 4-bit base weights (load it with
            ``base_weights="full_precision"`` or ``"nf4_roundtrip"``).
    """
    out_dir = Path(out_dir)
    _refuse_existing(out_dir, force)
    check_shard_size(max_shard_size)
    if any(base_layers.is_4bit(module) for module in run.host.modules()):
        raise ValueError(
            "the run's base holds 4-bit layers; load it with base_weights='full_precision' or "
            "'nf4_roundtrip' so the update is merged into full-precision weights"
        )
    head = task_head(run, task)
    provenance = _provenance(run, task, dtype)
    with atomic_directory(out_dir) as temporary:
        merged = run.adapter.merge_and_unload(task, torch.float32)
        merged.to(dtype)
        merged.save_pretrained(str(temporary), max_shard_size=max_shard_size)
        run.tokenizer.save_pretrained(str(temporary))
        if head is not None:
            head.save(temporary)
        (temporary / EXPORT_DESCRIPTION).write_text(json.dumps(provenance, indent=2) + "\n")
    return out_dir


def _provenance(run: LoadedRun, task: str, dtype: torch.dtype) -> dict:
    ranks = run.adapter.chosen_ranks()[task]
    return {
        "run": str(run.root),
        "adapter": str(run.source),
        "task": task,
        "kind": run.adapter.config.kind,
        "base_model": run.recipe.model.name,
        "base_weights": describe_base_weights(run),
        "dtype": str(dtype).removeprefix("torch."),
        "ranks": ranks,
    }


def describe_base_weights(run: LoadedRun) -> str:
    """One sentence on which base weights an export of ``run`` holds."""
    if not run.was_4bit:
        return f"the base's own weights ({run.recipe.model.dtype})"
    if run.base_weights == "nf4_roundtrip":
        return (
            "the 4-bit NF4 base dequantized to float32: the weights the adapter was trained against"
        )
    return (
        f"the original full-precision weights of {run.recipe.model.name}, not their NF4 "
        "rounding the adapter was trained against (--nf4-roundtrip merges into those)"
    )


def _refuse_existing(out_dir: Path, force: bool) -> None:
    if out_dir.exists() and not force:
        raise UserError(
            f"{out_dir} already exists",
            details=["pass --force (force=True) to replace it, or choose another --out"],
        )


def check_shard_size(text: str) -> None:
    """Accept sizes such as ``2GB``, ``500MB`` or ``1.5GiB`` (what ``save_pretrained`` parses)."""
    if not _SHARD_SIZE.match(text):
        raise UserError(
            f"--max-shard-size {text!r} is not a size",
            details=["write a number and a unit, e.g. 2GB, 500MB or 10GiB"],
        )


# ---------------------------------------------------------------------------------------------
# Verification


def verify_export(
    run: LoadedRun,
    task: str,
    merged_dir: str | Path | None,
    peft_dir: str | Path | None,
    *,
    dtype: torch.dtype = torch.float32,
    tolerance: float | None = None,
) -> dict[str, float]:
    """Feed the same inputs to the unmerged adapter and to each export reloaded from disk.

    ``run`` must hold the unmerged adapter on the base weights the exports were made from.
    The merged checkpoint is reloaded in float32 (a bf16 export is upcast), the PEFT adapter
    is loaded with ``peft`` onto a fresh copy of that base. For encoder runs the task head
    saved with the export is compared too.

    Returns:
        ``{"merged": max |Δ|, "peft": max |Δ|}`` for the exports given.

    Raises:
        UserError: a difference exceeds ``tolerance`` times ``max(1, max |output|)``; the
            default tolerance is 1e-4 for float32 exports and 2e-2 for bfloat16.
    """
    tolerance = TOLERANCES[dtype] if tolerance is None else tolerance
    inputs = probe_inputs(run, task)
    reference = _adapter_outputs(run, task, inputs)
    exports = {}
    if merged_dir is not None:
        exports["merged"] = _merged_outputs(run, Path(merged_dir), inputs)
    if peft_dir is not None:
        exports["peft"] = _peft_outputs(run, Path(peft_dir), inputs)
    differences = {name: _max_difference(reference, out) for name, out in exports.items()}
    scale = max(1.0, max(t.abs().max().item() for t in reference.values()))
    failed = {name: value for name, value in differences.items() if value > tolerance * scale}
    if failed:
        raise UserError(
            f"export of task {task!r} does not reproduce the adapter: max |difference| "
            + ", ".join(f"{name} {value:.3g}" for name, value in failed.items())
            + f" > {tolerance:g} x {scale:.3g}",
            details=["the exports were removed; this is a bug, please report it with the recipe"],
        )
    return differences


def probe_inputs(run: LoadedRun, task: str) -> dict[str, torch.Tensor]:
    """A small batch of prompts in the task's style (plus decoder inputs for seq2seq)."""
    texts = [
        f"{task} sentence: the movie was good .",
        f"{task} sentence1: it is not bad . sentence2: the story was good and the plot was not .",
    ]
    inputs = dict(run.tokenizer(texts, return_tensors="pt", padding=True))
    if run.family == "seq2seq":
        config = run.host.config
        start = config.decoder_start_token_id
        start = config.pad_token_id if start is None else start
        decoder = inputs["input_ids"][:, :3]
        inputs["decoder_input_ids"] = torch.cat(
            [torch.full((decoder.shape[0], 1), start, dtype=decoder.dtype), decoder], dim=1
        )
    return inputs


def _device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def _forward(model: nn.Module, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Comparable outputs of a Hugging Face model: logits, or the encoder's hidden states."""
    device = _device(model)
    with torch.no_grad():
        output = model(**{k: v.to(device) for k, v in inputs.items()})
    if getattr(output, "logits", None) is not None:
        return {"logits": output.logits.float().cpu()}
    return {"hidden": output.last_hidden_state.float().cpu()}


def _with_head(
    outputs: dict[str, torch.Tensor], head: TaskHead | None, inputs: dict[str, torch.Tensor]
) -> dict[str, torch.Tensor]:
    if head is not None:
        outputs["head"] = head(outputs["hidden"], inputs["attention_mask"]).float()
    return outputs


def _adapter_outputs(
    run: LoadedRun, task: str, inputs: dict[str, torch.Tensor]
) -> dict[str, torch.Tensor]:
    with run.adapter.task_context(task):
        outputs = _forward(run.host, inputs)
    if isinstance(run.model, TaskHeadModel):
        index = run.adapter.task_index(task)
        device = _device(run.model)
        ids = torch.full((inputs["input_ids"].shape[0],), index, device=device)
        with torch.no_grad():
            logits = run.model(
                input_ids=inputs["input_ids"].to(device),
                attention_mask=inputs["attention_mask"].to(device),
                task_ids=ids,
            ).logits
        outputs["head"] = logits[:, : run.model.specs[index].width].float().cpu()
    return outputs


def _merged_outputs(
    run: LoadedRun, directory: Path, inputs: dict[str, torch.Tensor]
) -> dict[str, torch.Tensor]:
    from transformers import AutoModel, AutoModelForCausalLM, AutoModelForSeq2SeqLM

    auto = {"seq2seq": AutoModelForSeq2SeqLM, "decoder": AutoModelForCausalLM}.get(
        run.family, AutoModel
    )
    model = auto.from_pretrained(str(directory), dtype=torch.float32).eval()
    head = TaskHead.load(directory) if (directory / HEAD_WEIGHTS).is_file() else None
    return _with_head(_forward(model, inputs), head, inputs)


def _peft_outputs(
    run: LoadedRun, directory: Path, inputs: dict[str, torch.Tensor]
) -> dict[str, torch.Tensor]:
    from peft import PeftModel

    base = load_base_as(run.recipe, run.base_weights, heads=_specs(run)).model
    model = PeftModel.from_pretrained(adapter_host(base), str(directory)).eval()
    head = TaskHead.load(directory) if (directory / HEAD_WEIGHTS).is_file() else None
    return _with_head(_forward(model, inputs), head, inputs)


def _specs(run: LoadedRun) -> list[HeadSpec] | None:
    return list(run.model.specs) if isinstance(run.model, TaskHeadModel) else None


def _max_difference(reference: dict[str, torch.Tensor], other: dict[str, torch.Tensor]) -> float:
    return max((reference[key] - other[key]).abs().max().item() for key in reference)


# ---------------------------------------------------------------------------------------------
# A whole run


@dataclass(frozen=True)
class ExportResult:
    """What :func:`export_run` wrote for one task."""

    task: str
    merged_dir: Path
    peft_dir: Path
    mean_rank: float
    differences: dict[str, float] | None


def export_run(
    run_dir: str | Path,
    tasks: Sequence[str] | None,
    out_dir: str | Path | None = None,
    *,
    dtype: torch.dtype = torch.float32,
    max_shard_size: str = "2GB",
    verify: bool = True,
    force: bool = False,
    checkpoint: str | None = None,
    nf4_roundtrip: bool = False,
    say: Callable[[str], None] = print,
) -> list[ExportResult]:
    """Export ``tasks`` (None = every task) of a run to ``out_dir/{merged,peft}/<task>/``.

    ``out_dir`` defaults to ``RUN_DIR/exports``. The run is loaded once for reference and
    PEFT exports, and once more per task for the merge (a merge consumes the model).

    Raises:
        UserError: unknown task, existing exports without ``force``, ``nf4_roundtrip`` on a
            run without a 4-bit base, or a verification failure.
    """
    out_dir = Path(out_dir) if out_dir is not None else Path(run_dir) / "exports"
    check_shard_size(max_shard_size)
    base_weights, names = _plan(run_dir, checkpoint, tasks, nf4_roundtrip)
    for task in names:
        for kind in ("merged", "peft"):
            _refuse_existing(out_dir / kind / task, force)
    reference = load_run(run_dir, checkpoint, base_weights=base_weights)
    say(f"base weights: {describe_base_weights(reference)}")
    base_name = resolve_model_path(reference.recipe.model.name)
    results = []
    for task in names:
        peft_dir = export_peft(
            reference.adapter, task, out_dir / "peft" / task, base_name,
            family=reference.family, dtype=dtype, head=task_head(reference, task), force=force,
        )  # fmt: skip
        merged_dir = export_merged(
            load_run(run_dir, checkpoint, base_weights=base_weights),
            task, out_dir / "merged" / task,
            dtype=dtype, max_shard_size=max_shard_size, force=force,
        )  # fmt: skip
        differences = None
        if verify:
            try:
                differences = verify_export(reference, task, merged_dir, peft_dir, dtype=dtype)
            except UserError:
                # Never leave an export behind that is known not to reproduce the adapter.
                shutil.rmtree(merged_dir)
                shutil.rmtree(peft_dir)
                raise
        ranks = reference.adapter.chosen_ranks()[task].values()
        results.append(
            ExportResult(task, merged_dir, peft_dir, sum(ranks) / len(ranks), differences)
        )
    return results


def _plan(
    run_dir: str | Path, checkpoint: str | None, tasks: Sequence[str] | None, nf4_roundtrip: bool
) -> tuple[BaseWeights, list[str]]:
    """Check the request against the run's recipe before any model is loaded."""
    adapter_source(run_dir, checkpoint)
    recipe = load_recipe(RunDir(Path(run_dir)).recipe, resolved=True)
    if nf4_roundtrip and not recipe.model.load_in_4bit:
        raise UserError(
            "--nf4-roundtrip only applies to runs trained on a 4-bit base "
            "(model.load_in_4bit: true); this run's base is full precision",
            details=["drop --nf4-roundtrip"],
        )
    names = list(tasks) if tasks else recipe.task_names
    unknown = [task for task in names if task not in recipe.task_names]
    if unknown:
        raise UserError(
            f"unknown task {unknown[0]!r}; this run's tasks are {', '.join(recipe.task_names)}"
        )
    return ("nf4_roundtrip" if nf4_roundtrip else "full_precision"), names
