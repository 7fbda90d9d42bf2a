"""Model cards: the ``README.md`` the Hugging Face hub shows for an export folder.

The metadata block is built with huggingface_hub's :class:`~huggingface_hub.ModelCardData`
(base model, library, tags); the body says which task and method the folder holds, the
ranks the router chose for the task, the run's scores on its test split as measured, how to
load the folder without this project, and the recipe the run was trained with.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Literal

from huggingface_hub import ModelCard, ModelCardData

from more_cli.run_loading import LoadedRun
from more_cli.rundir import RunDir

ExportKind = Literal["merged", "peft"]
CARD_FILE = "README.md"

_METHODS = {
    "more": "MoRE (Mixture of Low-Rank Experts: nested rank experts, a hard task router)",
    "lora": "LoRA shared by all tasks",
    "per_task_lora": "one LoRA per task",
    "multilora": "MultiLoRA (parallel LoRAs with learnable scaling)",
    "moelora": "MOELoRA (rank experts mixed by a task gate)",
}
_AUTO_CLASSES = {
    "seq2seq": "AutoModelForSeq2SeqLM",
    "decoder": "AutoModelForCausalLM",
    "encoder": "AutoModel",
}


def model_card(run: LoadedRun, task: str, export: ExportKind, base_model: str) -> ModelCard:
    """The card of ``task``'s ``export`` folder (call it before a merge consumes ``run``)."""
    kind = run.recipe.adapter.kind
    data = ModelCardData(
        base_model=base_model,
        library_name="transformers" if export == "merged" else "peft",
        tags=["more", "multi-task", "lora", kind, task],
    )
    sections = [
        f"# {task}: {'merged checkpoint' if export == 'merged' else 'PEFT LoRA adapter'} "
        f"of a multi-task {kind} run",
        _summary(run, task, export, base_model),
        "## Ranks chosen for this task\n\n" + _ranks(run, task),
        "## Evaluation\n\n" + _scores(run, task),
        "## How to load it\n\n" + _loading(run, export, base_model),
        "## Recipe\n\nThe run's resolved recipe (`recipe.resolved.yaml`, every default filled "
        "in):\n\n```yaml\n" + RunDir(run.root).recipe.read_text(encoding="utf-8") + "```",
    ]
    return ModelCard(f"---\n{data.to_yaml()}\n---\n\n" + "\n\n".join(sections) + "\n")


def _summary(run: LoadedRun, task: str, export: ExportKind, base_model: str) -> str:
    adapter = run.recipe.adapter
    what = (
        f"`{base_model}` with task **{task}**'s update merged into its weights: it serves at "
        "exactly the base model's cost and needs nothing but `transformers`."
        if export == "merged"
        else f"Task **{task}**'s update as a standard PEFT LoRA adapter for `{base_model}`."
    )
    tasks = ", ".join(run.adapter.tasks)
    return (
        f"{what}\n\nExported by `more merge` (the more-cli toolkit) from a "
        f"run that trained one adapter for {len(run.adapter.tasks)} task(s) ({tasks}): "
        f"{_METHODS.get(adapter.kind, adapter.kind)}, r = {adapter.r}, alpha = "
        f"{adapter.alpha:g}, on every `{adapter.targets}` target layer. Source: "
        f"`{Path(run.source).resolve()}`."
    )


def _ranks(run: LoadedRun, task: str) -> str:
    ranks = list(run.adapter.chosen_ranks()[task].values())
    counts = ", ".join(f"rank {r}: {n}" for r, n in sorted(Counter(ranks).items()))
    return (
        f"Over {len(ranks)} adapted layers: mean {sum(ranks) / len(ranks):.2f}, smallest "
        f"{min(ranks)}, largest {max(ranks)} ({counts}). The rank of every layer is in "
        "`more_export.json` (merged) or `adapter_config.json`'s `rank_pattern` (PEFT)."
    )


def _scores(run: LoadedRun, task: str) -> str:
    path = RunDir(run.root).eval
    report = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    metrics = report.get("tasks", {}).get(task)
    if not metrics:
        return f"Not measured: the run has no `eval.json` for {task} (run `more eval RUN`)."
    rows = "\n".join(
        f"| {name} | {value:.2f} |"
        for name, value in metrics.items()
        if name != "headline" and isinstance(value, int | float) and not isinstance(value, bool)
    )
    return (
        f"Measured by the run on split `{report.get('split')}` (adapter "
        f"`{report.get('source')}`; `val_test` is the half of the validation split never used "
        f"for model selection), before export:\n\n| metric | value |\n|---|---:|\n{rows}"
    )


def _loading(run: LoadedRun, export: ExportKind, base_model: str) -> str:
    auto = _AUTO_CLASSES[run.family]
    if export == "merged":
        code = (
            f"from transformers import {auto}, AutoTokenizer\n\n"
            f'model = {auto}.from_pretrained("PATH")\n'
            'tokenizer = AutoTokenizer.from_pretrained("PATH")'
        )
    else:
        code = (
            f"from peft import PeftModel\nfrom transformers import {auto}\n\n"
            f'base = {auto}.from_pretrained("{base_model}")\n'
            'model = PeftModel.from_pretrained(base, "PATH")'
        )
    text = f"```python\n# PATH: this folder, or the hub repository it was uploaded to\n{code}\n```"
    if run.family == "encoder":
        text += (
            "\n\nThe task head is `task_head.safetensors` + `task_head.json`: a linear layer on "
            "the mean of `last_hidden_state` over the attention mask (see more's "
            'docs/merge-and-inspect.md, "Encoder runs: the task head").'
        )
    return text
