"""The session reads and checks every split the run will use before the model loads."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from more_cli.errors import UserError
from more_cli.recipe_io import load_recipe
from more_cli.training import session as training_session
from more_cli.training.loop import train


def test_bad_validation_rows_and_missing_tasks_stop_before_the_model_loads(
    write_recipe: Callable[..., Path], glue_data: Path, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    data = tmp_path / "glue"
    shutil.copytree(glue_data, data)
    lines = (data / "rte" / "validation.jsonl").read_text().splitlines()
    lines[3] = "{not json"
    (data / "rte" / "validation.jsonl").write_text("\n".join(lines) + "\n")
    (data / "sst2" / "validation.jsonl").unlink()
    recipe = load_recipe(write_recipe(train={"max_steps": 2, "save_every": 10}))
    tasks = [task.model_copy(update={"source": str(data / task.name)}) for task in recipe.tasks] + [
        recipe.tasks[0].model_copy(update={"name": "qnli", "source": "no/such/folder"})
    ]
    recipe = recipe.model_copy(update={"tasks": tasks})

    def must_not_load(*args: object, **kwargs: object) -> None:
        raise AssertionError("the model loaded before the data was checked")

    monkeypatch.setattr(training_session, "load_base", must_not_load)
    with pytest.raises(UserError, match="3 task\\(s\\) cannot be read") as error:
        train(recipe)
    sst2, rte, qnli = error.value.details
    assert sst2.startswith("no validation file in") and sst2.split(":")[0].endswith("sst2")
    assert "rte/validation.jsonl, line 4: invalid JSON" in rte
    resolved = Path("no/such/folder").resolve()
    assert qnli == f"task qnli: source folder not found: no/such/folder (= {resolved})"
    assert not Path(recipe.output_dir).exists()


def _optimizer_for(adapter_fields: dict, fused: bool = False):
    from more_cli.adapters import AdapterConfig, inject_adapter
    from more_cli.recipe import Recipe
    from tests.helpers.tiny import tiny_t5

    model = tiny_t5()
    config = AdapterConfig(kind="more", r=4, **adapter_fields)
    adapter = inject_adapter(model, config, ["demo_topic"])
    recipe = Recipe.model_validate(
        {
            "model": {"name": "t5-small"},
            "adapter": config.model_dump(),
            "tasks": [{"name": "demo_topic"}],
            "train": {"lr": 1e-3, "weight_decay": 0.01},
        }
    )
    optimizer = training_session._make_optimizer(model, recipe, adapter.router, fused=fused)
    return optimizer, adapter.router


def test_router_trains_at_its_scaled_learning_rate() -> None:
    optimizer, router = _optimizer_for({"router_lr_scale": 0.1})
    router_ids = {id(p) for p in router.parameters()}
    for group in optimizer.param_groups:
        ids = {id(p) for p in group["params"]}
        assert ids <= router_ids if group["lr"] == pytest.approx(1e-4) else not ids & router_ids
    scaled = {id(p) for g in optimizer.param_groups if g["lr"] < 1e-3 for p in g["params"]}
    assert scaled == router_ids
    # The weight-decay rule is the same inside the router: gate matrices decay, tables not.
    decayed = {id(p) for g in optimizer.param_groups if g["weight_decay"] for p in g["params"]}
    assert decayed & router_ids == {id(group.gate_weight) for group in router.groups}


def test_router_scale_one_keeps_the_two_groups_of_before() -> None:
    optimizer, _ = _optimizer_for({})
    assert [g["weight_decay"] for g in optimizer.param_groups] == [0.01, 0.0]
    assert {g["lr"] for g in optimizer.param_groups} == {1e-3}


def test_the_fused_optimizer_takes_the_default_loops_steps() -> None:
    import torch

    torch.manual_seed(0)
    default, _ = _optimizer_for({"router_lr_scale": 0.1})
    torch.manual_seed(0)
    fused, _ = _optimizer_for({"router_lr_scale": 0.1}, fused=True)
    assert fused.defaults["fused"] and not default.defaults["fused"]
    pairs = [
        (a, b)
        for ga, gb in zip(default.param_groups, fused.param_groups, strict=True)
        for a, b in zip(ga["params"], gb["params"], strict=True)
    ]
    before = [a.detach().clone() for a, _ in pairs]
    generator = torch.Generator().manual_seed(1)
    for _ in range(3):
        for a, b in pairs:
            a.grad = torch.randn(a.shape, generator=generator)
            b.grad = a.grad.clone()
        default.step()
        fused.step()
    assert all(not torch.equal(a, start) for (a, _), start in zip(pairs, before, strict=True))
    for a, b in pairs:
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-7)
