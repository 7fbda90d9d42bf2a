"""Hostile inputs against the CLI, as a user (or a failing disk) would give them.

Every case runs the real entry point (``more_cli.cli.app.main``) and must end with exit code 2,
exactly one ``error:`` line naming the problem, no traceback, and no file changed outside the
one folder the command may write (SHA-256 of every file of the sandbox, the tiny model and the
data, before and after). The cases: damaged run files (truncated, randomised bytes behind an
intact header, deleted, wrong shapes or NaN under matching digests, a missing or garbled
manifest, an adapter from before manifests) against eval / merge / inspect / predict, damaged
checkpoints against ``--checkpoint`` and ``--resume``, bad training data (checked before the
model loads), bad predict input, bad output places and bad recipes. docs/reliability.md lists
the guarantees this suite proves.
"""

from __future__ import annotations

import hashlib
import json
import random
import shutil
import struct
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file, save_file

from more_cli.cli.app import main
from more_cli.integrity import MANIFEST, write_manifest
from more_cli.rundir import RunDir, write_run_info
from tests.helpers.legacy import as_older_format

ADAPTER_FILES = ("more_adapter.safetensors", "more_adapter.json", "heads.safetensors")


@dataclass(frozen=True)
class World:
    """A private sandbox: a finished encoder run (checkpoints step-1 and step-2), a copy of
    its task's data, predict rows, a recipe training on that data, and a plain file."""

    root: Path

    @property
    def run(self) -> Path:
        return self.root / "run"

    @property
    def adapter(self) -> Path:
        return self.run / "adapter"

    def checkpoint(self, step: int) -> Path:
        return self.run / "checkpoints" / f"step-{step}"

    @property
    def data(self) -> Path:
        return self.root / "data" / "sst2"

    @property
    def rows(self) -> Path:
        return self.root / "rows.jsonl"

    @property
    def recipe(self) -> Path:
        return self.root / "recipe.yaml"

    @property
    def new_run(self) -> Path:
        return self.root / "new-run"

    @property
    def a_file(self) -> Path:
        return self.root / "notes.txt"


@dataclass(frozen=True)
class Case:
    """``spoil`` prepares the sandbox, ``argv`` is the command line, the error line must hold
    ``expected``, and only ``own`` (if any) may change."""

    argv: Callable[[World], list[object]]
    expected: Callable[[World], str]
    spoil: Callable[[World], None] = lambda world: None
    own: Callable[[World], Path] | None = None


# =============================================================================================
# Ways to damage a file


def truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: max(1, path.stat().st_size // 3)])


def randomise(path: Path) -> None:
    """Random bytes in place of the content; a safetensors file keeps its header intact."""
    data = path.read_bytes()
    keep = 8 + struct.unpack("<Q", data[:8])[0] if path.suffix == ".safetensors" else 0
    rng = random.Random(path.name)
    path.write_bytes(data[:keep] + bytes(rng.randrange(256) for _ in range(len(data) - keep)))


def delete(path: Path) -> None:
    path.unlink()


def reshaped(path: Path) -> None:
    """Every tensor one row shorter, under a manifest that matches (a writer's bug, not a
    disk's): the shape checks must catch it."""
    tensors = {name: t[:-1].clone() if t.dim() else t for name, t in load_file(path).items()}
    save_file(tensors, path)
    write_manifest(path.parent)


def poisoned(path: Path) -> None:
    """The weights hold NaN, under a manifest that matches."""
    tensors = {
        name: torch.full_like(t, float("nan")) if t.is_floating_point() else t
        for name, t in load_file(path).items()
    }
    save_file(tensors, path)
    write_manifest(path.parent)


def old_format_randomised(path: Path) -> None:
    """An adapter folder written before manifests, whose weights' bytes were then changed."""
    as_older_format(path.parent, 2)
    randomise(path.parent / "adapter_model.safetensors")


# =============================================================================================
# The cases

COMMANDS: dict[str, Callable[[World], list[object]]] = {
    "eval": lambda w: ["eval", w.run],
    "merge": lambda w: ["merge", w.run, "--task", "sst2", "--out", w.root / "exports"],
    "inspect": lambda w: ["inspect", w.run, "--out", w.root / "figures"],
    "predict": lambda w: ["predict", w.run, "-t", "sst2", "-i", w.rows, "-o", w.root / "p.jsonl"],
}


def _on_adapter(name: str, damage: Callable[[Path], None]) -> Callable[[World], None]:
    return lambda world: damage(world.adapter / name)


def _damaged_run_cases() -> dict[str, Case]:
    damages: dict[str, tuple[Callable[[World], None], Callable[[World], str]]] = {}
    for name in ADAPTER_FILES:
        damages[f"truncated-{name}"] = (
            _on_adapter(name, truncate),
            lambda w, name=name: f"{w.adapter / name} is damaged: its SHA-256 differs",
        )
        damages[f"randomised-{name}"] = (
            _on_adapter(name, randomise),
            lambda w, name=name: f"{w.adapter / name} is damaged: its SHA-256 differs",
        )
        damages[f"deleted-{name}"] = (
            _on_adapter(name, delete),
            lambda w, name=name: f"{w.adapter / name} is missing (listed in",
        )
    damages |= {
        "manifest-missing": (
            _on_adapter(MANIFEST, delete),
            lambda w: f"{w.adapter} has no {MANIFEST}",
        ),
        "manifest-garbled": (
            lambda w: (w.adapter / MANIFEST).write_text("not a digest\n"),
            lambda w: f"{w.adapter / MANIFEST} is damaged",
        ),
        "wrong-shapes": (
            _on_adapter("more_adapter.safetensors", reshaped),
            lambda w: "has shape",
        ),
        "wrong-head-shapes": (
            _on_adapter("heads.safetensors", reshaped),
            lambda w: "heads.safetensors: the head of task 'sst2' has shape",
        ),
        "nan-weights": (
            _on_adapter("more_adapter.safetensors", poisoned),
            lambda w: "holds NaN or infinite values",
        ),
        "old-format-randomised": (
            _on_adapter("more_adapter.safetensors", old_format_randomised),
            lambda w: f"{w.adapter / 'adapter_model.safetensors'}: tensor",
        ),
    }
    return {
        f"{command}-{damage}": Case(argv, expected, spoil)
        for command, argv in COMMANDS.items()
        for damage, (spoil, expected) in damages.items()
    }


def _damaged_checkpoint_cases() -> dict[str, Case]:
    cases = {}
    for name in ADAPTER_FILES:
        for how, damage in (("truncated", truncate), ("randomised", randomise)):
            cases[f"eval-checkpoint-{how}-{name}"] = Case(
                lambda w: ["eval", w.run, "--checkpoint", "step-2"],
                lambda w, name=name: f"{w.checkpoint(2) / 'adapter' / name} is damaged",
                lambda w, name=name, damage=damage: damage(w.checkpoint(2) / "adapter" / name),
            )
    cases["eval-checkpoint-unsealed"] = Case(
        lambda w: ["eval", w.run, "--checkpoint", "step-2"],
        lambda w: "has no complete checkpoint 'step-2'",
        lambda w: (w.checkpoint(2) / MANIFEST).unlink(),
    )
    files = [f"adapter/{name}" for name in ADAPTER_FILES] + [
        "trainer/optimizer.safetensors",
        "trainer/rng.safetensors",
        "trainer/state.json",
    ]
    for name in files:
        for how, damage in (("truncated", truncate), ("randomised", randomise)):

            def spoil(w: World, name: str = name, damage: Callable = damage) -> None:
                write_run_info(RunDir(w.run), status="interrupted")
                damage(w.checkpoint(1) / name)
                damage(w.checkpoint(2) / name)

            cases[f"resume-{how}-{name.replace('/', '-')}"] = Case(
                lambda w: ["train", w.run, "--resume"],
                lambda w, name=name: f"cannot resume: step-2 skipped: {w.checkpoint(2) / name}",
                spoil,
            )
    return cases


def _rewrite_row(split: str, number: int, change: dict[str, object]) -> Callable[[World], None]:
    def spoil(world: World) -> None:
        path = world.data / f"{split}.jsonl"
        rows = [json.loads(line) for line in path.read_text().splitlines()]
        rows[number - 1] |= change
        path.write_text("".join(json.dumps(row) + "\n" for row in rows))

    return spoil


def _bad_data_cases() -> dict[str, Case]:
    def train_case(spoil: Callable[[World], None], expected: Callable[[World], str]) -> Case:
        return Case(lambda w: ["train", w.recipe], expected, spoil, own=lambda w: w.new_run)

    cases = {}
    for split in ("train", "validation"):
        where = f"{split}.jsonl"
        for kind, value in (("number", 5), ("list", ["a"]), ("object", {"a": 1}),
                            ("boolean", True)):  # fmt: skip
            cases[f"train-{split}-text-is-{kind}"] = train_case(
                _rewrite_row(split, 2, {"sentence": value}),
                lambda w, where=where, kind=kind: (
                    f"{where}: 1 bad row(s) for task sst2; row 2: column 'sentence' holds a {kind}"
                ),
            )
        cases[f"train-{split}-text-is-null"] = train_case(
            _rewrite_row(split, 3, {"sentence": None}),
            lambda w, where=where: f"{where}: 1 bad row(s) for task sst2; row 3: empty text",
        )
        cases[f"train-{split}-label-unknown"] = train_case(
            _rewrite_row(split, 1, {"label": "maybe"}), lambda w, where=where: f"{where}"
        )
        cases[f"train-{split}-missing"] = train_case(
            lambda w, split=split: (w.data / f"{split}.jsonl").unlink(),
            lambda w: str(w.data),
        )
        cases[f"train-{split}-broken-json-line"] = train_case(
            lambda w, split=split: (w.data / f"{split}.jsonl").open("a").write("{not json\n"),
            lambda w, where=where: where,
        )
        cases[f"train-{split}-empty"] = train_case(
            lambda w, split=split: (w.data / f"{split}.jsonl").write_text(""),
            lambda w, where=where: where,
        )
        cases[f"train-{split}-binary"] = train_case(
            lambda w, split=split: (w.data / f"{split}.jsonl").write_bytes(bytes(range(128, 256))),
            lambda w, where=where: where,
        )
    cases["train-column-missing"] = train_case(
        lambda w: (w.data / "validation.jsonl").write_text('{"text": "x", "label": 1}\n'),
        lambda w: "missing column 'sentence'",
    )
    return cases


def _predict_cases() -> dict[str, Case]:
    def predict_with(rows: str) -> Case:
        def spoil(world: World) -> None:
            world.rows.write_text(rows)

        return Case(
            lambda w: ["predict", w.run, "-t", "sst2", "-i", w.rows, "-o", w.root / "p.jsonl"],
            lambda w: str(w.rows),
            spoil,
        )

    cases = {
        f"predict-text-is-{kind}": predict_with(json.dumps({"sentence": value}) + "\n")
        for kind, value in (("number", 3), ("list", [1]), ("object", {}), ("boolean", False))
    }
    cases["predict-broken-json-line"] = predict_with('{"sentence": "fine"}\n{"sentence": \n')
    cases["predict-row-is-a-list"] = predict_with('["a", "b"]\n')
    cases["predict-no-text-column"] = predict_with('{"review": "fine"}\n')
    cases["predict-binary-input"] = Case(
        lambda w: ["predict", w.run, "-t", "sst2", "-i", w.rows],
        lambda w: "is not UTF-8 text",
        lambda w: w.rows.write_bytes(bytes(range(128, 256))),
    )
    cases["predict-unknown-task"] = Case(
        lambda w: ["predict", w.run, "-t", "nosuch", "-i", w.rows], lambda w: "nosuch"
    )
    cases["predict-output-is-its-input"] = Case(
        lambda w: ["predict", w.run, "-t", "sst2", "-i", w.rows, "-o", w.rows],
        lambda w: "input file",
    )
    cases["predict-output-under-a-file"] = Case(
        lambda w: ["predict", w.run, "-t", "sst2", "-i", w.rows, "-o", w.a_file / "p.jsonl"],
        lambda w: "is a file, not a folder",
    )
    cases["predict-output-is-a-folder"] = Case(
        lambda w: ["predict", w.run, "-t", "sst2", "-i", w.rows, "-o", w.data],
        lambda w: "a folder",
    )
    return cases


def _place_and_selection_cases() -> dict[str, Case]:
    return {
        "train-output-is-a-file": Case(
            lambda w: ["train", w.recipe, "-o", w.a_file], lambda w: "is a file, not a folder"
        ),
        "train-output-under-a-file": Case(
            lambda w: ["train", w.recipe, "-o", w.a_file / "run"], lambda w: "lies under the file"
        ),
        "train-output-unwritable": Case(
            lambda w: ["train", w.recipe, "-o", "/proc/more-hostile-run"],
            lambda w: "cannot be created or written",
        ),
        "train-over-a-finished-run": Case(
            lambda w: ["train", w.recipe, "-o", w.run], lambda w: "already holds a run"
        ),
        "merge-out-is-a-file": Case(
            lambda w: ["merge", w.run, "--task", "sst2", "--out", w.a_file], lambda w: "is a file"
        ),
        "inspect-out-under-a-file": Case(
            lambda w: ["inspect", w.run, "--out", w.a_file / "figures"],
            lambda w: "lies under the file",
        ),
        "eval-empty-task-list": Case(lambda w: ["eval", w.run, "--tasks", ","], lambda w: "tasks"),
        "eval-unknown-task": Case(
            lambda w: ["eval", w.run, "--tasks", "nosuch"], lambda w: "nosuch"
        ),
        "eval-unknown-split": Case(
            lambda w: ["eval", w.run, "--split", "bogus"], lambda w: "bogus"
        ),
        "eval-no-such-checkpoint": Case(
            lambda w: ["eval", w.run, "--checkpoint", "step-99"], lambda w: "step-99"
        ),
        "eval-not-a-run": Case(lambda w: ["eval", w.data], lambda w: "is not a run directory"),
        "merge-unknown-task": Case(
            lambda w: ["merge", w.run, "--task", "nosuch", "--out", w.root / "exports"],
            lambda w: "nosuch",
        ),
        "train-recipe-missing": Case(lambda w: ["train", w.root / "nope.yaml"], lambda w: "nope"),
        "train-recipe-unknown-key": Case(
            lambda w: ["train", w.recipe],
            lambda w: "colour",
            lambda w: w.recipe.write_text(w.recipe.read_text() + "colour: blue\n"),
            own=lambda w: w.new_run,
        ),
        "train-recipe-python-tag": Case(
            lambda w: ["train", w.recipe],
            lambda w: "python",
            lambda w: w.recipe.write_text("model: !!python/object/apply:os.system ['true']\n"),
        ),
    }


CASES = (
    _damaged_run_cases()
    | _damaged_checkpoint_cases()
    | _bad_data_cases()
    | _predict_cases()
    | _place_and_selection_cases()
)


def test_the_suite_is_large_enough() -> None:
    assert len(CASES) >= 100


# =============================================================================================
# The sandbox and the check


@pytest.fixture
def world(
    tmp_path: Path, encoder_run: Path, tiny_model_dir: Callable[[str], Path], glue_data: Path
) -> World:
    world = World(tmp_path / "world")
    shutil.copytree(encoder_run, world.run)
    shutil.copytree(glue_data / "sst2", world.data)
    world.rows.write_text('{"sentence": "the film was good ."}\n')
    world.a_file.write_text("keep me\n")
    recipe = {
        "model": {"name": str(tiny_model_dir("encoder"))},
        "adapter": {"r": 4, "alpha": 8, "dropout": 0.0},
        "tasks": [{"name": "sst2", "source": str(world.data)}],
        "data": {"max_source_length": 32},
        "train": {"warmup_steps": 0, "batch_size": 4, "max_steps": 2, "eval_every": 1},
        "output_dir": str(world.new_run),
    }
    world.recipe.write_text(yaml.safe_dump(recipe, sort_keys=False))
    return world


def _checksums(roots: list[Path], own: Path | None) -> dict[str, str]:
    sums = {}
    for root in roots:
        for path in sorted(root.rglob("*")):
            if path.is_file() and (own is None or not path.is_relative_to(own)):
                sums[str(path)] = hashlib.sha256(path.read_bytes()).hexdigest()
    return sums


@pytest.mark.parametrize("name", list(CASES))
def test_hostile_input_is_one_error_line_and_changes_nothing(
    name: str,
    world: World,
    tiny_model_dir: Callable[[str], Path],
    glue_data: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    case = CASES[name]
    case.spoil(world)
    roots = [world.root, tiny_model_dir("encoder"), glue_data]
    own = case.own(world) if case.own else None
    before = _checksums(roots, own)
    monkeypatch.setattr(sys, "argv", ["more", *map(str, case.argv(world))])
    with pytest.raises(SystemExit) as stopped:
        main()
    captured = capsys.readouterr()
    assert stopped.value.code == 2, captured.err
    assert "Traceback" not in captured.out + captured.err
    [line] = [line for line in captured.err.splitlines() if line.startswith("error: ")]
    assert case.expected(world) in line, line
    assert _checksums(roots, own) == before
    assert not (world.root / "exports").exists() and not (world.root / "p.jsonl").exists()
