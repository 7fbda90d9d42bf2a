"""Property tests: whatever a recipe file or a ``--set`` holds, ``load_recipe`` returns a
``Recipe`` or raises ``UserError`` with one-line messages, never anything else; and every
valid recipe survives ``dump_resolved`` → ``load_recipe`` unchanged."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from more_cli.errors import UserError
from more_cli.recipe import Recipe
from more_cli.recipe_io import dump_resolved, load_recipe
from tests.helpers.kinds import KINDS

FUZZ = settings(deadline=None, suppress_health_check=[HealthCheck.too_slow])

SECTIONS = ["model", "adapter", "tasks", "data", "train", "output_dir"]
KEYS = SECTIONS + [
    *("name", "family", "dtype", "load_in_4bit", "quantization", "quant_type", "revision"),
    *("kind", "r", "alpha", "dropout", "targets", "fixed_ranks", "num_experts", "router"),
    *("source", "data_files", "template", "label_words", "metric", "max_train_samples"),
    *("max_source_length", "sampling", "temperature", "lr", "batch_size", "max_steps", "seed"),
    *("trackers", "epochs", "warmup_steps", "nmae", "tarin", "lrr"),
]
VALID: dict[str, Any] = {
    "model": {"name": "tiny", "family": "encoder"},
    "adapter": {"kind": "more", "r": 8, "router": "frozen_random", "fixed_ranks": {"rte": 2}},
    "tasks": [{"name": "rte"}, {"name": "mrpc", "max_train_samples": 10}],
    "data": {"max_source_length": 64},
    "train": {"lr": 0.001, "max_steps": 10, "trackers": ["tensorboard"]},
    "output_dir": "runs/x",
}
SNIPPETS = [
    "!!python/object:os.system x",
    "!!python/object/apply:os.system [ls]",
    "!!python/name:builtins.print",
    "!!binary aGVsbG8=",
    "!!binary x",
    "!!timestamp x",
    "!!int many",
    "!!float x",
    "!!bool maybe",
    "!!set {a, b}",
    "!!omap [a: 1]",
    "!custom x",
    "2024-13-45",
    "&a [*a]",
    "*undefined",
    "{<<: [1]}",
    ".inf",
    "-.inf",
    ".nan",
    "0x1F",
    "1e999",
    "1.0e999",
    "9" * 5000,
    "~",
    "'unterminated",
    "[1, {a: ]",
    "? [a]\n: b",
    "\t",
    "\x00",
    "\ufeff",
    "---\n---",
    "%YAML 1.1\n---\na: 1",
    "a: 1\na: 2",
]

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.integers(min_value=-(10**40), max_value=10**40),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=20),
    st.sampled_from(["nf4", "more", "rte", "encoder", "linear", "auto", "t5", "", "-1", "1e-4"]),
)
junk = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4),
        st.dictionaries(st.one_of(st.sampled_from(KEYS), st.text(max_size=8)), inner, max_size=4),
    ),
    max_leaves=8,
)
sections = st.one_of(
    junk, st.dictionaries(st.sampled_from(KEYS), junk, max_size=4), st.lists(junk, max_size=3)
)
recipes = st.dictionaries(st.one_of(st.sampled_from(SECTIONS), st.text(max_size=6)), sections)


@st.composite
def mutated_valid(draw: st.DrawFn) -> dict[str, Any]:
    """A valid recipe with a few keys replaced, removed or added, to reach deep checks."""
    data = yaml.safe_load(yaml.safe_dump(VALID))
    for _ in range(draw(st.integers(1, 3))):
        section = draw(st.sampled_from(SECTIONS))
        target = data.get(section)
        if isinstance(target, list) and target:
            target = target[draw(st.integers(0, len(target) - 1))]
        action = draw(st.sampled_from(["set", "delete", "replace"]))
        if action == "replace" or not isinstance(target, dict):
            data[section] = draw(junk)
        elif action == "delete" and target:
            del target[draw(st.sampled_from(sorted(target)))]
        else:
            target[draw(st.sampled_from(KEYS))] = draw(junk)
    return data


key_paths = st.lists(
    st.one_of(st.sampled_from(KEYS), st.integers(-1, 4).map(str), st.text(max_size=5)),
    min_size=0,
    max_size=4,
).map(".".join)
override_strings = st.one_of(
    st.text(max_size=30),
    st.builds(
        lambda key, value: f"{key}={value}",
        key_paths,
        st.one_of(st.text(max_size=20), st.sampled_from(SNIPPETS)),
    ),
    st.builds(lambda value: f"{value}=", key_paths),
)


@pytest.fixture(scope="module")
def recipe_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("fuzz") / "recipe.yaml"


def load_survives(path: Path, content: str | bytes, overrides: Sequence[str] = ()) -> None:
    """Write ``content`` and load it: a Recipe or a clean UserError, nothing else."""
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content, encoding="utf-8")
    try:
        assert isinstance(load_recipe(path, overrides), Recipe)
    except UserError as err:
        assert str(err) and "\n" not in str(err)
        assert all(line and "\n" not in line for line in err.details)


def dump(data: Any) -> str:
    return yaml.safe_dump(data, allow_unicode=True)


@settings(FUZZ, max_examples=400)
@given(data=st.one_of(recipes, mutated_valid()))
def test_malformed_structures(recipe_file: Path, data: dict[str, Any]) -> None:
    load_survives(recipe_file, dump(data))


@settings(FUZZ, max_examples=300)
@given(content=st.binary(max_size=200))
def test_random_bytes(recipe_file: Path, content: bytes) -> None:
    load_survives(recipe_file, content)


@settings(FUZZ, max_examples=300)
@given(
    prefix=st.sampled_from(["", "model: ", "model:\n  name: ", "tasks:\n  - ", dump(VALID)]),
    snippet=st.sampled_from(SNIPPETS),
    noise=st.text(max_size=20),
)
def test_tags_and_yaml_oddities(recipe_file: Path, prefix: str, snippet: str, noise: str) -> None:
    load_survives(recipe_file, prefix + snippet + noise)


@settings(FUZZ, max_examples=10)
@given(depth=st.integers(1, 1200), style=st.sampled_from(["flow", "block"]))
def test_deep_nesting(recipe_file: Path, depth: int, style: str) -> None:
    if style == "flow":
        content = "model: " + "[" * depth + "]" * depth
    else:
        content = "".join(f"{'  ' * level}k{level}:\n" for level in range(min(depth, 400)))
    load_survives(recipe_file, content)


@settings(FUZZ, max_examples=400)
@given(overrides=st.lists(override_strings, max_size=4))
def test_random_overrides(recipe_file: Path, overrides: list[str]) -> None:
    load_survives(recipe_file, dump(VALID), overrides)


names = st.from_regex(r"[a-z0-9][a-z0-9_\-]{0,10}", fullmatch=True)
texts = st.text(max_size=15)


@st.composite
def valid_recipes(draw: st.DrawFn) -> dict[str, Any]:
    """Valid recipes with arbitrary text in every string field."""
    task_names = draw(st.lists(names, min_size=1, max_size=3, unique=True))
    kind = draw(st.sampled_from(KINDS))
    r = draw(st.integers(1, 16)) * (4 if kind == "moelora" else 1)  # moelora: 4 experts
    only_more = {"fixed_ranks": draw(st.none() | st.integers(1, r))} if kind == "more" else {}
    return {
        "model": {"name": draw(texts.filter(bool)), "revision": draw(st.none() | texts)},
        "adapter": {
            "kind": kind,
            "r": r,
            "alpha": draw(st.floats(1e-6, 1e6)),
            "targets": draw(texts | st.lists(texts, max_size=3)),
            **only_more,
        },
        "tasks": [
            {
                "name": name,
                "source": draw(st.none() | texts),
                "data_files": draw(st.none() | st.dictionaries(texts, texts, max_size=2)),
                "label_words": draw(st.none() | st.lists(texts, max_size=3)),
            }
            for name in task_names
        ],
        "train": {"lr": draw(st.floats(1e-9, 1.0)), "seed": draw(st.integers(0, 2**32 - 1))},
        "output_dir": draw(texts),
    }


@settings(FUZZ, max_examples=100)
@given(data=valid_recipes())
def test_resolved_dump_round_trips(recipe_file: Path, data: dict[str, Any]) -> None:
    recipe = Recipe.model_validate(data)
    dump_resolved(recipe, recipe_file)
    assert load_recipe(recipe_file) == recipe
