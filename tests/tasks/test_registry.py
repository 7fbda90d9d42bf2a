"""Every registry task formats hub-layout rows read from a local folder."""

from __future__ import annotations

import pytest

from more_cli.errors import UserError
from more_cli.recipe import TaskConfig
from more_cli.tasks import DEMO_TASKS, TASK_NAMES, get_task, score_target
from tests.tasks.rows import EXPECTED, HUB_ROWS, write_jsonl

FILE_TASKS = [name for name in TASK_NAMES if name not in DEMO_TASKS]


def test_registry_lists_every_task():
    assert set(FILE_TASKS) == set(HUB_ROWS)
    assert {"cola", "sst2", "mrpc", "qqp", "stsb", "mnli", "qnli", "rte"} <= set(TASK_NAMES)


@pytest.mark.parametrize("name", FILE_TASKS)
def test_formats_hub_rows(tmp_path, name):
    write_jsonl(tmp_path / "train.jsonl", [HUB_ROWS[name]])
    task = get_task(TaskConfig(name=name, source=str(tmp_path)))
    [example] = task.load_split("train")
    assert (example.text, example.target, example.label) == EXPECTED[name]
    assert task.prefix == name
    assert example.target in task.candidates()


@pytest.mark.parametrize("name", FILE_TASKS)
def test_candidate_values_round_trip(name):
    task = get_task(TaskConfig(name=name))
    for index, candidate in enumerate(task.candidates()):
        assert task.target_for(task.candidate_value(index)) == candidate


def test_label_words_and_shapes():
    mnli = get_task(TaskConfig(name="mnli"))
    assert mnli.label_words == ["entailment", "neutral", "contradiction"]
    assert (mnli.num_labels, mnli.is_regression) == (3, False)
    stsb = get_task(TaskConfig(name="stsb"))
    assert (stsb.label_words, stsb.num_labels, stsb.is_regression) == (None, 1, True)
    assert stsb.candidates()[:3] == ["0.0", "0.2", "0.4"] and len(stsb.candidates()) == 26
    assert stsb.candidate_value(19) == pytest.approx(3.8)
    assert get_task(TaskConfig(name="arc_easy")).candidates() == ["A", "B", "C", "D", "E"]
    assert get_task(TaskConfig(name="piqa")).candidates() == ["A", "B"]


def test_headline_metrics():
    headline = {name: get_task(TaskConfig(name=name)).headline_metric for name in TASK_NAMES}
    assert headline["cola"] == "matthews"
    assert headline["stsb"] == "pearson"
    assert headline["mrpc"] == headline["qqp"] == "acc_and_f1"
    assert headline["rte"] == "accuracy"


@pytest.mark.parametrize(
    ("score", "target"), [(0.0, "0.0"), (0.09, "0.0"), (0.11, "0.2"), (2.5, "2.4"), (4.99, "5.0")]
)
def test_stsb_rounding(score, target):
    assert score_target(score) == target


def test_mnli_folder_accepts_hub_split_name(tmp_path):
    write_jsonl(tmp_path / "validation_matched.jsonl", [HUB_ROWS["mnli"]])
    task = get_task(TaskConfig(name="mnli", source=str(tmp_path)))
    assert len(task.load_split("validation")) == 1


def test_unknown_task_suggests_a_name():
    with pytest.raises(UserError, match="did you mean 'mrpc'") as error:
        get_task(TaskConfig(name="mrcp"))
    assert "known tasks" in str(error.value) and "rte" in str(error.value)


def test_builtin_task_rejects_user_only_keys():
    with pytest.raises(UserError, match="label_words only apply to user-defined"):
        get_task(TaskConfig(name="rte", label_words=["yes", "no"]))


def test_missing_source_folder(tmp_path):
    with pytest.raises(UserError, match="source folder not found"):
        get_task(TaskConfig(name="rte", source=str(tmp_path / "nope")))


def test_missing_split_file_names_the_folder(tmp_path):
    task = get_task(TaskConfig(name="rte", source=str(tmp_path)))
    with pytest.raises(UserError, match=r"no train file in .*train\.jsonl"):
        task.load_split("train")
