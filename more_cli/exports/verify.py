"""Verification of an export: reload the merged checkpoint and the PEFT adapter and compare
their outputs with the unmerged adapter's on the same inputs."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from more_cli.errors import UserError
from more_cli.exports.heads import HEAD_WEIGHTS, TaskHead
from more_cli.modeling import (
    HeadSpec,
    TaskHeadModel,
    adapter_host,
)
from more_cli.run_loading import (
    LoadedRun,
    load_base_as,
)

# Allowed max |export - unmerged| relative to max(1, max |unmerged output|). bf16 rounds every
# weight to 8 significant bits, so its bound is set by that rounding, not by the merge.
TOLERANCES = {torch.float32: 1e-4, torch.bfloat16: 2e-2}


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
