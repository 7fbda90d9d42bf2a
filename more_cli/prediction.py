"""Predict with a trained run on new rows: the library behind ``more predict``.

Input is JSON lines, one object per row, read from a file or stdin:

- **Raw columns** (default): the columns of the task's hub dataset, e.g. ``sentence1`` and
  ``sentence2`` for rte, ``sentence`` for sst2, or a user-defined task's template columns.
  The task's own formatter turns them into the model input, exactly as in training. A label
  column is not needed (and is ignored when present), except ``answerKey`` for ARC /
  OpenBookQA, whose formatter validates it.
- **Formatted text** (``text_field``): the row holds the model input verbatim in that column,
  task prefix included (``"rte sentence1: … sentence2: …"``). Not the default because some
  tasks have a raw column named ``text`` (demo_topic).

Each row's task is the fixed ``task``, or the value of its ``task_field`` column (with
``task`` as the fallback for rows that lack it), so one file can mix tasks. Bad rows (not
JSON, not an object, missing columns, a task the run does not have) are all reported at once,
each with its line number.

Rows are scored in input order, in batches that mix tasks: the adapter routes every sample
by its own task id, so one forward serves the whole mix (method.md §1). Scoring is
:mod:`more_cli.evaluation.predict`'s: rank classification over the task's candidates for seq2seq and
decoder runs (``batch_size`` bounds (row, candidate) pairs per forward), the task heads for
encoder runs. A one-task input in the same batch size gives bit-identical predictions to
``more eval``; mixed batches pad differently, which moves probabilities only by float
rounding.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TextIO

import torch

from more_cli.data import (
    Collator,
    Family,
    answer_ids,
    pad_token_id,
    prompt_ids,
    text_to_text_feature,
)
from more_cli.errors import UserError
from more_cli.evaluation.predict import (
    Prediction,
    prediction_from_candidate_scores,
    prediction_from_head_logits,
    sequence_log_likelihood,
)
from more_cli.recipe import Recipe
from more_cli.run_loading import LoadedRun
from more_cli.tasks import RowError, Task, get_task

MAX_REPORTED_ROW_ERRORS = 20
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}

Row = dict[str, Any]
Progress = Callable[[int], None]
"""Called after each batch with the number of rows scored so far."""


@dataclass(frozen=True)
class PredictionInput:
    """One row ready for the model: its line in the input, its task and the formatted text."""

    line: int
    task: str
    text: str


# ---------------------------------------------------------------------------------------------
# Reading and formatting rows


def read_json_lines(handle: Iterable[str], origin: str) -> list[tuple[int, Row]]:
    """``(line number, object)`` for every non-blank line; all bad lines reported together.

    Raises:
        UserError: lines that are not JSON objects, or no rows at all.
    """
    rows, errors = [], []
    for number, line in enumerate(handle, start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as error:
            errors.append(f"line {number}: invalid JSON ({error.msg})")
            continue
        if not isinstance(row, dict):
            errors.append(f"line {number}: expected a JSON object, got {type(row).__name__}")
            continue
        rows.append((number, row))
    _raise_row_errors(origin, errors)
    if not rows:
        raise UserError(f"{origin}: no rows to predict", details=["write one JSON object a line"])
    return rows


class RunTasks:
    """The run's tasks by name, built from its recipe on first use.

    Lazily, so that a user-defined task whose data files have moved only fails when a row
    actually asks for it.
    """

    def __init__(self, recipe: Recipe) -> None:
        self.recipe = recipe
        self.names = recipe.task_names
        self._built: dict[str, Task] = {}

    def __getitem__(self, name: str) -> Task:
        if name not in self._built:
            cfg = self.recipe.tasks[self.names.index(name)]
            self._built[name] = get_task(cfg, seed=self.recipe.train.seed)
        return self._built[name]

    def __contains__(self, name: object) -> bool:
        return name in self.names


def prepare_inputs(
    rows: Sequence[tuple[int, Row]],
    tasks: RunTasks,
    origin: str,
    *,
    task: str | None = None,
    task_field: str | None = None,
    text_field: str | None = None,
) -> list[PredictionInput]:
    """Give every row its task and model input (see the module docstring).

    Raises:
        UserError: neither ``task`` nor ``task_field``, an unknown ``task``, or bad rows
            (each named by its line number).
    """
    if task is None and task_field is None:
        raise UserError("give --task NAME, or --task-field COLUMN for rows that name their task")
    if task is not None and task not in tasks:
        raise UserError(_unknown_task(task), details=[_known_tasks(tasks)])
    inputs, errors = [], []
    for line, row in rows:
        try:
            name = _row_task(row, task, task_field, tasks)
            text = _row_text(row, tasks[name], text_field)
        except RowError as error:
            errors.append(f"line {line}: {error}")
            continue
        inputs.append(PredictionInput(line, name, text))
    _raise_row_errors(origin, errors)
    return inputs


def _row_task(row: Row, default: str | None, field: str | None, tasks: RunTasks) -> str:
    if field is not None and field in row:
        name = row[field]
        if not isinstance(name, str) or name not in tasks:
            raise RowError(f"{_unknown_task(name)}; {_known_tasks(tasks)}")
        return name
    if default is None:
        raise RowError(f"missing column {field!r} naming the task (columns: {_columns(row)})")
    return default


def _row_text(row: Row, task: Task, text_field: str | None) -> str:
    if text_field is not None:
        value = row.get(text_field)
        if not isinstance(value, str) or not value.strip():
            raise RowError(f"column {text_field!r} must hold the formatted input text")
        return value
    view = _LabelOptional(row)
    try:
        text, _ = task.formatter(view)
    except RowError:
        if not view.absent:
            raise
        missing = ", ".join(map(repr, view.absent))
        raise RowError(
            f"missing column {missing} for task {task.name} (columns: {_columns(row)})"
        ) from None
    return text


class _LabelOptional(Mapping[str, Any]):
    """A row whose absent columns read as None, noted in ``absent``.

    Task formatters read the label column too; a row to predict has none, and a None label
    passes through the formatter unread. An absent *input* column reads as None too and makes
    the formatter fail, which :func:`_row_text` then reports as a missing column.
    """

    def __init__(self, row: Row) -> None:
        self.row = row
        self.absent: list[str] = []

    def __getitem__(self, key: str) -> Any:
        if key in self.row:
            return self.row[key]
        self.absent.append(key)
        return None

    def __contains__(self, key: object) -> bool:
        return True

    def __iter__(self) -> Iterator[str]:
        return iter(self.row)

    def __len__(self) -> int:
        return len(self.row)


def _columns(row: Row) -> str:
    return ", ".join(map(str, row)) or "none"


def _unknown_task(name: Any) -> str:
    return f"this run has no task {name!r}"


def _known_tasks(tasks: RunTasks) -> str:
    return f"its tasks are: {', '.join(tasks.names)}"


def _raise_row_errors(origin: str, errors: list[str]) -> None:
    if errors:
        raise UserError(
            f"{origin}: {len(errors)} bad row(s); {errors[0]}",
            details=errors[:MAX_REPORTED_ROW_ERRORS],
        )


# ---------------------------------------------------------------------------------------------
# Scoring


def resolve_device(name: str) -> torch.device:
    """``auto``: the first CUDA GPU when there is one, else the CPU; otherwise as named."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UserError(
            f"--device {name!r} is not a device", details=["use auto, cpu, cuda or cuda:N"]
        ) from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"--device {name}: no CUDA GPU is available", details=["use --device cpu"])
    return device


def place_run(run: LoadedRun, device: torch.device, dtype: str | None) -> None:
    """Move the run's model to ``device``, cast to ``dtype`` (None: the recipe's model.dtype).

    A run on a 4-bit base stays where loading placed it, in its trained dtypes.
    """
    if run.was_4bit:
        if dtype is not None:
            raise UserError(
                "--dtype does not apply to a run on a 4-bit base", details=["drop --dtype"]
            )
        return
    run.model.to(device)
    if dtype is not None:
        run.model.to(DTYPES[dtype])


def predict_with_run(
    run: LoadedRun,
    tasks: RunTasks,
    inputs: Sequence[PredictionInput],
    batch_size: int,
    device: torch.device | str,
    progress: Progress | None = None,
) -> list[Prediction]:
    """:func:`predict_inputs` with the run's model and its recipe's token limits."""
    return predict_inputs(
        run.model, run.tokenizer, run.family, inputs, tasks, batch_size, device,
        max_source_length=run.recipe.data.max_source_length,
        max_target_length=run.recipe.data.max_target_length,
        progress=progress,
    )  # fmt: skip


@torch.no_grad()
def predict_inputs(
    model: torch.nn.Module,
    tokenizer: Any,
    family: Family,
    inputs: Sequence[PredictionInput],
    tasks: RunTasks,
    batch_size: int,
    device: torch.device | str,
    *,
    max_source_length: int = 128,
    max_target_length: int = 8,
    progress: Progress | None = None,
) -> list[Prediction]:
    """Predictions for ``inputs`` in their order, batches mixing tasks.

    A row's task id is the task's position in ``tasks.names`` (the run's task order).
    """
    was_training = model.training
    model.eval()
    try:
        prompts = [prompt_ids(tokenizer, item.text, max_source_length) for item in inputs]
        task_ids = [tasks.names.index(item.task) for item in inputs]
        if family == "encoder":
            logits = _head_logits(model, tokenizer, prompts, task_ids, batch_size, device, progress)
            return [
                prediction_from_head_logits(tasks[i.task], row)
                for i, row in zip(inputs, logits, strict=True)
            ]
        answers: dict[str, list[list[int]]] = {}
        for name in {item.task for item in inputs}:
            candidates = tasks[name].candidates()
            answers[name] = [
                answer_ids(tokenizer, c, family, max_target_length) for c in candidates
            ]
        scores = _candidate_scores(
            model, tokenizer, family, prompts, [answers[item.task] for item in inputs],
            task_ids, batch_size, device, progress,
        )  # fmt: skip
        return [
            prediction_from_candidate_scores(tasks[i.task], row)
            for i, row in zip(inputs, scores, strict=True)
        ]
    finally:
        model.train(was_training)


def _candidate_scores(
    model: torch.nn.Module,
    tokenizer: Any,
    family: Family,
    prompts: Sequence[list[int]],
    answers: Sequence[Sequence[list[int]]],
    task_ids: Sequence[int],
    batch_size: int,
    device: torch.device | str,
    progress: Progress | None,
) -> list[torch.Tensor]:
    """Summed log-likelihood of each row's candidates: one tensor per row.

    The (row, candidate) pairs of all rows are batched together, each tagged with its row's
    task id, as :func:`more_cli.evaluation.predict.candidate_scores` does for one task.
    """
    collator = Collator(pad_token_id(tokenizer), family)
    pairs = [(row, a) for row, options in enumerate(answers) for a in range(len(options))]
    sums = []
    for start in range(0, len(pairs), batch_size):
        chunk = pairs[start : start + batch_size]
        features = [
            {
                **text_to_text_feature(prompts[row], answers[row][a], family),
                "task_id": task_ids[row],
            }
            for row, a in chunk
        ]
        batch = {key: value.to(device) for key, value in collator(features).items()}
        sums.append(sequence_log_likelihood(model, batch, family).cpu())
        if progress is not None:
            row, a = chunk[-1]
            progress(row + 1 if a == len(answers[row]) - 1 else row)
    return list(torch.cat(sums).split([len(options) for options in answers]))


def _head_logits(
    model: torch.nn.Module,
    tokenizer: Any,
    prompts: Sequence[list[int]],
    task_ids: Sequence[int],
    batch_size: int,
    device: torch.device | str,
    progress: Progress | None,
) -> list[torch.Tensor]:
    """Encoder runs: each row's head logits (``[max labels]``; -inf beyond its task's)."""
    collator = Collator(pad_token_id(tokenizer), "encoder")
    rows = []
    for start in range(0, len(prompts), batch_size):
        features = [
            {"input_ids": prompts[i], "labels": 0.0, "task_id": task_ids[i]}
            for i in range(start, min(start + batch_size, len(prompts)))
        ]
        batch = {key: value.to(device) for key, value in collator(features).items()}
        logits = model(
            input_ids=batch["input_ids"],
            attention_mask=batch["attention_mask"],
            task_ids=batch["task_ids"],
        ).logits
        rows.extend(logits.float().cpu())
        if progress is not None:
            progress(start + len(features))
    return rows


# ---------------------------------------------------------------------------------------------
# Output


def prediction_record(item: PredictionInput, prediction: Prediction) -> dict[str, Any]:
    """The output line of one row: ``line``, ``task``, ``prediction`` (label word or score
    string) and, for classification, ``prediction_id`` (the class id) and ``probabilities``;
    for regression ``prediction_score`` (the number). No name collides with an input
    column such as ``label``."""
    numbers = [prediction.label, *(prediction.probabilities or {}).values()]
    if not all(math.isfinite(float(value)) for value in numbers):
        # JSON has no NaN: such a line would not parse, and no score is better than a wrong one.
        raise UserError(
            f"line {item.line} ({item.task}): the model gave non-finite scores; the adapter or "
            "its base is damaged (check the run with: more eval RUN_DIR)"
        )
    record: dict[str, Any] = {"line": item.line, "task": item.task, "prediction": prediction.text}
    if prediction.probabilities is None:
        record["prediction_score"] = prediction.label
    else:
        record["prediction_id"] = prediction.label
        record["probabilities"] = prediction.probabilities
    return record


def write_json_lines(records: Iterable[Mapping[str, Any]], handle: TextIO) -> None:
    for record in records:
        handle.write(json.dumps(record, ensure_ascii=False) + "\n")
