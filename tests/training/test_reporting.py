"""What training reports to the trackers: loss, learning rate, every task's evaluation
metrics and the final test scores, read back with TensorBoard's own reader; a tracker whose
package is missing is refused before anything trains."""

from __future__ import annotations

import importlib.util
import json
from collections.abc import Callable
from pathlib import Path

import pytest

from more_cli.errors import UserError
from more_cli.recipe_io import load_recipe
from more_cli.rundir import RunDir
from more_cli.training import session as training_session
from more_cli.training.loop import train
from more_cli.training.reporting import tracker_values


def test_an_evaluation_becomes_one_scalar_per_task_and_metric() -> None:
    metrics = {"accuracy": 50.0, "headline": 50.0, "metric": "accuracy"}
    record = {"split": "val_select", "average": 50.0, "eval": {"rte": metrics}}
    assert tracker_values(record) == {
        "val_select/average": 50.0, "val_select/rte/accuracy": 50.0,
        "val_select/rte/headline": 50.0,
    }  # fmt: skip
    assert tracker_values({"loss": 0.5, "lr": 1e-3, "note": "x"}) == {"loss": 0.5, "lr": 1e-3}


def test_router_figures_become_scalars_per_task() -> None:
    record = {"loss": 0.5, "router": {"mean_rank": {"rte": 3.5}, "confidence": {"rte": 0.9},
                                      "changed": 2}}  # fmt: skip
    assert tracker_values(record) == {
        "loss": 0.5, "router/rte/mean_rank": 3.5, "router/rte/confidence": 0.9,
        "router/changed": 2,
    }  # fmt: skip


def test_loss_records_trace_the_router_until_its_final_choice(
    write_recipe: Callable[..., Path], run_dir: Path
) -> None:
    from more_cli.run_loading import load_run

    train(load_recipe(write_recipe(train={"max_steps": 6, "log_every": 2, "lr": 0.05})))
    records = [json.loads(line) for line in RunDir(run_dir).metrics.read_text().splitlines()]
    traces = [r["router"] for r in records if "loss" in r]
    assert len(traces) == 3 and "changed" not in traces[0]
    for trace in traces:
        assert set(trace["mean_rank"]) == {"sst2", "rte"}
        assert all(1.0 <= rank <= 4.0 for rank in trace["mean_rank"].values())
        assert all(0.0 < c <= 1.0 for c in trace["confidence"].values())
    # No evaluation, so adapter/ holds the last step: the last record is its routing.
    run = load_run(run_dir)
    for task, ranks in run.adapter.chosen_ranks().items():
        assert traces[-1]["mean_rank"][task] == pytest.approx(sum(ranks.values()) / len(ranks))
    layers_times_tasks = 2 * len(run.adapter.layers)
    assert all(0 <= t["changed"] <= layers_times_tasks for t in traces[1:])


def test_changed_counts_the_layer_task_choices_that_moved() -> None:
    import torch

    from more_cli.adapters import AdapterConfig, inject_adapter
    from more_cli.training.reporting import RouterTrace
    from tests.helpers.tiny import tiny_t5

    adapter = inject_adapter(tiny_t5(), AdapterConfig(kind="more", r=4), ["a", "b"])
    trace = RouterTrace(adapter)
    before = adapter.router.chosen_ranks()
    assert "changed" not in trace.record()["router"]
    # The group's first layer is made to pick, for every task, a rank task "a" did not have.
    first = adapter.router.group_layers[0][0]
    target = 1 if int(before[first, 0]) != 1 else 4
    with torch.no_grad():
        adapter.router.groups[0].gate_bias[0] = (
            torch.nn.functional.one_hot(torch.tensor(target - 1), 4).float() * 1e4
        )
    expected = int((before[first] != target).sum())
    assert expected >= 1 and trace.record()["router"]["changed"] == expected
    assert trace.record()["router"]["changed"] == 0


def test_kinds_without_a_hard_router_trace_nothing(
    write_recipe: Callable[..., Path], run_dir: Path
) -> None:
    train(load_recipe(write_recipe(adapter={"kind": "lora"}, train={"max_steps": 2})))
    records = [json.loads(line) for line in RunDir(run_dir).metrics.read_text().splitlines()]
    assert records and not any("router" in r for r in records)


@pytest.mark.skipif(importlib.util.find_spec("tensorboard") is None, reason="needs tensorboard")
def test_tensorboard_holds_loss_evaluations_and_test_scores(
    write_recipe: Callable[..., Path], run_dir: Path
) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    recipe = write_recipe(train={"max_steps": 4, "eval_every": 2, "trackers": ["tensorboard"]})
    train(load_recipe(recipe))
    accumulator = EventAccumulator(str(run_dir / "more"))  # accelerate's <project_dir>/<name>
    accumulator.Reload()
    tags = set(accumulator.Tags()["scalars"])
    assert {"loss", "lr", "val_select/average", "val_test/average"} <= tags
    assert {f"{split}/{task}/accuracy" for split in ("val_select", "val_test")
            for task in ("sst2", "rte")} <= tags  # fmt: skip
    assert [e.step for e in accumulator.Scalars("val_select/average")] == [2, 4]
    final = json.loads(RunDir(run_dir).eval.read_text())
    [logged] = accumulator.Scalars("val_test/rte/accuracy")
    assert logged.value == pytest.approx(final["tasks"]["rte"]["accuracy"])


def test_a_tracker_without_its_package_is_refused_before_training(
    write_recipe: Callable[..., Path], run_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        training_session.importlib.util, "find_spec",
        lambda name, *a: None if name == "tensorboard" else real_find_spec(name, *a),
    )  # fmt: skip
    monkeypatch.setattr(training_session, "load_base", lambda *a, **k: pytest.fail("loaded"))
    recipe = load_recipe(write_recipe(train={"trackers": ["tensorboard"]}))
    with pytest.raises(UserError, match="tensorboard needs the tensorboard package") as caught:
        train(recipe)
    assert "pip install tensorboard" in " ".join(caught.value.details)
    assert not (run_dir / "checkpoints").exists() and not RunDir(run_dir).metrics.exists()


def test_a_live_run_says_its_phase_and_step_and_every_evaluation_reports_progress(
    write_recipe: Callable[..., Path],
    run_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from more_cli.training import loop

    seen = []
    real = loop.write_run_info

    def spy(run: RunDir, **fields: object) -> dict:
        seen.append((fields.get("phase"), fields.get("step")))
        return real(run, **fields)

    monkeypatch.setattr(loop, "write_run_info", spy)
    train(load_recipe(write_recipe(train={"max_steps": 4, "eval_every": 2, "log_every": 2})))
    assert seen[:3] == [("train", 2), ("evaluate val_select", 2), ("train", 4)]
    assert seen[-1] == ("finished", 4)
    out = capsys.readouterr().out
    assert "tokenized sst2: 32 training rows" in out and "tokenized rte: 32 training rows" in out
    assert "step 4: evaluating on val_test" in out
    for task in ("sst2", "rte"):
        assert f"val_test {task}: 8/8 rows" in out and f"val_test {task}: accuracy" in out
    assert "adapter on val_test" in out  # the table `more eval` prints
