"""Which accelerate engines ``more train`` accepts, and what it tells DeepSpeed.

The engines themselves run end to end in ``tests/test_distributed.py``.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml
from accelerate.utils import DistributedType
from typer.testing import CliRunner

from more_cli import engines
from more_cli.cli.app import app
from more_cli.errors import UserError
from more_cli.recipe_io import load_recipe


def _accelerator(engine: str, fsdp_version: int = 2, zero_stage: int = 2) -> SimpleNamespace:
    return SimpleNamespace(
        distributed_type=DistributedType[engine],
        num_processes=4,
        state=SimpleNamespace(
            fsdp_plugin=SimpleNamespace(fsdp_version=fsdp_version),
            deepspeed_plugin=SimpleNamespace(zero_stage=zero_stage, deepspeed_config={}),
        ),
    )


@pytest.mark.parametrize(
    "engine, fsdp_version, zero_stage, four_bit, refusal",
    [
        ("MULTI_GPU", 2, 2, True, None),
        ("FSDP", 2, 2, False, None),
        ("DEEPSPEED", 2, 1, False, None),
        ("DEEPSPEED", 2, 2, False, None),
        ("FSDP", 1, 2, False, "supports FSDP2 only"),
        ("FSDP", 2, 2, True, "4-bit base cannot be trained under FSDP"),
        ("DEEPSPEED", 2, 3, False, "ZeRO stages 1 and 2, not 3"),
        ("DEEPSPEED", 2, 2, True, "4-bit base cannot be trained under DeepSpeed"),
    ],
)
def test_engines_whose_state_cannot_be_saved_are_refused_with_the_fix(
    engine: str, fsdp_version: int, zero_stage: int, four_bit: bool, refusal: str | None,
    write_recipe: Callable[..., Path],
) -> None:  # fmt: skip
    recipe = load_recipe(write_recipe("decoder"), [f"model.load_in_4bit={str(four_bit).lower()}"])
    accelerator = _accelerator(engine, fsdp_version, zero_stage)
    if refusal is None:
        engines.check_engine(accelerator, recipe)
        return
    with pytest.raises(UserError, match=refusal) as caught:
        engines.check_engine(accelerator, recipe)
    assert caught.value.details  # names the fix


def test_the_recipe_sets_deepspeeds_batch_accumulation_and_clipping(
    write_recipe: Callable[..., Path],
) -> None:
    overrides = ["train.batch_size=8", "train.grad_accum=3", "train.max_grad_norm=0.5"]
    recipe = load_recipe(write_recipe("decoder"), overrides)
    accelerator = _accelerator("DEEPSPEED")
    engines.configure(accelerator, recipe)
    assert accelerator.state.deepspeed_plugin.deepspeed_config == {
        "train_micro_batch_size_per_gpu": 8,
        "gradient_accumulation_steps": 3,
        "train_batch_size": 8 * 3 * 4,
        "gradient_clipping": 0.5,
    }
    assert engines.describe(accelerator) == (
        "DeepSpeed ZeRO stage 2: optimizer state split across 4 processes"
    )
    assert engines.describe(_accelerator("MULTI_GPU")) is None


@pytest.mark.parametrize("variable", ["ACCELERATE_USE_FSDP", "ACCELERATE_USE_DEEPSPEED"])
def test_an_engine_accelerate_dropped_for_lack_of_gpus_is_an_error(
    variable: str, write_recipe: Callable[..., Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    # On a CPU-only machine accelerate turns an FSDP / DeepSpeed launch into plain
    # multi-process training without a word.
    monkeypatch.setenv(variable, "true")
    with pytest.raises(UserError, match="runs only on GPUs"):
        engines.check_engine(_accelerator("MULTI_CPU"), load_recipe(write_recipe("decoder")))


ROOT = Path(__file__).resolve().parents[1]
SHIPPED = ROOT / "recipes" / "accelerate"


@pytest.mark.parametrize(
    "config, four_bit, refusal",
    [
        ("fsdp.yaml", False, None),
        ("deepspeed.yaml", False, None),
        ("multi_gpu.yaml", True, None),
        ("fsdp.yaml", True, "4-bit base cannot be trained under FSDP"),
        ({"distributed_type": "FSDP", "fsdp_config": {"fsdp_version": 1}}, False, "FSDP2 only"),
        ({"distributed_type": "FSDP"}, False, "FSDP2 only"),  # accelerate's default is FSDP1
        ({"distributed_type": "DEEPSPEED", "deepspeed_config": {"zero_stage": 3}}, False,
         "ZeRO stages 1 and 2, not 3"),
    ],
)  # fmt: skip
def test_the_accelerate_config_is_checked_before_launching(
    config: str | dict, four_bit: bool, refusal: str | None,
    write_recipe: Callable[..., Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    monkeypatch.setattr(engines, "_has_accelerator", lambda: True)
    if isinstance(config, dict):
        path = tmp_path / "accelerate.yaml"
        path.write_text(yaml.safe_dump(config))
    else:
        path = SHIPPED / config
    recipe = load_recipe(write_recipe("decoder"), [f"model.load_in_4bit={str(four_bit).lower()}"])
    if refusal is None:
        engines.check_launch_config(path, recipe)
        return
    with pytest.raises(UserError, match=refusal):
        engines.check_launch_config(path, recipe)


def test_fsdp_asked_for_without_a_gpu_stops_before_the_launch(
    write_recipe: Callable[..., Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(engines, "_has_accelerator", lambda: False)
    config = SHIPPED / "fsdp.yaml"
    result = CliRunner().invoke(
        app, ["train", str(write_recipe("decoder")), "--accelerate-config", str(config)]
    )
    assert result.exit_code == 2
    assert "runs only on GPUs" in result.stderr and "launching" not in result.stderr


@pytest.mark.parametrize(
    "engine, plain", [("NO", True), ("MULTI_CPU", True), ("MULTI_GPU", True),
                      ("FSDP", False), ("DEEPSPEED", False)],
)  # fmt: skip
def test_only_engines_that_leave_the_parameters_alone_count_as_plain(
    engine: str, plain: bool
) -> None:
    # The training loop asks for the fused AdamW kernel on plain engines only.
    assert engines.plain(_accelerator(engine)) is plain
