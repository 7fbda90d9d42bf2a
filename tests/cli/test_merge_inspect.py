"""End to end through the CLI: train a tiny run, export it, inspect it."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
from typer.testing import CliRunner

from more_cli.cli.app import app

runner = CliRunner()


def _more(*args: object) -> tuple[int, str, str]:
    result = runner.invoke(app, [str(a) for a in args], env={"COLUMNS": "160"})
    return result.exit_code, result.stdout, result.stderr


@pytest.fixture
def trained(write_recipe: Callable[..., Path], run_dir: Path) -> Path:
    """A tiny T5 run trained through the real CLI (4 steps, a checkpoint at step 2)."""
    recipe = write_recipe(train={"max_steps": 4, "save_every": 2})
    code, _, err = _more("train", recipe)
    assert code == 0, err
    return run_dir


def test_merge_then_inspect_a_trained_run(trained: Path) -> None:
    code, out, err = _more("merge", trained, "--task", "rte")
    assert code == 0, err
    assert "verification ok" in out
    assert "rte: writing" in out and "verifying" in out  # progress before the long part
    for kind, name in (("merged", "model.safetensors"), ("peft", "adapter_model.safetensors")):
        assert (trained / "exports" / kind / "rte" / name).is_file()
    assert not (trained / "exports" / "merged" / "sst2").exists()

    code, _, err = _more("merge", trained, "--task", "rte")
    assert code == 2 and err.startswith("error: ") and "already exists" in err
    assert len(err.strip().splitlines()) == 2  # the message and its fix

    out_dir = trained / "other-exports"
    code, out, err = _more(
        "merge", trained, "--all-tasks", "--checkpoint", "step-2", "--out", out_dir,
        "--dtype", "bfloat16", "--no-verify",
    )  # fmt: skip
    assert code == 0, err
    assert sorted(p.name for p in (out_dir / "merged").iterdir()) == ["rte", "sst2"]
    provenance = json.loads((out_dir / "merged" / "sst2" / "more_export.json").read_text())
    assert provenance["adapter"].endswith("checkpoints/step-2/adapter")
    assert Path(provenance["run"]).is_absolute() and Path(provenance["adapter"]).is_absolute()
    assert provenance["dtype"] == "bfloat16"

    figures = trained / "figures"
    code, out, err = _more("inspect", trained, "--out", figures)
    assert code == 0, err
    for title in (
        "chosen rank", "router confidence", "task-embedding", "trainable parameters",
        "Router over training",
    ):  # fmt: skip
        assert title in out
    for name in (
        "rank_heatmap.png",
        "router_confidence.png",
        "task_embeddings.png",
        "router_history.png",
    ):
        assert (figures / name).stat().st_size > 0
    numbers = json.loads((figures / "inspection.json").read_text())
    assert numbers["tasks"] == ["sst2", "rte"]
    assert set(numbers["ranks"]["rte"].values()) <= {1, 2, 3, 4}

    code, out, err = _more("inspect", trained, "--params", "--checkpoint", "step-2")
    assert code == 0, err
    assert "trainable parameters" in out and "chosen rank" not in out
    assert "Router over training" not in out

    # The history of a checkpoint stops at its step (loss records at steps 2 and 4).
    code, out, err = _more("inspect", trained, "--router-history", "--checkpoint", "step-2")
    assert code == 0, err
    rows = [line.split()[1] for line in out.splitlines() if line.startswith("│")]
    assert rows == ["2"] and "trainable parameters" not in out


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ((), "give --task NAME"),
        (("--task", "rte", "--all-tasks"), "give --task NAME"),
        (("--task", "cola"), "unknown task 'cola'"),
        (("--task", "rte", "--nf4-roundtrip"), "only applies to runs trained on a 4-bit"),
        (("--task", "rte", "--checkpoint", "step-99"), "no complete checkpoint 'step-99'"),
        (("--task", "rte", "--max-shard-size", "big"), "is not a size"),
    ],
)
def test_merge_errors_are_one_line(trained: Path, args: tuple[str, ...], message: str) -> None:
    code, _, err = _more("merge", trained, *args)
    assert code == 2, err
    assert err.startswith("error: ") and message in err.splitlines()[0]


def test_commands_need_a_run_directory(tmp_path: Path) -> None:
    for command in ("merge", "inspect"):
        code, _, err = _more(command, tmp_path, "--all-tasks" if command == "merge" else "--params")
        assert code == 2 and "is not a run directory" in err


@pytest.mark.parametrize("command", ["merge", "inspect"])
def test_help_shows_an_example(command: str) -> None:
    code, out, _ = _more(command, "--help")
    assert code == 0 and f"more {command} runs/" in out


def test_a_mosld_run_trains_and_inspects_but_merge_says_why_not(
    write_recipe: Callable[..., Path], run_dir: Path
) -> None:
    recipe = write_recipe(adapter={"kind": "mosld", "num_experts": 2}, train={"max_steps": 3})
    code, out, err = _more("train", recipe)
    assert code == 0, err
    assert "aux" in out  # the load-balancing loss is logged beside the task loss
    code, out, err = _more("merge", run_dir, "--task", "rte")
    assert code == 2 and err.startswith("error: ") and "every token" in err
    assert "Traceback" not in err and not (run_dir / "exports").exists()
    code, out, err = _more("inspect", run_dir)
    assert code == 0, err


def test_a_key_the_kind_does_not_read_stops_before_training(
    write_recipe: Callable[..., Path], run_dir: Path
) -> None:
    recipe = write_recipe(adapter={"kind": "moelora", "fixed_ranks": 2})
    code, _, err = _more("train", recipe)
    assert code == 2 and "fixed_ranks has no effect for kind moelora" in err
    assert "Traceback" not in err and not run_dir.exists()
