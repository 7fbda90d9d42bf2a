"""Shared fixtures: offline hub, tiny saved models and a tiny-recipe writer.

End-to-end tests point recipes at tiny random models saved to a temporary folder (with the
word-level test tokenizer) and at a few dozen rows of GLUE-layout jsonl data, so a full
`more train` runs in seconds.
"""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"

import json  # noqa: E402
import random  # noqa: E402
from collections.abc import Callable  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402
import yaml  # noqa: E402

from tests.helpers.tiny import tiny_bert, tiny_gpt2, tiny_llama, tiny_t5, tiny_tokenizer  # noqa: E402

# Tiny models on shared cores: one thread is many times faster than several contending.
torch.set_num_threads(1)

TINY_MODELS = {"seq2seq": tiny_t5, "decoder": tiny_llama, "encoder": tiny_bert, "gpt2": tiny_gpt2}
POSITIVE, NEGATIVE = ["good", "great", "wonderful"], ["bad", "awful", "dull"]
SUBJECTS = ["movie", "film", "story", "plot"]


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], Path]:
    """``tiny_model_dir(kind)`` → a folder holding a tiny saved model + tokenizer.

    ``kind`` is seq2seq (T5), decoder (LLaMA), encoder (BERT) or gpt2. Saved once a session.
    """
    saved: dict[str, Path] = {}

    def get(kind: str) -> Path:
        if kind not in saved:
            directory = tmp_path_factory.mktemp(f"tiny-{kind}")
            TINY_MODELS[kind]().save_pretrained(directory)
            tiny_tokenizer(add_eos=kind == "seq2seq").save_pretrained(directory)
            saved[kind] = directory
        return saved[kind]

    return get


def _sst2_rows(rng: random.Random, count: int) -> list[dict[str, Any]]:
    rows = []
    for _ in range(count):
        label = rng.randint(0, 1)
        word = rng.choice(POSITIVE if label else NEGATIVE)
        rows.append({"sentence": f"the {rng.choice(SUBJECTS)} was {word} .", "label": label})
    return rows


def _rte_rows(rng: random.Random, count: int) -> list[dict[str, Any]]:
    rows = []
    for _ in range(count):
        subject, label = rng.choice(SUBJECTS), rng.randint(0, 1)
        other = subject if label == 0 else rng.choice([s for s in SUBJECTS if s != subject])
        rows.append(
            {"sentence1": f"the {subject} was good .", "sentence2": f"the {other} was good .",
             "label": label}
        )  # fmt: skip
    return rows


@pytest.fixture(scope="session")
def glue_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``<root>/{sst2,rte}/{train,validation}.jsonl`` in the GLUE column layout."""
    root = tmp_path_factory.mktemp("glue")
    rng = random.Random(0)
    for task, make in (("sst2", _sst2_rows), ("rte", _rte_rows)):
        (root / task).mkdir()
        for split, count in (("train", 32), ("validation", 16)):
            lines = "".join(json.dumps(row) + "\n" for row in make(rng, count))
            (root / task / f"{split}.jsonl").write_text(lines)
    return root


def _merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


@pytest.fixture
def write_recipe(
    tmp_path: Path, tiny_model_dir: Callable[[str], Path], glue_data: Path
) -> Callable[..., Path]:
    """``write_recipe(kind="seq2seq", tasks=("sst2", "rte"), **sections)`` → recipe path.

    The recipe trains a rank-4 MoRE adapter for 6 steps on the tiny jsonl data of ``tasks``
    into ``<tmp>/run``; keyword sections are deep-merged over it (``train={"lr": 0.1}``).
    """

    def write(
        kind: str = "seq2seq", tasks: tuple[str, ...] = ("sst2", "rte"), **sections: Any
    ) -> Path:
        recipe = {
            "model": {"name": str(tiny_model_dir(kind))},
            "adapter": {"r": 4, "alpha": 8, "dropout": 0.0},
            "tasks": [{"name": name, "source": str(glue_data / name)} for name in tasks],
            "data": {"max_source_length": 32, "max_target_length": 4},
            "train": {
                "lr": 0.01,
                "warmup_steps": 0,
                "batch_size": 4,
                "max_steps": 6,
                "log_every": 2,
                "seed": 0,
            },  # fmt: skip
            "output_dir": str(tmp_path / "run"),
        }
        path = tmp_path / "recipe.yaml"
        path.write_text(yaml.safe_dump(_merge(recipe, sections), sort_keys=False))
        return path

    return write


@pytest.fixture(scope="session")
def encoder_run(
    tmp_path_factory: pytest.TempPathFactory,
    tiny_model_dir: Callable[[str], Path],
    glue_data: Path,
) -> Path:
    """A finished encoder run (adapter + task heads, checkpoints step-1 and step-2), trained
    once a session: tests copy it before changing anything."""
    from more_cli.recipe import Recipe
    from more_cli.training.loop import train

    root = tmp_path_factory.mktemp("encoder-run")
    recipe = Recipe.model_validate(
        {
            "model": {"name": str(tiny_model_dir("encoder"))},
            "adapter": {"r": 4, "alpha": 8, "dropout": 0.0},
            "tasks": [{"name": "sst2", "source": str(glue_data / "sst2")}],
            "data": {"max_source_length": 32},
            "train": {"warmup_steps": 0, "batch_size": 4, "max_steps": 2, "save_every": 1},
            "output_dir": str(root / "run"),
        }
    )
    return train(recipe)


@pytest.fixture
def run_dir(tmp_path: Path) -> Path:
    """Where ``write_recipe`` recipes put their run."""
    return tmp_path / "run"
