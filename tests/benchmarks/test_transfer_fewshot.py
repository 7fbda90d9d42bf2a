"""The few-shot transfer benchmark's recipes and baselines (no training)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks.quality import summarize
from benchmarks.transfer_fewshot import (
    fresh_lora_recipe,
    majority_score,
    markdown,
    source_recipe,
)
from more_cli.recipe import TaskConfig
from more_cli.tasks import get_task


def _glue(root: Path, labels: dict[str, list[int]]) -> Path:
    for task, train_labels in labels.items():
        (root / task).mkdir(parents=True)
        for split, rows in (("train", train_labels), ("validation", [0, 1, 1, 1, 0, 1])):
            lines = [
                {"sentence1": f"a {i} .", "sentence2": f"b {i} .", "sentence": f"c {i} .",
                 "question": f"q {i} ?", "premise": f"p {i} .", "hypothesis": f"h {i} .",
                 "label": label}
                for i, label in enumerate(rows)
            ]  # fmt: skip
            (root / task / f"{split}.jsonl").write_text(
                "".join(json.dumps(r) + "\n" for r in lines)
            )
    return root


def test_the_majority_class_comes_from_the_training_split(tmp_path) -> None:
    glue = _glue(tmp_path, {"rte": [0, 0, 0, 1]})
    task = TaskConfig(name="rte", source=str(glue / "rte"))
    references = [e.label for e in get_task(task).load_split("val_test")]
    assert references.count(0) < references.count(1)  # val_test's own majority is the other
    assert majority_score(task, 2023) == pytest.approx(100 * references.count(0) / len(references))


def test_the_fresh_lora_trains_on_the_transfers_rows_steps_and_evaluations(tmp_path) -> None:
    glue = _glue(tmp_path, {name: [0, 1] * 20 for name in ("mnli", "qnli", "sst2", "rte")})
    source = source_recipe(glue, tmp_path / "work")
    assert source.task_names == ["mnli", "qnli", "sst2"]
    assert all(Path(t.source).parent == glue for t in source.tasks)
    # A resolved transfer holds the source's tasks, then the new one with its k shots.
    rte = TaskConfig(name="rte", source=str(glue / "rte"), max_train_samples=8)
    transfer = source.model_copy(
        update={
            "tasks": [*source.tasks, rte],
            "train": source.train.model_copy(update={"seed": 7, "max_steps": 40}),
        }
    )
    fresh = fresh_lora_recipe(transfer, source, 1e-3, tmp_path / "work")
    assert fresh.adapter.kind == "lora" and fresh.task_names == ["rte"]
    for key in ("r", "alpha", "dropout", "targets"):
        assert getattr(fresh.adapter, key) == getattr(source.adapter, key)
    assert fresh.tasks == [rte] and fresh.data == transfer.data
    assert (fresh.train.seed, fresh.train.max_steps, fresh.train.lr) == (7, 40, 1e-3)
    assert Path(fresh.output_dir).name == "fresh_lora_k8-s7"
    rows = get_task(fresh.tasks[0], seed=fresh.train.seed).load_split("train")
    assert len(rows) == 8


def test_the_tables_show_what_has_run() -> None:
    runs = [
        {"config": "source", "seed": 2023,
         "tasks": {"mnli": {"headline": 60.0}, "sst2": {"headline": 80.0}}},
        {"config": "transfer_k16", "seed": 2023, "tasks": {"rte": {"headline": 52.0}}},
        {"config": "transfer_k16", "seed": 2024, "tasks": {"rte": {"headline": 54.0}}},
    ]  # fmt: skip
    runs = [run | {"average": 0.0, "parameters": None} for run in runs]
    payload = {
        "summary": summarize(runs),
        "majority": {"mnli": 35.0, "sst2": 50.9, "rte": 50.0},
        "shots": [16, 32],
    }
    lines = markdown(payload).splitlines()
    assert lines[2] == "| MoRE, seed 2023 | 60.0 | 80.0 |"
    assert lines[3] == "| majority class | 35.0 | 50.9 |"
    assert lines[-1] == "| 16 | 53.0 ± 1.4 | — | 50.0 | [2023, 2024] |"
