"""Scoring a model on its tasks: every task's metrics on one split and their average."""

from __future__ import annotations

import pytest

from more_cli.evaluation.scoring import metrics_table, score_tasks
from more_cli.recipe import Recipe
from tests.evaluation.test_predict import _task
from tests.helpers.tiny import accept_task_ids, tiny_t5, tiny_tokenizer


def test_score_tasks_reports_metrics_and_average() -> None:
    model, tokenizer = accept_task_ids(tiny_t5()), tiny_tokenizer()
    model.train()
    tasks = [_task("demo_sentiment", 4), _task("demo_similarity", 4)]
    recipe = Recipe.model_validate(
        {"model": {"name": "tiny"}, "tasks": [{"name": t.name} for t in tasks],
         "train": {"eval_batch_size": 64}}
    )  # fmt: skip
    report = score_tasks(model, tokenizer, "seq2seq", tasks, recipe, "validation", "cpu")
    assert report["split"] == "validation"
    assert set(report["tasks"]) == {"demo_sentiment", "demo_similarity"}
    assert set(report["tasks"]["demo_similarity"]) == {"pearson", "spearman", "headline"}
    headlines = [report["tasks"][t.name]["headline"] for t in tasks]
    assert report["average"] == pytest.approx(sum(headlines) / 2)
    assert model.training  # mode restored
    only = score_tasks(
        model, tokenizer, "seq2seq", tasks, recipe, "validation", "cpu", only=["demo_similarity"]
    )
    assert list(only["tasks"]) == ["demo_similarity"]
    assert metrics_table(report | {"source": "adapter"}).row_count == 3
