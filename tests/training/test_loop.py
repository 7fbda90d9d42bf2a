"""Training loop: loss falls per family, grad accumulation, bitwise resume, stops."""

from __future__ import annotations

import json
import signal
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from more_cli.errors import UserError
from more_cli.recipe_io import load_recipe
from more_cli.rundir import RunDir, latest_checkpoint, list_checkpoints, read_run_info
from more_cli.training import loop
from more_cli.training.loop import train


def _losses(run: Path) -> list[float]:
    lines = (run / "metrics.jsonl").read_text().splitlines()
    return [record["loss"] for record in map(json.loads, lines) if "loss" in record]


def _adapter(run: Path) -> dict:
    return load_file(str(run / "adapter" / "more_adapter.safetensors"))


@pytest.mark.parametrize("kind", ["seq2seq", "decoder", "encoder"])
def test_loss_falls_and_run_dir_is_complete(kind: str, write_recipe: Callable[..., Path]) -> None:
    path = write_recipe(kind, tasks=("sst2",), train={"max_steps": 24, "log_every": 8})
    run = train(load_recipe(path))
    losses = _losses(run)
    assert len(losses) == 3
    assert losses[-1] < losses[0], losses
    info = read_run_info(RunDir(run))
    assert info["status"] == "finished" and info["family"] == kind and info["step"] == 24
    assert (run / "recipe.resolved.yaml").is_file()
    assert (run / "adapter" / "more_adapter.json").is_file()
    assert ((run / "adapter" / "heads.safetensors").is_file()) == (kind == "encoder")
    report = json.loads((run / "eval.json").read_text())
    assert set(report["tasks"]) == {"sst2"} and report["split"] == "val_test"


def test_gradient_accumulation_matches_a_larger_batch(
    write_recipe: Callable[..., Path], tmp_path: Path
) -> None:
    # LLaMA has no dropout and every sst2 answer has the same token count, so two
    # micro-batches of 2 average to exactly the loss of one batch of 4.
    runs = []
    for batch_size, grad_accum in ((4, 1), (2, 2)):
        out = tmp_path / f"run-{batch_size}x{grad_accum}"
        train_cfg = {"batch_size": batch_size, "grad_accum": grad_accum, "max_steps": 3}
        path = write_recipe("decoder", tasks=("sst2",), train=train_cfg, output_dir=str(out))
        runs.append(_adapter(train(load_recipe(path))))
    big, accumulated = runs
    for key in big:
        assert torch.allclose(big[key], accumulated[key], atol=1e-5), key


def _interrupt_at(monkeypatch: pytest.MonkeyPatch, step: int, number: int) -> None:
    """Deliver signal ``number`` to this process once training has finished ``step``."""
    original = loop._evaluate_if_due

    def evaluate_then_signal(session: loop.Session) -> bool:
        improved = original(session)
        if session.state.step == step:
            signal.raise_signal(number)
        return improved

    monkeypatch.setattr(loop, "_evaluate_if_due", evaluate_then_signal)


@pytest.mark.parametrize("number, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_interrupt_saves_checkpoint_and_resume_is_bitwise_identical(
    number: int,
    code: int,
    write_recipe: Callable[..., Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # T5 and adapter dropout on: resuming must restore the RNG as well as the weights.
    sections = {"adapter": {"dropout": 0.1}, "train": {"max_steps": 6}}
    straight = write_recipe(**sections, output_dir=str(tmp_path / "straight"))
    expected = _adapter(train(load_recipe(straight)))

    recipe = load_recipe(write_recipe(**sections, output_dir=str(tmp_path / "stopped")))
    with monkeypatch.context() as patch:
        _interrupt_at(patch, step=3, number=number)
        with pytest.raises(loop.TrainingInterrupted) as stopped:
            train(recipe)
    assert stopped.value.exit_code == code
    run = RunDir(tmp_path / "stopped")
    assert read_run_info(run)["status"] == "interrupted"
    assert latest_checkpoint(run) == run.checkpoint(3)

    resumed = _adapter(train(recipe, resume=True))
    assert read_run_info(run)["status"] == "finished"
    for key in expected:
        assert torch.equal(expected[key], resumed[key]), key
    steps = [json.loads(line)["step"] for line in run.metrics.read_text().splitlines()]
    assert steps == sorted(steps)


def test_fresh_run_refuses_an_existing_run(write_recipe: Callable[..., Path]) -> None:
    recipe = load_recipe(write_recipe(train={"max_steps": 1}))
    train(recipe)
    with pytest.raises(UserError, match="already holds a run") as error:
        train(recipe)
    # The run finished: the hint is a command that works (resuming it is refused below).
    assert any(line.startswith("score it with: more eval") for line in error.value.details)
    assert not any("--resume" in line for line in error.value.details)
    with pytest.raises(UserError, match="already finished"):
        train(recipe, resume=True)


def test_resume_refuses_a_changed_recipe(write_recipe: Callable[..., Path]) -> None:
    first = load_recipe(write_recipe(train={"max_steps": 2, "save_every": 1}))
    with pytest.raises(loop.TrainingInterrupted), pytest.MonkeyPatch.context() as patch:
        _interrupt_at(patch, step=1, number=signal.SIGINT)
        train(first)
    changed = load_recipe(write_recipe(train={"max_steps": 2, "save_every": 1, "lr": 0.5}))
    with pytest.raises(UserError, match="train.lr"):
        train(changed, resume=True)


def test_evaluation_keeps_best_and_early_stops(write_recipe: Callable[..., Path]) -> None:
    train_cfg = {"max_steps": 40, "eval_every": 2, "early_stopping_patience": 1,
                 "keep_checkpoints": 1, "lr": 1e-5}  # fmt: skip
    run = RunDir(train(load_recipe(write_recipe("encoder", train=train_cfg))))
    info = read_run_info(run)
    assert info["status"] == "finished" and info["step"] == 4  # patience 1: 2 evaluations
    assert [step for step, _ in list_checkpoints(run)] == [info["best_step"]] == [2]
    best = load_file(str(run.checkpoint(2) / "adapter" / "more_adapter.safetensors"))
    final = _adapter(run.root)
    assert all(torch.equal(best[key], final[key]) for key in final)
    evals = [r for r in map(json.loads, run.metrics.read_text().splitlines()) if "eval" in r]
    assert evals and all(r["split"] == "val_select" for r in evals)


def test_nan_loss_stops_with_a_user_error(
    write_recipe: Callable[..., Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    original = loop._forward

    def poisoned(session: loop.Session, batch: dict) -> tuple:
        loss, task_loss, cl_loss = original(session, batch)
        return (loss * float("nan") if session.state.step == 2 else loss), task_loss, cl_loss

    monkeypatch.setattr(loop, "_forward", poisoned)
    recipe = load_recipe(write_recipe(train={"max_steps": 4, "save_every": 1}))
    with pytest.raises(UserError, match="nan") as error:
        train(recipe)
    run = RunDir(recipe.output_dir)
    assert read_run_info(run)["status"] == "failed"
    assert latest_checkpoint(run) == run.checkpoint(2)
    assert "step-2" in error.value.details[0]
