"""Model cards of the export folders: hub metadata, the task's ranks and measured scores,
loading code, the recipe; sealed by the folder's manifest."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
from huggingface_hub import ModelCard

from more_cli.exports.runs import export_run
from more_cli.integrity import MANIFEST
from more_cli.rundir import RunDir


@pytest.mark.parametrize("family", ["seq2seq", "encoder"])
def test_every_export_folder_has_a_model_card(
    family: str, make_run: Callable[..., Path], tmp_path: Path
) -> None:
    run = make_run(family)
    scores = {"accuracy": 0.625, "f1": 0.5, "headline": 0.625}
    eval_report = {"split": "val_test", "source": "adapter", "tasks": {"rte": scores}}
    RunDir(run).eval.write_text(json.dumps(eval_report))
    [result] = export_run(run, ["rte"], tmp_path / "out", verify=False, say=lambda _: None)
    for folder, library in ((result.merged_dir, "transformers"), (result.peft_dir, "peft")):
        card = ModelCard.load(folder / "README.md")
        assert card.data.library_name == library
        assert card.data.base_model
        assert {"more", "rte"} <= set(card.data.tags)
        assert "split `val_test`" in card.text and "| accuracy | 0.62 |" in card.text
        assert "Over " in card.text and "adapted layers: mean" in card.text
        assert RunDir(run).recipe.read_text() in card.text
        assert ("PeftModel.from_pretrained" in card.text) == (library == "peft")
        assert ("task_head.safetensors" in card.text) == (family == "encoder")
        assert "README.md" in (folder / MANIFEST).read_text()


def test_a_run_without_scores_says_so(make_run: Callable[..., Path], tmp_path: Path) -> None:
    run = make_run("decoder")
    [result] = export_run(run, ["sst2"], tmp_path / "out", verify=False, say=lambda _: None)
    card = ModelCard.load(result.merged_dir / "README.md")
    assert "Not measured: the run has no `eval.json` for sst2" in card.text
    assert "AutoModelForCausalLM" in card.text
