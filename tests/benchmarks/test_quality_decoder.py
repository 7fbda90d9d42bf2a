"""The decoder suite's configurations are valid recipes, and its shipped-MoRE row is the
shipped defaults."""

from __future__ import annotations

from benchmarks.quality_decoder import CONFIGS, PRESETS, decoder_recipe
from more_cli.adapters import AdapterConfig
from more_cli.adapters.router import Router


def test_every_config_is_a_valid_decoder_recipe(tmp_path) -> None:
    for config in CONFIGS:
        recipe = decoder_recipe(
            config, 2023, PRESETS["quick"], tmp_path, tmp_path / "model", tmp_path / config
        )
        assert recipe.adapter.kind == CONFIGS[config]["kind"]
        assert recipe.model.family == "decoder"


def test_the_shipped_more_row_trains_the_shipped_defaults(tmp_path) -> None:
    recipe = decoder_recipe(
        "more_start_full_no_rank_scaling_no_cl", 2023, PRESETS["quick"], tmp_path,
        tmp_path / "model", tmp_path / "run",
    )  # fmt: skip
    shipped = AdapterConfig(kind="more", r=recipe.adapter.r, targets=recipe.adapter.targets)
    for key in ("rank_scaling", "cl_weight"):
        assert getattr(recipe.adapter, key) == getattr(shipped, key), key
    for config in (recipe.adapter, shipped):  # every task starts at rank r
        assert bool((Router(config, ["a", "b"], [16, 16]).chosen_ranks() == config.r).all())
