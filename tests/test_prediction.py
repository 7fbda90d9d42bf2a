"""Prediction on raw rows: formatting, mixed-task batches, and agreement with evaluation and
with the merged per-task checkpoint.

Runs are built directly (resolved recipe + a saved adapter with random weights, so that
every task's update is visible) on the tiny saved models of ``tests/conftest.py``.
"""

from __future__ import annotations

import io
import json
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from transformers import AutoModel, AutoModelForCausalLM, AutoModelForSeq2SeqLM

from more_cli.adapters import inject_adapter, save_adapter
from more_cli.errors import UserError
from more_cli.evaluation.predict import Prediction, predict
from more_cli.exports.heads import TaskHead
from more_cli.exports.writers import export_merged
from more_cli.modeling import HeadSpec, adapter_host, load_base, save_heads
from more_cli.prediction import (
    PredictionInput,
    RunTasks,
    predict_with_run,
    prediction_record,
    prepare_inputs,
    read_json_lines,
)
from more_cli.recipe import Recipe
from more_cli.recipe_io import dump_resolved
from more_cli.run_loading import LoadedRun, load_run
from more_cli.rundir import RunDir
from more_cli.tasks import Task, get_task
from tests.helpers.tiny import accept_task_ids

TASKS = ("sst2", "rte")
BATCH = 5  # not a multiple of any candidate count, so batches cut across rows and tasks


@pytest.fixture
def make_run(
    tmp_path: Path, tiny_model_dir: Callable[[str], Path], glue_data: Path
) -> Callable[[str], Path]:
    """``make_run(family)`` → a run directory with a random MoRE adapter (and heads)."""

    def make(family: str) -> Path:
        recipe = Recipe.model_validate(
            {
                "model": {"name": str(tiny_model_dir(family))},
                "adapter": {"r": 4, "alpha": 8, "dropout": 0.0},
                "tasks": [{"name": name, "source": str(glue_data / name)} for name in TASKS],
                "data": {"max_source_length": 32, "max_target_length": 4},
                "output_dir": str(tmp_path / "run"),
            }
        )
        run = RunDir(tmp_path / "run")
        dump_resolved(recipe, run.recipe)
        heads = [HeadSpec.for_task(get_task(cfg)) for cfg in recipe.tasks]
        model = load_base(recipe.model, heads).model
        adapter = inject_adapter(adapter_host(model), recipe.adapter, recipe.task_names)
        # Random weights everywhere (B starts at zero, which would hide every update).
        heads = [p for name, p in model.named_parameters() if name.startswith("heads.")]
        generator = torch.Generator().manual_seed(0)
        with torch.no_grad():
            for tensor in [*adapter.state_dict().values(), *heads]:
                if tensor.is_floating_point():
                    tensor.copy_(torch.randn(tensor.shape, generator=generator) * 0.2)
        save_adapter(adapter, run.adapter)
        save_heads(model, run.adapter)
        return run.root

    return make


def rows_of(glue_data: Path, task: str, split: str = "validation") -> list[dict]:
    lines = (glue_data / task / f"{split}.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines]


def numbered(rows: list[dict]) -> list[tuple[int, dict]]:
    return list(enumerate(rows, start=1))


def run_predictions(run: LoadedRun, rows: list[dict], **how: str | None):
    tasks = RunTasks(run.recipe)
    inputs = prepare_inputs(numbered(rows), tasks, "test", **how)
    done: list[int] = []
    predictions = predict_with_run(run, tasks, inputs, BATCH, "cpu", progress=done.append)
    assert done == sorted(done) and done[-1] == len(inputs)  # the progress bar's feed
    return inputs, predictions


@pytest.mark.parametrize("family", ["seq2seq", "decoder", "encoder"])
def test_one_task_equals_evaluation(family: str, make_run, glue_data: Path) -> None:
    """Raw validation rows (labels dropped) give exactly what evaluation gives on the split."""
    run = load_run(make_run(family))
    rows = [{k: v for k, v in row.items() if k != "label"} for row in rows_of(glue_data, "rte")]
    _, ours = run_predictions(run, rows, task="rte")
    task = get_task(run.recipe.tasks[1])
    theirs = predict(
        run.model, run.tokenizer, task, task.load_split("validation"), run.family, BATCH, "cpu",
        task_id=1, max_source_length=32, max_target_length=4,
    )  # fmt: skip
    assert ours == theirs  # bit for bit: same batches, same forwards


@pytest.mark.parametrize("family", ["seq2seq", "decoder", "encoder"])
def test_mixed_file_equals_one_call_per_task(family: str, make_run, glue_data: Path) -> None:
    run = load_run(make_run(family))
    per_task = {name: rows_of(glue_data, name)[:7] for name in TASKS}
    mixed = [
        {**row, "task": name}
        for pair in zip(*(per_task[name] for name in TASKS), strict=True)
        for name, row in zip(TASKS, pair, strict=True)
    ]
    inputs, together = run_predictions(run, mixed, task_field="task")
    assert [i.task for i in inputs] == list(TASKS) * 7
    for name in TASKS:
        _, alone = run_predictions(run, per_task[name], task=name)
        picked = [p for i, p in zip(inputs, together, strict=True) if i.task == name]
        assert [p.label for p in picked] == [p.label for p in alone]
        for mine, single in zip(picked, alone, strict=True):
            assert mine.text == single.text
            assert mine.probabilities == pytest.approx(single.probabilities, abs=1e-5)


def _text_to_text_predictions(model, run: LoadedRun, task: Task) -> list[Prediction]:
    """What a plain model (no adapter, task ids ignored) predicts on the rte rows."""
    return predict(
        accept_task_ids(model.eval()), run.tokenizer, task, task.load_split("validation"),
        run.family, BATCH, "cpu", task_id=0, max_source_length=32, max_target_length=4,
    )  # fmt: skip


@pytest.mark.parametrize(
    ("family", "auto"), [("seq2seq", AutoModelForSeq2SeqLM), ("decoder", AutoModelForCausalLM)]
)
def test_equals_the_merged_checkpoint(
    family: str, auto, make_run, tiny_model_dir, glue_data: Path, tmp_path: Path
) -> None:
    run_dir = make_run(family)
    run = load_run(run_dir)
    _, ours = run_predictions(run, rows_of(glue_data, "rte"), task="rte")
    merged_dir = export_merged(load_run(run_dir), "rte", tmp_path / "merged")
    task = get_task(run.recipe.tasks[1])
    merged = _text_to_text_predictions(auto.from_pretrained(merged_dir), run, task)
    assert [p.label for p in ours] == [p.label for p in merged]
    for mine, plain in zip(ours, merged, strict=True):
        assert mine.probabilities == pytest.approx(plain.probabilities, abs=1e-4)
    # The adapter matters: the bare base predicts otherwise.
    bare = _text_to_text_predictions(auto.from_pretrained(tiny_model_dir(family)), run, task)
    differences = [
        abs(p.probabilities[word] - q.probabilities[word])
        for p, q in zip(ours, bare, strict=True)
        for word in p.probabilities
    ]
    assert max(differences) > 1e-3


def test_encoder_equals_the_merged_checkpoint(make_run, glue_data: Path, tmp_path: Path) -> None:
    run_dir = make_run("encoder")
    run = load_run(run_dir)
    rows = rows_of(glue_data, "rte")
    inputs, ours = run_predictions(run, rows, task="rte")
    merged_dir = export_merged(load_run(run_dir), "rte", tmp_path / "merged")
    backbone = AutoModel.from_pretrained(merged_dir).eval()
    head = TaskHead.load(merged_dir)
    batch = run.tokenizer(
        [i.text for i in inputs], padding=True, truncation=True, max_length=32, return_tensors="pt"
    )
    with torch.no_grad():
        hidden = backbone(**batch).last_hidden_state
    probabilities = torch.softmax(head(hidden, batch["attention_mask"]), dim=-1)
    assert [p.label for p in ours] == probabilities.argmax(-1).tolist()
    for mine, row in zip(ours, probabilities.tolist(), strict=True):
        assert list(mine.probabilities.values()) == pytest.approx(row, abs=1e-4)


# ---------------------------------------------------------------------------------------------
# Rows


@pytest.fixture
def run_tasks(glue_data: Path) -> RunTasks:
    recipe = Recipe.model_validate(
        {
            "model": {"name": "unused"},
            "tasks": [{"name": name, "source": str(glue_data / name)} for name in TASKS],
        }
    )
    return RunTasks(recipe)


def test_raw_columns_format_as_in_training(run_tasks: RunTasks, glue_data: Path) -> None:
    rows = rows_of(glue_data, "rte")[:3]
    unlabelled = [{k: v for k, v in row.items() if k != "label"} for row in rows]
    inputs = prepare_inputs(numbered(unlabelled), run_tasks, "test", task="rte")
    expected = [e.text for e in run_tasks["rte"].load_split("validation")[:3]]
    assert [i.text for i in inputs] == expected
    formatted = [{"input": text} for text in expected]
    again = prepare_inputs(numbered(formatted), run_tasks, "test", task="rte", text_field="input")
    assert again == inputs


def test_task_field_falls_back_to_task(run_tasks: RunTasks) -> None:
    rows = [{"sentence": "the movie was good ."}, {"sentence": "bad .", "kind": "sst2"}]
    inputs = prepare_inputs(numbered(rows), run_tasks, "test", task="sst2", task_field="kind")
    assert [(i.line, i.task) for i in inputs] == [(1, "sst2"), (2, "sst2")]


def test_bad_rows_are_reported_together_with_line_numbers(run_tasks: RunTasks) -> None:
    text = "\n".join(
        [
            '{"task": "rte", "sentence1": "a .", "sentence2": "b ."}',
            "not json",
            "",
            "[1, 2]",
            '{"task": "rte", "sentence1": "a ."}',
            '{"task": "cola", "sentence": "a ."}',
            '{"sentence": "a ."}',
        ]
    )
    with pytest.raises(UserError) as error:
        rows = read_json_lines(io.StringIO(text), "in.jsonl")
    assert str(error.value).startswith("in.jsonl: 2 bad row(s); line 2: invalid JSON")
    assert error.value.details[1] == "line 4: expected a JSON object, got list"

    rows = read_json_lines(io.StringIO("\n".join(text.splitlines()[4:])), "in.jsonl")
    with pytest.raises(UserError) as error:
        prepare_inputs(rows, run_tasks, "in.jsonl", task_field="task")
    details = error.value.details
    assert str(error.value).startswith("in.jsonl: 3 bad row(s); line 1: missing column")
    assert "'sentence2' for task rte" in details[0]
    assert details[1].startswith("line 2: this run has no task 'cola'; its tasks are: sst2, rte")
    assert details[2].startswith("line 3: missing column 'task' naming the task")


@pytest.mark.parametrize(
    ("how", "message"),
    [
        ({}, "give --task NAME"),
        ({"task": "cola"}, "this run has no task 'cola'"),
        ({"task": "rte", "text_field": "input"}, "column 'input' must hold"),
    ],
)
def test_bad_requests(run_tasks: RunTasks, how: dict, message: str) -> None:
    rows = [(1, {"sentence1": "a .", "sentence2": "b ."})]
    with pytest.raises(UserError, match=message):
        prepare_inputs(rows, run_tasks, "in.jsonl", **how)


def test_no_rows() -> None:
    with pytest.raises(UserError, match="no rows to predict"):
        read_json_lines(io.StringIO("\n\n"), "stdin")


def test_record_layout() -> None:
    item = PredictionInput(3, "rte", "rte sentence1: a . sentence2: b .")
    words = {"entailment": 0.25, "not_entailment": 0.75}
    record = prediction_record(item, Prediction(1, "not_entailment", words))
    assert record == {
        "line": 3, "task": "rte", "prediction": "not_entailment", "prediction_id": 1,
        "probabilities": words,
    }  # fmt: skip
    nan = Prediction(1, "not_entailment", {"entailment": float("nan"), "not_entailment": 0.5})
    with pytest.raises(UserError, match="line 3 \\(rte\\): the model gave non-finite scores"):
        prediction_record(item, nan)
    regression = prediction_record(item, Prediction(3.8, "3.8"))
    assert regression == {"line": 3, "task": "rte", "prediction": "3.8", "prediction_score": 3.8}
