"""Saving and loading adapter state: exact round trip, clear refusals."""

from __future__ import annotations

import json

import pytest
import torch

from more_cli.adapters import AdapterConfig, inject_adapter, load_adapter, save_adapter
from more_cli.adapters.state import CONFIG_FILE, WEIGHTS_FILE
from more_cli.errors import UserError
from tests.adapters.conftest import BUILDERS, model_inputs, output_of, randomize_adapter
from tests.helpers.kinds import KINDS, adapter_config

TASKS = ["alpha", "beta"]


@pytest.mark.parametrize("kind", KINDS)
def test_round_trip_is_exact(tmp_path, kind: str) -> None:
    torch.manual_seed(0)
    model = BUILDERS["t5"]()
    base_state = {k: v.clone() for k, v in model.state_dict().items()}
    config = adapter_config(kind, r=4, num_experts=2, router="frozen_random")
    adapter = inject_adapter(model, config, TASKS)
    randomize_adapter(adapter)
    save_adapter(adapter, tmp_path)
    fresh = BUILDERS["t5"]()
    fresh.load_state_dict(base_state)
    loaded = load_adapter(fresh, tmp_path)
    assert loaded.config == config and loaded.tasks == TASKS
    for key, tensor in adapter.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], tensor), key
    inputs = model_inputs("t5", batch=2)
    with torch.no_grad():
        assert torch.equal(
            output_of(fresh, inputs, task_ids=torch.tensor([0, 1])),
            output_of(model, inputs, task_ids=torch.tensor([0, 1])),
        )


def saved_adapter(tmp_path, family: str = "t5", **config) -> None:
    adapter = inject_adapter(BUILDERS[family](), AdapterConfig(r=4, **config), TASKS)
    save_adapter(adapter, tmp_path)


def test_a_different_architecture_is_refused(tmp_path) -> None:
    saved_adapter(tmp_path)
    with pytest.raises(UserError, match="does not fit this model"):
        load_adapter(BUILDERS["llama"](), tmp_path)


def test_a_different_width_is_refused(tmp_path) -> None:
    saved_adapter(tmp_path, family="bert")
    wider = BUILDERS["bert"]()
    config = wider.config
    config.hidden_size, config.intermediate_size = 64, 128
    from transformers import BertModel

    with pytest.raises(UserError, match="does not fit this model: layer"):
        load_adapter(BertModel(config), tmp_path)


def test_weights_of_another_kind_are_refused(tmp_path) -> None:
    saved_adapter(tmp_path / "lora", kind="lora")
    saved_adapter(tmp_path / "more", kind="more")
    (tmp_path / "more" / WEIGHTS_FILE).write_bytes((tmp_path / "lora" / WEIGHTS_FILE).read_bytes())
    with pytest.raises(UserError, match="does not match this adapter"):
        load_adapter(BUILDERS["t5"](), tmp_path / "more")


def test_truncated_weights_name_the_file(tmp_path) -> None:
    saved_adapter(tmp_path)
    weights = tmp_path / WEIGHTS_FILE
    weights.write_bytes(weights.read_bytes()[:100])
    with pytest.raises(UserError, match=f"{WEIGHTS_FILE} is not a readable safetensors file"):
        load_adapter(BUILDERS["t5"](), tmp_path)


def test_future_format_version_is_refused(tmp_path) -> None:
    saved_adapter(tmp_path)
    description = json.loads((tmp_path / CONFIG_FILE).read_text())
    description["format_version"] = 99
    (tmp_path / CONFIG_FILE).write_text(json.dumps(description))
    with pytest.raises(UserError, match="newer than this more understands"):
        load_adapter(BUILDERS["t5"](), tmp_path)


def test_missing_or_damaged_description(tmp_path) -> None:
    with pytest.raises(UserError, match="not found"):
        load_adapter(BUILDERS["t5"](), tmp_path)
    (tmp_path / CONFIG_FILE).write_text("{not json")
    with pytest.raises(UserError, match="not valid JSON"):
        load_adapter(BUILDERS["t5"](), tmp_path)


def test_saving_leaves_no_temporary_files(tmp_path) -> None:
    saved_adapter(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == [CONFIG_FILE, WEIGHTS_FILE]
