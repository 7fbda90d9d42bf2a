"""`more data prepare`: built-in tasks from a hub dataset (here a local copy the test builds,
with the hub's configs) into the folders recipes read; clear refusals otherwise."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from more_cli.cli.app import app
from more_cli.errors import UserError
from more_cli.recipe import TaskConfig
from more_cli.tasks import get_task
from more_cli.tasks.prepare import expand, prepare

ROWS = {
    "rte": [{"sentence1": f"a {i}", "sentence2": f"b {i}", "label": i % 2, "idx": i}
            for i in range(6)],
    "sst2": [{"sentence": f"the film {i}", "label": i % 2, "idx": i} for i in range(6)],
}  # fmt: skip


@pytest.fixture
def hub_copy(tmp_path: Path) -> Path:
    """A local dataset repository laid out like nyu-mll/glue: one config per task."""
    root = tmp_path / "glue-copy"
    configs = []
    for task, rows in ROWS.items():
        for split in ("train", "validation"):
            path = root / task / f"{split}.jsonl"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text("".join(json.dumps(row) + "\n" for row in rows))
        configs.append(
            f"- config_name: {task}\n  data_files:\n"
            f"  - split: train\n    path: {task}/train.jsonl\n"
            f"  - split: validation\n    path: {task}/validation.jsonl\n"
        )
    (root / "README.md").write_text("---\nconfigs:\n" + "".join(configs) + "---\n")
    return root


def test_prepared_folders_hold_the_hub_rows_and_load_as_a_source(
    hub_copy: Path, tmp_path: Path
) -> None:
    out = tmp_path / "data"
    result = CliRunner().invoke(
        app, ["data", "prepare", "rte", "sst2", "--hub", str(hub_copy), "--out", str(out)]
    )
    assert result.exit_code == 0, result.output
    assert "rte train: 6 rows" in result.output
    for task, rows in ROWS.items():
        for split in ("train", "validation"):
            lines = (out / task / f"{split}.jsonl").read_text().splitlines()
            assert [json.loads(line) for line in lines] == rows
    task = get_task(TaskConfig(name="rte", source=str(out / "rte")))
    assert len(task.load_split("train")) == 6


def test_existing_folders_need_force_and_nothing_is_half_written(
    hub_copy: Path, tmp_path: Path
) -> None:
    out = tmp_path / "data"
    prepare(["rte"], out, hub=str(hub_copy), say=lambda _: None)
    (out / "rte" / "train.jsonl").write_text("mine\n")
    with pytest.raises(UserError, match="rte already exists"):
        prepare(["sst2", "rte"], out, hub=str(hub_copy), say=lambda _: None)
    assert not (out / "sst2").exists()  # checked before the first download
    prepare(["rte"], out, hub=str(hub_copy), force=True, say=lambda _: None)
    assert (out / "rte" / "train.jsonl").read_text() != "mine\n"
    with pytest.raises(UserError, match="cannot read .*\\[train\\] from the hub"):
        prepare(["cola"], out, hub=str(hub_copy), say=lambda _: None)  # not in the copy
    assert sorted(p.name for p in out.iterdir()) == ["rte"]


def test_names_groups_and_refusals() -> None:
    assert expand(["glue", "rte", "boolq"]) == [
        "cola", "sst2", "mrpc", "qqp", "stsb", "mnli", "qnli", "rte", "boolq"
    ]  # fmt: skip
    with pytest.raises(UserError, match="did you mean 'rte'"):
        prepare(["rtee"], Path("unused"))
    with pytest.raises(UserError, match="generated on the fly"):
        prepare(["demo_topic"], Path("unused"))


def test_offline_is_one_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    with pytest.raises(UserError, match="cannot read nyu-mll/glue \\(rte\\)") as caught:
        prepare(["rte"], tmp_path / "data", say=lambda _: None)
    assert "HF_HUB_OFFLINE" in caught.value.details[0]
    assert not (tmp_path / "data").exists()
