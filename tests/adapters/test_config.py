"""Adapter config: a key the kind does not read is an error, and no dump shows one."""

from __future__ import annotations

import pytest
import torch
import yaml
from pydantic import ValidationError

from more_cli.adapters import AdapterConfig, inject_adapter, load_adapter, save_adapter
from more_cli.adapters.config import KIND_FIELDS, applies_to, with_legacy_defaults
from more_cli.errors import UserError
from more_cli.recipe import Recipe
from more_cli.recipe_io import dump_resolved, load_recipe
from tests.adapters.conftest import BUILDERS, randomize_adapter
from tests.helpers.kinds import KINDS
from tests.helpers.legacy import as_older_format

VALUES = {
    "rank_scaling": False,
    "task_embedding": "shared",
    "task_embedding_dim": 16,
    "router": "frozen_random",
    "fixed_ranks": 2,
    "initial_rank": 4,
    "router_lr_scale": 0.5,
    "cl_weight": 0.2,
    "cl_detach_inputs": True,
    "cl_temperature": 0.1,
    "num_experts": 2,
    "top_k": 1,
    "shared_dropout": 0.2,
    "balance_weight": 0.1,
}
INACTIVE = [
    (kind, field)
    for kind in KINDS
    for field in KIND_FIELDS
    if not applies_to(field, {"kind": kind, "task_embedding": "shared"})
]


def test_every_kind_field_has_a_test_value() -> None:
    assert set(VALUES) == set(KIND_FIELDS)


@pytest.mark.parametrize(("kind", "field"), INACTIVE)
def test_a_key_the_kind_does_not_read_is_an_error(kind: str, field: str) -> None:
    extra = {"task_embedding": "shared"} if kind == "more" and field != "task_embedding" else {}
    with pytest.raises(ValidationError, match=f"{field} has no effect for kind {kind}"):
        AdapterConfig(kind=kind, r=4, **extra, **{field: VALUES[field]})


def test_the_moelora_fixed_ranks_review_case_is_refused() -> None:
    """The review's case: fixed_ranks on moelora trained a dense gate and said nothing."""
    with pytest.raises(ValidationError, match="fixed_ranks has no effect for kind moelora"):
        AdapterConfig(kind="moelora", fixed_ranks=2)


def test_embedding_width_with_per_layer_tables_is_an_error() -> None:
    with pytest.raises(ValidationError, match="task_embedding_dim has no effect with"):
        AdapterConfig(kind="more", task_embedding_dim=32)
    assert AdapterConfig(kind="more", task_embedding="shared", task_embedding_dim=32)


@pytest.mark.parametrize("kind", KINDS)
def test_kind_defaults_are_filled_in_and_only_active_keys_are_dumped(kind: str) -> None:
    config = AdapterConfig(kind=kind)
    dumped = config.model_dump()
    for field, (_, default) in KIND_FIELDS.items():
        active = applies_to(field, dumped | {"kind": kind})
        assert (field in dumped) == active, field
        assert getattr(config, field) == (default if active else None), field
    assert AdapterConfig.model_validate(dumped) == config


def test_the_recipe_error_is_one_line_naming_the_key(tmp_path) -> None:
    path = tmp_path / "recipe.yaml"
    recipe = {"model": {"name": "m"}, "adapter": {"kind": "lora", "cl_weight": 0.1}}
    path.write_text(yaml.safe_dump(recipe | {"tasks": [{"name": "rte"}]}))
    with pytest.raises(UserError) as caught:
        load_recipe(path)
    assert caught.value.details == [
        "adapter: cl_weight has no effect for kind lora; it applies to more only: remove it"
    ]


def test_resolved_recipe_shows_no_inactive_default(tmp_path) -> None:
    recipe = Recipe.model_validate(
        {"model": {"name": "m"}, "adapter": {"kind": "moelora"}, "tasks": [{"name": "rte"}]}
    )
    dump_resolved(recipe, tmp_path / "r.yaml")
    adapter = yaml.safe_load((tmp_path / "r.yaml").read_text())["adapter"]
    assert {"cl_weight", "rank_scaling", "router", "fixed_ranks", "top_k"}.isdisjoint(adapter)
    assert adapter["num_experts"] == 4 and adapter["task_embedding_dim"] == 64
    assert load_recipe(tmp_path / "r.yaml") == recipe


def test_a_run_recipe_from_before_format_2_still_loads(tmp_path) -> None:
    """Older resolved recipes held every key; ``multilora`` then was one LoRA per task."""
    old = {
        "model": {"name": "m"},
        "adapter": {"kind": "multilora", "r": 4, "rank_scaling": True, "cl_weight": 0.1,
                    "num_experts": 4, "fixed_ranks": None},
        "tasks": [{"name": "rte"}],
    }  # fmt: skip
    (tmp_path / "r.yaml").write_text(yaml.safe_dump(old))
    with pytest.raises(UserError):
        load_recipe(tmp_path / "r.yaml")
    assert load_recipe(tmp_path / "r.yaml", resolved=True).adapter == AdapterConfig(
        kind="per_task_lora", r=4
    )


def test_mores_defaults_start_at_full_rank_without_rank_scaling() -> None:
    config = AdapterConfig(kind="more", r=6)
    assert (config.initial_rank, config.start_rank, config.rank_scaling) == ("full", 6, False)
    assert AdapterConfig(kind="more", initial_rank="random").start_rank is None
    assert AdapterConfig(kind="more", initial_rank=3).start_rank == 3
    # The frozen router reproduces the released code: frozen at the random gate's choice.
    assert AdapterConfig(kind="more", router="frozen_random").initial_rank == "random"
    assert AdapterConfig(kind="more", router="frozen_random", initial_rank=2).start_rank == 2
    for wrong in ("half", True, 2.0):  # no silent rank 1 from a YAML `yes`
        with pytest.raises(ValidationError, match="'full' or 'random'"):
            AdapterConfig(kind="more", initial_rank=wrong)


@pytest.mark.parametrize("written", [{"initial_rank": None}, {}])
def test_a_run_recipe_from_before_the_defaults_moved_keeps_its_settings(
    tmp_path, written: dict
) -> None:
    """Until 2026-12-03 a resolved MoRE recipe held initial_rank null (the random gate's
    choice), rank_scaling true and cl_weight 0.1; read through today's defaults it would be
    another run."""
    adapter = {"kind": "more", "r": 4, "rank_scaling": True, "cl_weight": 0.1}
    old = {"model": {"name": "m"}, "adapter": adapter | written, "tasks": [{"name": "rte"}]}
    (tmp_path / "r.yaml").write_text(yaml.safe_dump(old))
    resolved = load_recipe(tmp_path / "r.yaml", resolved=True).adapter
    assert resolved == AdapterConfig(
        kind="more", r=4, initial_rank="random", rank_scaling=True, cl_weight=0.1
    )
    assert load_recipe(tmp_path / "r.yaml").adapter.initial_rank == "full"  # a new recipe
    without_scaling = old | {"adapter": {"kind": "more", "r": 4, "cl_weight": 0.1} | written}
    (tmp_path / "r.yaml").write_text(yaml.safe_dump(without_scaling))
    assert load_recipe(tmp_path / "r.yaml", resolved=True).adapter.rank_scaling is True


def test_a_config_from_before_the_contrastive_loss_went_off_keeps_it() -> None:
    """Benchmark configurations written before the second move (2026-12-03) leave cl_weight
    out, meaning 0.1; what a config names, and other kinds, stay as they are."""
    assert AdapterConfig(kind="more").cl_weight == 0.0
    assert not AdapterConfig(kind="more").contrastive
    first_move = {"kind": "more", "initial_rank": 8, "rank_scaling": False}
    assert with_legacy_defaults(first_move) == first_move | {"cl_weight": 0.1}
    named = first_move | {"cl_weight": 0.0}
    assert with_legacy_defaults(named) == named
    assert with_legacy_defaults({"kind": "lora"}) == {"kind": "lora"}


def format_1(tmp_path, kind: str, config: AdapterConfig) -> None:
    """Rewrite a saved adapter folder as format 1 wrote it: kind as then named, every key."""
    every_key = {field: default for field, (_, default) in KIND_FIELDS.items()}
    as_older_format(tmp_path, 1, every_key | config.model_dump(mode="json") | {"kind": kind})


def test_a_format_1_multilora_adapter_loads_as_per_task_lora(tmp_path) -> None:
    config = AdapterConfig(kind="per_task_lora", r=4)
    adapter = inject_adapter(BUILDERS["t5"](), config, ["a", "b"])
    randomize_adapter(adapter)
    save_adapter(adapter, tmp_path)
    format_1(tmp_path, "multilora", config)
    loaded = load_adapter(BUILDERS["t5"](), tmp_path)
    assert loaded.config == config
    for key, tensor in adapter.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], tensor)


def test_a_format_1_moelora_adapter_is_refused_with_the_reason(tmp_path) -> None:
    config = AdapterConfig(kind="moelora", r=4)
    save_adapter(inject_adapter(BUILDERS["t5"](), config, ["a", "b"]), tmp_path)
    format_1(tmp_path, "moelora", config)
    with pytest.raises(UserError, match="format 1.*rebuilt as its paper defines it"):
        load_adapter(BUILDERS["t5"](), tmp_path)


def test_an_unknown_kind_is_reported_as_such_not_as_an_inactive_key() -> None:
    with pytest.raises(ValidationError, match="Input should be 'more'") as caught:
        AdapterConfig(kind="moe-lora", cl_weight=0.1)
    assert "no effect" not in str(caught.value)


@pytest.mark.parametrize(
    ("ranks", "message"),
    [
        ({"initial_rank": 9}, "initial_rank 9"),
        ({"fixed_ranks": 9}, "fixed_ranks value 9"),
        ({"fixed_ranks": {"a": 2, "b": 0}}, "fixed_ranks value 0"),
    ],
)
def test_a_rank_outside_one_to_r_is_refused_in_the_same_words(ranks: dict, message: str) -> None:
    with pytest.raises(ValidationError, match=f"{message} must be between 1 and r=8; change it"):
        AdapterConfig(kind="more", r=8, **ranks)
