"""Splits, subsampling, bad rows and user-defined tasks."""

from __future__ import annotations

import csv
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from more_cli.errors import UserError
from more_cli.recipe import TaskConfig
from more_cli.tasks import get_task
from tests.tasks.rows import write_jsonl


def _rte_rows(count: int) -> list[dict]:
    return [
        {"sentence1": f"first {i}", "sentence2": f"second {i}", "label": i % 2, "idx": i}
        for i in range(count)
    ]


@pytest.fixture
def rte_dir(tmp_path):
    write_jsonl(tmp_path / "train.jsonl", _rte_rows(50))
    write_jsonl(tmp_path / "validation.jsonl", _rte_rows(21))
    return tmp_path


def test_validation_halves_partition_validation(rte_dir):
    task = get_task(TaskConfig(name="rte", source=str(rte_dir)))
    full = task.load_split("validation")
    select, test = task.load_split("val_select"), task.load_split("val_test")
    assert (len(select), len(test)) == (11, 10)
    assert sorted(e.text for e in select + test) == sorted(e.text for e in full)
    again = get_task(TaskConfig(name="rte", source=str(rte_dir)), seed=7)
    assert again.load_split("val_select") == select  # halves ignore the run seed


def test_subsampling_is_seeded(rte_dir):
    config = TaskConfig(name="rte", source=str(rte_dir), max_train_samples=10, max_eval_samples=4)
    first = get_task(config, seed=1)
    assert len(first.load_split("train")) == 10
    assert len(first.load_split("val_test")) == 4
    assert get_task(config, seed=1).load_split("train") == first.load_split("train")
    assert get_task(config, seed=2).load_split("train") != first.load_split("train")


def test_unknown_split(rte_dir):
    with pytest.raises(UserError, match="unknown split 'test'"):
        get_task(TaskConfig(name="rte", source=str(rte_dir))).load_split("test")


@pytest.mark.parametrize(
    ("row", "problem"),
    [
        ({"sentence1": "a", "label": 0}, "row 2: missing column 'sentence2'"),
        ({"sentence1": "a", "sentence2": "  ", "label": 0}, "row 2: empty text in column"),
        ({"sentence1": "a", "sentence2": "b", "label": 2}, "row 2: label 2 is outside"),
        ({"sentence1": "a", "sentence2": "b", "label": "maybe"}, "row 2: label 'maybe' is not"),
        ({"sentence1": "a", "sentence2": "b", "label": None}, "row 2: empty label"),
    ],
)
def test_bad_rows_name_file_and_row(tmp_path, row, problem):
    good = {"sentence1": "a", "sentence2": "b", "label": 1}
    path = write_jsonl(tmp_path / "train.jsonl", [good, row, good])
    with pytest.raises(UserError, match=problem) as error:
        get_task(TaskConfig(name="rte", source=str(tmp_path))).load_split("train")
    assert str(path) in str(error.value)


@pytest.mark.parametrize(
    ("label", "problem"),
    [
        (float("nan"), "score is nan"),
        (7.0, "score 7.0 is outside 0.0–5.0"),
        ("x", "score .x. is not a number"),
    ],
)
def test_bad_scores(tmp_path, label, problem):
    write_jsonl(tmp_path / "train.jsonl", [{"sentence1": "a", "sentence2": "b", "label": label}])
    with pytest.raises(UserError, match=f"row 1: {problem}"):
        get_task(TaskConfig(name="stsb", source=str(tmp_path))).load_split("train")


def test_all_bad_rows_are_listed(tmp_path):
    rows = [{"sentence1": "a", "sentence2": "b", "label": 9}] * 3
    write_jsonl(tmp_path / "train.jsonl", rows)
    with pytest.raises(UserError, match="3 bad row") as error:
        get_task(TaskConfig(name="rte", source=str(tmp_path))).load_split("train")
    assert [detail.split(":")[0] for detail in error.value.details] == ["row 1", "row 2", "row 3"]


def test_invalid_json_line(tmp_path):
    (tmp_path / "train.jsonl").write_text('{"sentence1": "a"}\n{oops\n')
    with pytest.raises(UserError, match="line 2: invalid JSON"):
        get_task(TaskConfig(name="rte", source=str(tmp_path))).load_split("train")


ROWS = [
    {"review": "loved it", "stars": "pos"},
    {"review": "hated it", "stars": "neg"},
    {"review": "fine", "stars": 1},
]


def _write(path, rows):
    if path.suffix == ".jsonl":
        write_jsonl(path, rows)
    elif path.suffix == ".json":
        path.write_text(json.dumps(rows))
    elif path.suffix == ".csv":
        with path.open("w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
    else:
        table = pa.Table.from_pylist([{**row, "stars": str(row["stars"])} for row in rows])
        pq.write_table(table, path)
    return path


@pytest.mark.parametrize("suffix", [".jsonl", ".json", ".csv", ".parquet"])
def test_user_defined_task(tmp_path, suffix):
    train = _write(tmp_path / f"train{suffix}", ROWS)
    config = TaskConfig(
        name="my_reviews",
        data_files={"train": str(train)},
        template="reviews text: {review}",
        label_column="stars",
        label_words=["neg", "pos"],
    )
    task = get_task(config)
    examples = task.load_split("train")
    assert [e.text for e in examples] == [
        "reviews text: loved it",
        "reviews text: hated it",
        "reviews text: fine",
    ]
    assert [e.label for e in examples] == [1, 0, 1]
    assert [e.target for e in examples] == ["pos", "neg", "pos"]
    assert (task.prefix, task.metrics, task.headline_metric) == (
        "reviews",
        ["accuracy"],
        "accuracy",
    )
    with pytest.raises(UserError, match="data_files has no 'validation' entry"):
        task.load_split("validation")


def test_user_regression_task(tmp_path):
    rows = [{"a": "x", "b": "y", "score": "4.5"}]
    train = _write(tmp_path / "train.csv", rows)
    task = get_task(
        TaskConfig(
            name="sim",
            data_files={"train": str(train)},
            template="sim {a} | {b}",
            label_column="score",
        )
    )
    [example] = task.load_split("train")
    assert (example.text, example.target, example.label) == ("sim x | y", "4.4", 4.5)
    assert task.metrics == ["pearson"] and task.is_regression


def test_user_template_missing_column(tmp_path):
    train = _write(tmp_path / "train.jsonl", ROWS)
    config = TaskConfig(
        name="r",
        data_files={"train": str(train)},
        template="r {body}",
        label_column="stars",
        label_words=["neg", "pos"],
    )
    with pytest.raises(
        UserError, match="row 1: missing column 'body' \\(columns: review, stars\\)"
    ):
        get_task(config).load_split("train")


def test_user_task_errors(tmp_path):
    with pytest.raises(UserError, match="data_files.train not found: .*nope.jsonl"):
        get_task(
            TaskConfig(
                name="r", data_files={"train": str(tmp_path / "nope.jsonl")}, template="r {x}"
            )
        )
    with pytest.raises(UserError, match="needs a template"):
        get_task(TaskConfig(name="r", data_files={"train": "x.jsonl"}))
    with pytest.raises(UserError, match="does not fit a regression"):
        get_task(TaskConfig(name="r", source=str(tmp_path), template="r {x}", metric="accuracy"))
    with pytest.raises(UserError, match="unsupported file type"):
        bad = tmp_path / "train.txt"
        bad.write_text("x")
        get_task(TaskConfig(name="r", data_files={"train": str(bad)}, template="r {x}")).load_split(
            "train"
        )
