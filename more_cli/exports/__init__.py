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

Encoder runs add ``task_head.safetensors`` + ``task_head.json`` to both (:mod:`.heads`).
Every export folder is written as a temporary sibling and renamed into place
(:mod:`.writers`), :mod:`.verify` reloads both exports and compares them with the unmerged
adapter, and :mod:`.runs` exports a whole run (``more merge``). Names are imported on first
use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from more_cli.lazy import lazy_getattr

if TYPE_CHECKING:
    from more_cli.exports.factors import lora_factors
    from more_cli.exports.heads import TaskHead, task_head
    from more_cli.exports.runs import ExportResult, export_run
    from more_cli.exports.verify import TOLERANCES, verify_export
    from more_cli.exports.writers import export_merged, export_peft

_HOMES = {
    "lora_factors": "factors",
    "TaskHead": "heads",
    "task_head": "heads",
    "ExportResult": "runs",
    "export_run": "runs",
    "TOLERANCES": "verify",
    "verify_export": "verify",
    "export_merged": "writers",
    "export_peft": "writers",
}

__all__ = [
    "TOLERANCES",
    "ExportResult",
    "TaskHead",
    "export_merged",
    "export_peft",
    "export_run",
    "lora_factors",
    "task_head",
    "verify_export",
]


__getattr__ = lazy_getattr(__name__, _HOMES)
