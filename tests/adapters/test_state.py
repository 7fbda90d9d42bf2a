"""Saving and loading adapter state: exact round trip, clear refusals."""

from __future__ import annotations

import json
import shutil
import subprocess

import pytest
import torch

from more_cli.adapters import AdapterConfig, inject_adapter, load_adapter, save_adapter
from more_cli.adapters.state import CONFIG_FILE, WEIGHTS_FILE, check_same_adapter
from more_cli.errors import UserError
from more_cli.integrity import MANIFEST, write_manifest
from tests.adapters.conftest import BUILDERS, model_inputs, output_of, randomize_adapter
from tests.helpers.kinds import KINDS, adapter_config
from tests.helpers.legacy import as_older_format

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
    write_manifest(tmp_path / "more")  # digests that match: the content checks must catch it
    with pytest.raises(UserError, match="does not match this adapter"):
        load_adapter(BUILDERS["t5"](), tmp_path / "more")


def test_truncated_weights_name_the_file(tmp_path) -> None:
    saved_adapter(tmp_path)
    weights = tmp_path / WEIGHTS_FILE
    weights.write_bytes(weights.read_bytes()[:100])
    with pytest.raises(UserError, match=f"{weights} is damaged: its SHA-256 differs"):
        load_adapter(BUILDERS["t5"](), tmp_path)
    write_manifest(tmp_path)
    with pytest.raises(UserError, match=f"{WEIGHTS_FILE} is not a readable safetensors file"):
        load_adapter(BUILDERS["t5"](), tmp_path)


def test_values_that_are_not_finite_are_refused_even_with_matching_digests(tmp_path) -> None:
    adapter = inject_adapter(BUILDERS["t5"](), AdapterConfig(r=4), TASKS)
    with torch.no_grad():
        next(iter(adapter.state_dict().values())).fill_(float("nan"))
    save_adapter(adapter, tmp_path)
    with pytest.raises(UserError, match="holds NaN or infinite values; the file is damaged"):
        load_adapter(BUILDERS["t5"](), tmp_path)


def test_a_missing_or_damaged_manifest_is_refused(tmp_path) -> None:
    saved_adapter(tmp_path)
    manifest = tmp_path / MANIFEST
    text = manifest.read_text()
    manifest.write_text(text.replace("  ", " ", 1) + "garbage\n")
    with pytest.raises(UserError, match=f"{manifest} is damaged"):
        load_adapter(BUILDERS["t5"](), tmp_path)
    manifest.unlink()
    with pytest.raises(UserError, match=f"has no {MANIFEST}: it was not written completely"):
        load_adapter(BUILDERS["t5"](), tmp_path)


def test_a_listed_file_that_is_gone_is_named(tmp_path) -> None:
    saved_adapter(tmp_path)
    (tmp_path / WEIGHTS_FILE).unlink()
    with pytest.raises(UserError, match=f"{tmp_path / WEIGHTS_FILE} is missing"):
        load_adapter(BUILDERS["t5"](), tmp_path)


@pytest.mark.skipif(shutil.which("sha256sum") is None, reason="needs coreutils' sha256sum")
def test_the_manifest_checks_with_sha256sum(tmp_path) -> None:
    saved_adapter(tmp_path)
    check = subprocess.run(["sha256sum", "-c", MANIFEST], cwd=tmp_path, capture_output=True)
    assert check.returncode == 0, check.stdout
    (tmp_path / CONFIG_FILE).write_text("{}")
    check = subprocess.run(["sha256sum", "-c", MANIFEST], cwd=tmp_path, capture_output=True)
    assert check.returncode == 1


def test_a_folder_written_before_the_rename_still_loads(tmp_path) -> None:
    torch.manual_seed(0)
    adapter = inject_adapter(BUILDERS["t5"](), AdapterConfig(r=4), TASKS)
    randomize_adapter(adapter)
    save_adapter(adapter, tmp_path)
    as_older_format(tmp_path, 2)  # PEFT-like names, no manifest
    loaded = load_adapter(BUILDERS["t5"](), tmp_path)
    for key, tensor in adapter.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], tensor), key


def test_future_format_version_is_refused(tmp_path) -> None:
    saved_adapter(tmp_path)
    description = json.loads((tmp_path / CONFIG_FILE).read_text())
    description["format_version"] = 99
    (tmp_path / CONFIG_FILE).write_text(json.dumps(description))
    write_manifest(tmp_path)
    with pytest.raises(UserError, match="newer than this more understands"):
        load_adapter(BUILDERS["t5"](), tmp_path)


def test_missing_or_damaged_description(tmp_path) -> None:
    with pytest.raises(UserError, match="not found"):
        load_adapter(BUILDERS["t5"](), tmp_path)
    (tmp_path / CONFIG_FILE).write_text("{not json")
    write_manifest(tmp_path)
    with pytest.raises(UserError, match="not valid JSON"):
        load_adapter(BUILDERS["t5"](), tmp_path)


def test_saving_leaves_no_temporary_files(tmp_path) -> None:
    saved_adapter(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == [MANIFEST, CONFIG_FILE, WEIGHTS_FILE]


def test_peft_does_not_mistake_our_folder_for_one_of_its_adapters(tmp_path) -> None:
    from peft import PeftConfig

    saved_adapter(tmp_path)
    with pytest.raises(ValueError, match="adapter_config.json"):
        PeftConfig.from_pretrained(str(tmp_path))


def test_a_folder_saved_before_a_key_existed_is_still_the_same_adapter(tmp_path) -> None:
    config = AdapterConfig(r=4)
    adapter = inject_adapter(BUILDERS["t5"](), config, TASKS)
    save_adapter(adapter, tmp_path)
    path = tmp_path / CONFIG_FILE
    description = json.loads(path.read_text())
    for key in ("initial_rank", "cl_detach_inputs"):  # keys added after format 3 was set
        description["config"].pop(key, None)
    path.write_text(json.dumps(description))
    write_manifest(tmp_path)
    check_same_adapter(adapter, tmp_path)  # their defaults are what the folder was trained with
    other = inject_adapter(BUILDERS["t5"](), AdapterConfig(r=4, cl_detach_inputs=True), TASKS)
    with pytest.raises(UserError, match=r"other settings: cl_detach_inputs False \(run: True\)"):
        check_same_adapter(other, tmp_path)


@pytest.mark.parametrize("drop", [("initial_rank",), ("initial_rank", "rank_scaling")])
def test_a_format_3_more_adapter_keeps_the_settings_it_was_trained_with(
    tmp_path, drop: tuple[str, ...]
) -> None:
    """Format 3 wrote initial_rank null or not at all (the random gate's choice), with rank
    scaling on unless it said otherwise: the defaults of its day, not today's."""
    torch.manual_seed(0)
    model = BUILDERS["t5"]()
    base_state = {k: v.clone() for k, v in model.state_dict().items()}
    paper = AdapterConfig(r=4, initial_rank="random", rank_scaling=True)
    adapter = inject_adapter(model, paper, TASKS)
    randomize_adapter(adapter)
    save_adapter(adapter, tmp_path)
    path = tmp_path / CONFIG_FILE
    description = json.loads(path.read_text())
    description["format_version"] = 3
    for key in drop:
        description["config"].pop(key)
    path.write_text(json.dumps(description))
    write_manifest(tmp_path)
    check_same_adapter(adapter, tmp_path)
    fresh = BUILDERS["t5"]()
    fresh.load_state_dict(base_state)
    assert load_adapter(fresh, tmp_path).config == paper
    inputs = model_inputs("t5", batch=2)
    with torch.no_grad():
        assert torch.equal(
            output_of(fresh, inputs, task_ids=torch.tensor([0, 1])),
            output_of(model, inputs, task_ids=torch.tensor([0, 1])),
        )
    today = inject_adapter(BUILDERS["t5"](), AdapterConfig(r=4), TASKS)
    with pytest.raises(UserError, match="initial_rank random \\(run: full\\)"):
        check_same_adapter(today, tmp_path)
