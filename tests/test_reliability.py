"""Reliability and safety guarantees (docs/reliability.md) not proven elsewhere.

Signals, crashes while writing, damaged and foreign files, hostile recipes and data files,
numerical faults and safe loading. The SIGKILL test with a real process is
``tests/cli/test_kill_resume.py``; docs/reliability.md maps every guarantee to its test.
"""

from __future__ import annotations

import ast
import json
import os
import shutil
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from transformers import AutoModel
from typer.testing import CliRunner

from more_cli import modeling, rundir
from more_cli.adapters import AdapterConfig, inject_adapter, save_adapter
from more_cli.cli.app import app
from more_cli.errors import UserError
from more_cli.integrity import write_manifest
from more_cli.modeling import load_base
from more_cli.recipe import ModelConfig, Recipe, TaskConfig
from more_cli.recipe_io import _StrictLoader, load_recipe
from more_cli.rundir import (
    RunDir,
    atomic_directory,
    atomic_write_json,
    latest_checkpoint,
    list_checkpoints,
    mark_complete,
    prune_checkpoints,
    read_run_info,
    resolve_checkpoint,
    truncate_metrics,
    write_run_info,
)
from more_cli.tasks import get_task
from more_cli.training import checkpoints, loop
from more_cli.training import session as training_session
from more_cli.training.loop import train
from tests.helpers.tiny import tiny_llama
from tests.tasks.rows import write_jsonl

PACKAGE = Path(__file__).resolve().parents[1] / "more_cli"


def _more(*args: object) -> tuple[int, str, str]:
    result = CliRunner().invoke(app, [str(a) for a in args])
    return result.exit_code, result.stdout, result.stderr


def _one_line_error(code: int, err: str) -> str:
    """The ``error: ...`` line of a clean failure (exit 2, no traceback; stderr may also
    hold the progress bars of transformers)."""
    assert code == 2, err
    assert "Traceback" not in err
    [line] = [line for line in err.splitlines() if line.startswith("error: ")]
    return line


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: max(1, path.stat().st_size // 3)])


# =============================================================================================
# The session's finished encoder run (tests/conftest.py), copied per test


@pytest.fixture
def run_copy(encoder_run: Path, tmp_path: Path) -> RunDir:
    """A private copy of ``encoder_run``, marked interrupted so that it can be resumed."""
    run = RunDir(Path(shutil.copytree(encoder_run, tmp_path / "run")))
    write_run_info(run, status="interrupted")
    return run


# =============================================================================================
# SIGINT / SIGTERM through the CLI


def test_sigterm_saves_a_checkpoint_and_says_how_to_resume(
    write_recipe: Callable[..., Path], run_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    original = loop._evaluate_if_due

    def evaluate_then_signal(session: loop.Session) -> bool:
        if session.state.step == 2:
            signal.raise_signal(signal.SIGTERM)
        return original(session)

    recipe = write_recipe(train={"max_steps": 4})  # no save_every: the signal alone saves
    with monkeypatch.context() as patch:
        patch.setattr(loop, "_evaluate_if_due", evaluate_then_signal)
        code, out, err = _more("train", recipe)
    assert code == 143, err
    assert "interrupted at step 2; checkpoint saved." in out
    assert f"resume with: more train {run_dir} --resume" in out
    run = RunDir(run_dir)
    assert read_run_info(run)["status"] == "interrupted"
    assert [step for step, _ in list_checkpoints(run)] == [2]
    code, out, err = _more("train", run_dir, "--resume")
    assert code == 0, err
    assert read_run_info(run)["status"] == "finished"


# =============================================================================================
# Atomic writes: a crash while writing never leaves something that loads as valid


def test_crash_while_writing_a_checkpoint_keeps_the_previous_one(
    write_recipe: Callable[..., Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    original = checkpoints._write_trainer_state

    def disk_full_at_step_2(session: loop.Session, directory: Path, *state: object) -> None:
        if session.state.step == 2:
            directory.mkdir()
            (directory / "optimizer.safetensors").write_bytes(b"\0" * 10)
            raise OSError(28, "No space left on device")
        original(session, directory, *state)

    recipe = load_recipe(write_recipe(train={"max_steps": 3, "save_every": 1}))
    with monkeypatch.context() as patch:
        patch.setattr(checkpoints, "_write_trainer_state", disk_full_at_step_2)
        with pytest.raises(OSError, match="No space left"):
            train(recipe)
    run = RunDir(recipe.output_dir)
    assert read_run_info(run)["status"] == "failed"
    assert latest_checkpoint(run) == run.checkpoint(1)
    assert sorted(p.name for p in run.checkpoints.iterdir()) == ["step-1"]  # no half step-2
    train(recipe, resume=True)
    assert read_run_info(run)["status"] == "finished"


def test_leftovers_of_a_killed_write_are_never_loaded(tmp_path: Path) -> None:
    run = RunDir(tmp_path)
    good = run.checkpoint(2)
    good.mkdir(parents=True)
    mark_complete(good)
    # Killed after COMPLETE was written but before the rename: still a temporary name.
    unrenamed = run.checkpoints / ".tmp-step-4-x1y2"
    unrenamed.mkdir()
    mark_complete(unrenamed)
    # Killed while writing run.json: the half file has a temporary name.
    atomic_write_json(run.info, {"format_version": 1, "status": "running", "step": 2})
    (run.root / ".run.json.abc.tmp").write_text('{"format_version": 1, "sta')
    assert latest_checkpoint(run) == good
    assert read_run_info(run)["step"] == 2
    with pytest.raises(UserError, match="no complete checkpoint 'step-4'"):
        resolve_checkpoint(run, "step-4")
    prune_checkpoints(run, keep_last=1, best_step=None)
    assert sorted(p.name for p in run.checkpoints.iterdir()) == ["step-2"]


def test_crash_between_the_two_renames_restores_the_old_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    final = tmp_path / "adapter"
    with atomic_directory(final) as directory:
        (directory / "weights").write_text("old")
    real_replace, failed = os.replace, []

    def fail_second_rename(source: Any, target: Any) -> None:
        if Path(target) == final and not failed:
            failed.append(target)
            raise OSError("crash between the renames")
        real_replace(source, target)

    monkeypatch.setattr(rundir.os, "replace", fail_second_rename)
    with pytest.raises(OSError, match="between the renames"), atomic_directory(final) as directory:
        (directory / "weights").write_text("new")
    monkeypatch.undo()
    assert (final / "weights").read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["adapter"]


def test_a_line_cut_short_in_metrics_is_dropped_on_resume(tmp_path: Path) -> None:
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 1, "loss": 1.0}\n{"step": 2, "loss": 0.9}\n{"step": 3, "lo')
    truncate_metrics(path, after_step=2)
    assert [json.loads(line)["step"] for line in path.read_text().splitlines()] == [1, 2]


# =============================================================================================
# Damaged or foreign files: a clear error naming the file


# (Damaged adapter files against eval / merge / inspect / predict, and checkpoints that are
# all damaged: tests/cli/test_hostile_inputs.py.)


@pytest.mark.parametrize(
    "name",
    [
        "adapter/more_adapter.safetensors",
        "adapter/heads.safetensors",
        "trainer/optimizer.safetensors",
        "trainer/rng.safetensors",
        "trainer/state.json",
    ],
)
def test_resume_passes_over_a_damaged_checkpoint_to_the_newest_intact_one(
    run_copy: RunDir, name: str
) -> None:
    damaged = run_copy.checkpoint(2) / name
    _truncate(damaged)
    code, out, err = _more("train", run_copy.root, "--resume")
    assert code == 0, err
    assert f"step-2 skipped: {damaged} is damaged" in out
    assert "from step-1" in out
    assert read_run_info(run_copy)["status"] == "finished"
    # The damaged step-2 was written again by the resumed run, so it is intact now.
    assert rundir.checkpoint_problem(run_copy.checkpoint(2)) is None


@pytest.mark.parametrize("name", ["run.json", "checkpoints/step-2/trainer/state.json"])
def test_a_future_format_version_is_refused(run_copy: RunDir, name: str) -> None:
    path = run_copy.root / name
    path.write_text(json.dumps({**json.loads(path.read_text()), "format_version": 99}))
    if name.startswith("checkpoints/"):
        write_manifest(run_copy.checkpoint(2))  # written so by a newer more, not damaged
    code, _, err = _more("train", run_copy.root, "--resume")
    line = _one_line_error(code, err)
    assert f"{path} has format version 99" in line and "upgrade more" in line


def _foreign_adapter(run: RunDir, kind: str) -> Any:
    """An adapter of ``kind`` for the run's tasks: lora on the same base, or MoRE on LLaMA."""
    recipe = load_recipe(run.recipe)
    if kind == "lora":
        host = AutoModel.from_pretrained(recipe.model.name)
        return inject_adapter(host, AdapterConfig(kind="lora", r=4), recipe.task_names)
    return inject_adapter(tiny_llama(), recipe.adapter, recipe.task_names)


@pytest.mark.parametrize(
    ("kind", "problem"),
    [("lora", "describes a lora adapter"), ("another-model", "does not match this adapter")],
)
def test_resume_refuses_a_checkpoint_of_another_adapter_or_model(
    run_copy: RunDir, kind: str, problem: str
) -> None:
    folder = run_copy.checkpoint(2) / "adapter"
    save_adapter(_foreign_adapter(run_copy, kind), folder)
    write_manifest(run_copy.checkpoint(2))  # well written, just not this run's
    code, _, err = _more("train", run_copy.root, "--resume")
    line = _one_line_error(code, err)
    assert str(folder) in line and problem in line


def test_a_damaged_base_model_is_a_user_error(
    tiny_model_dir: Callable[[str], Path], tmp_path: Path
) -> None:
    base = Path(shutil.copytree(tiny_model_dir("seq2seq"), tmp_path / "t5"))
    _truncate(base / "model.safetensors")
    with pytest.raises(UserError, match=f"cannot load model '{base}'"):
        load_base(ModelConfig(name=str(base)))


# =============================================================================================
# Bad recipes: hostile values at every key


def _key_paths(data: Any, prefix: tuple = ()) -> list[tuple]:
    """Every key path (sections and leaves) of a resolved recipe."""
    paths = [prefix] if prefix else []
    if isinstance(data, dict):
        for key, value in data.items():
            paths += _key_paths(value, (*prefix, key))
    elif isinstance(data, list):
        for index, value in enumerate(data):
            paths += _key_paths(value, (*prefix, index))
    return paths


RESOLVED = Recipe.model_validate(
    {
        "model": {"name": "tiny"},
        "adapter": {"fixed_ranks": {"rte": 2}},
        "tasks": [
            {"name": "rte"},
            {"name": "mine", "data_files": {"train": "t.jsonl"}, "label_words": ["no", "yes"]},
        ],
    }
).model_dump(mode="json")
KEY_PATHS = _key_paths(RESOLVED)
SAFE_DUMPER = getattr(yaml, "CSafeDumper", yaml.SafeDumper)  # libyaml when built with it
HOSTILE = st.one_of(
    st.sampled_from(
        [
            -1,
            0,
            -(2**63),
            2**64,
            10**30,
            1e308,
            -1e308,
            1e-320,
            float("inf"),
            float("nan"),
            "",
            " ",
            "\x00",
            "💥" * 50,
            "9" * 4000,
            "../../etc/passwd",
            "/abs",
            "a/b",
            "!!python/object/apply:os.system [id]",
            "${HOME}",
            b"\xff\xfe\x00",
            True,
            None,
            [],
            {},
            [[]],
            {"x": {"y": {"z": 1}}},
            ["more", 1, None],
            3.5,
            "1e-4",
            "yes",
        ]
    ),
    st.integers(),
    st.floats(),
    st.text(max_size=12),
)


def _container(data: Any, path: tuple) -> dict | list | None:
    """The dict or list at ``path`` in ``data``, or None where earlier edits removed it."""
    for part in path:
        try:
            data = data[part]
        except (KeyError, IndexError, TypeError):
            return None
    return data if isinstance(data, dict | list) else None


@st.composite
def hostile_recipes(draw: st.DrawFn) -> dict[str, Any]:
    """The resolved recipe with 1-3 keys (sections or values) replaced by a hostile value,
    removed, or joined by an unknown key."""
    data = json.loads(json.dumps(RESOLVED))
    for path in draw(st.lists(st.sampled_from(KEY_PATHS), min_size=1, max_size=3)):
        parent, key = _container(data, path[:-1]), path[-1]
        if parent is None or (
            isinstance(parent, list) and not (isinstance(key, int) and key < len(parent))
        ):
            continue
        action = draw(st.sampled_from(["replace", "delete", "unknown"]))
        if isinstance(parent, list) or action == "replace":
            parent[key] = draw(HOSTILE)
        elif action == "delete":
            parent.pop(key, None)
        else:
            parent[f"{key}_"] = draw(HOSTILE)
    return data


@pytest.fixture(scope="module")
def recipe_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("hostile") / "recipe.yaml"


@settings(deadline=None, max_examples=500, suppress_health_check=[HealthCheck.too_slow])
@given(data=hostile_recipes())
def test_hostile_values_at_every_key_end_in_a_clean_error(
    recipe_file: Path, data: dict[str, Any]
) -> None:
    recipe_file.write_text(yaml.dump(data, Dumper=SAFE_DUMPER, allow_unicode=True), "utf-8")
    try:
        assert isinstance(load_recipe(recipe_file), Recipe)
    except UserError as error:
        assert str(error) and "\n" not in str(error)
        assert all(line and "\n" not in line for line in error.details)


def test_a_python_tag_in_a_recipe_is_never_run(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(f"model: !!python/object/apply:os.mkdir [{str(marker)!r}]\ntasks: []\n")
    with pytest.raises(UserError, match="remove the tag"):
        load_recipe(recipe)
    assert not marker.exists()


# =============================================================================================
# Bad data files


@pytest.mark.parametrize(
    ("name", "content", "problem"),
    [
        ("train.jsonl", b'{"sentence1": "caf\xe9"}\n', "is not UTF-8 text"),
        ("train.csv", b"sentence1,sentence2,label\ncaf\xe9,b,0\n", "is not UTF-8 text"),
        ("train.parquet", b"PAR1 not really parquet", "cannot be read as parquet"),
        ("train.csv", b'sentence1,sentence2,label\n"' + b"a" * 200_000 + b'",b,0\n', "as csv"),
    ],
    ids=["jsonl-not-utf8", "csv-not-utf8", "parquet-damaged", "csv-field-too-large"],
)
def test_unreadable_data_files_name_the_file(
    tmp_path: Path, name: str, content: bytes, problem: str
) -> None:
    (tmp_path / name).write_bytes(content)
    with pytest.raises(UserError, match=problem) as error:
        get_task(TaskConfig(name="rte", source=str(tmp_path))).load_split("train")
    assert str(error.value).startswith(str(tmp_path / name))


def test_a_nan_class_label_names_the_row(tmp_path: Path) -> None:
    good = {"sentence1": "a", "sentence2": "b", "label": 1}
    write_jsonl(tmp_path / "train.jsonl", [good, {**good, "label": float("nan")}])
    with pytest.raises(UserError, match="row 2: label nan is outside the label set"):
        get_task(TaskConfig(name="rte", source=str(tmp_path))).load_split("train")


# =============================================================================================
# Numerical faults


def test_an_infinite_loss_stops_and_keeps_the_last_good_checkpoint(
    write_recipe: Callable[..., Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    original = loop._forward

    def overflow_at_step_2(session: loop.Session, batch: dict) -> tuple:
        loss, task_loss, cl_loss = original(session, batch)
        return (loss + float("inf") if session.state.step == 1 else loss), task_loss, cl_loss

    monkeypatch.setattr(loop, "_forward", overflow_at_step_2)
    recipe = load_recipe(write_recipe(train={"max_steps": 3, "save_every": 1}))
    with pytest.raises(UserError, match="the loss became inf at step 2") as error:
        train(recipe)
    run = RunDir(recipe.output_dir)
    assert latest_checkpoint(run) == run.checkpoint(1)
    assert str(run.checkpoint(1)) in error.value.details[0]


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only refusal")
def test_fp16_without_a_gpu_is_refused_before_loading(
    write_recipe: Callable[..., Path], run_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def must_not_load(*args: object, **kwargs: object) -> None:
        raise AssertionError("the base model was loaded before the precision check")

    monkeypatch.setattr(training_session, "load_base", must_not_load)
    code, _, err = _more("train", write_recipe(train={"precision": "fp16"}))
    assert "train.precision fp16 needs a CUDA GPU" in _one_line_error(code, err)
    assert not run_dir.exists()


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="fp16 mixed precision needs CUDA")
def test_fp16_uses_the_accelerate_grad_scaler_and_checkpoints_it(
    write_recipe: Callable[..., Path],
) -> None:
    recipe = load_recipe(
        write_recipe("decoder", train={"precision": "fp16", "max_steps": 3, "save_every": 1})
    )
    run = RunDir(train(recipe))
    assert read_run_info(run)["status"] == "finished"
    state = json.loads((run.checkpoint(3) / "trainer" / "state.json").read_text())
    assert state["grad_scaler"]["scale"] > 0


# =============================================================================================
# Safe loading


def _calls(tree: ast.AST) -> list[tuple[str, ast.Call]]:
    """``(dotted name, call)`` of every call in ``tree``: ``torch.load``, ``yaml.load``, ..."""
    return [(ast.unparse(n.func), n) for n in ast.walk(tree) if isinstance(n, ast.Call)]


def _keyword(call: ast.Call, name: str) -> str | None:
    return next((ast.unparse(k.value) for k in call.keywords if k.arg == name), None)


UNPICKLING_MODULES = {"pickle", "dill", "joblib", "cloudpickle", "shelve", "marshal"}
FORBIDDEN_CALLS = {"yaml.unsafe_load", "yaml.full_load", "yaml.load_all", "eval", "exec"}


def test_the_package_never_unpickles_or_loads_yaml_unsafely() -> None:
    problems = []
    for path in sorted(PACKAGE.rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        where = path.relative_to(PACKAGE.parent)
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                if {alias.name.split(".")[0] for alias in node.names} & UNPICKLING_MODULES:
                    problems.append(f"{where}:{node.lineno}: imports an unpickling module")
            elif (
                isinstance(node, ast.ImportFrom)
                and node.module in UNPICKLING_MODULES
                # The error type alone is allowed: it reports a pickle that torch refused.
                and {alias.name for alias in node.names} != {"UnpicklingError"}
            ):
                problems.append(f"{where}:{node.lineno}: imports from {node.module}")
        for name, call in _calls(tree):
            line = f"{where}:{call.lineno}: {name}"
            if name == "torch.load" and _keyword(call, "weights_only") != "True":
                problems.append(f"{line} without weights_only=True")
            if name == "yaml.load" and _keyword(call, "Loader") != "_StrictLoader":
                problems.append(f"{line} without the safe loader")
            if name in FORBIDDEN_CALLS:
                problems.append(line)
            if _keyword(call, "trust_remote_code") == "True":
                problems.append(f"{line} with trust_remote_code=True")
    assert not problems, problems
    assert issubclass(_StrictLoader, yaml.SafeLoader)


@pytest.mark.parametrize("trust", [False, True])
def test_trust_remote_code_only_when_the_recipe_sets_it(
    trust: bool, tiny_model_dir: Callable[[str], Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    seen = []
    original = modeling._load_or_explain

    def spy(name: str, loader: Any, path: str, **kwargs: Any) -> Any:
        seen.append(kwargs["trust_remote_code"])
        return original(name, loader, path, **kwargs)

    monkeypatch.setattr(modeling, "_load_or_explain", spy)
    load_base(ModelConfig(name=str(tiny_model_dir("seq2seq")), trust_remote_code=trust))
    assert seen == [trust] * 3  # config, tokenizer, model
    assert ModelConfig(name="x").trust_remote_code is False


class _Payload:
    """Unpickling this would create a folder: proof that code ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return os.mkdir, (str(self.marker),)


def test_pickled_base_weights_are_never_executed(
    tiny_model_dir: Callable[[str], Path], tmp_path: Path
) -> None:
    base = Path(shutil.copytree(tiny_model_dir("seq2seq"), tmp_path / "t5"))
    (base / "model.safetensors").unlink()
    marker = tmp_path / "code-ran"
    torch.save({"shared.weight": _Payload(marker)}, base / "pytorch_model.bin")
    with pytest.raises(UserError, match="is not unpickled"):
        load_base(ModelConfig(name=str(base)))
    assert not marker.exists()


@pytest.mark.parametrize(
    "name", ["../evil", "..", "a/b", "/etc", "rte/../../x", ".hidden", "a\\b", "Rte", "", "a b"]
)
def test_task_names_that_could_become_paths_are_refused(tmp_path: Path, name: str) -> None:
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump({"model": {"name": "x"}, "tasks": [{"name": name}]}))
    with pytest.raises(UserError, match="it becomes a folder name"):
        load_recipe(recipe)


def test_checkpoint_names_cannot_leave_the_checkpoints_folder(tmp_path: Path) -> None:
    run = RunDir(tmp_path / "run")
    run.checkpoint(1).mkdir(parents=True)
    outside = tmp_path / "outside"
    outside.mkdir()
    mark_complete(outside)
    for name in ("step-1/../../../outside", "../../outside", "1/../../../outside"):
        with pytest.raises(UserError, match="no complete checkpoint"):
            resolve_checkpoint(run, name)
