"""Adapter state on disk: ``more_adapter.safetensors`` + ``more_adapter.json`` + ``SHA256SUMS``.

The JSON carries a format version, the adapter config, the task list and the shape of every
adapted layer; loading checks the manifest's digests, then all of that against the model
before touching any weight, and never unpickles anything.

The names are not PEFT's (``adapter_config.json`` / ``adapter_model.safetensors``): this is
another format, and peft must not half-read it. Folders written before the rename (format 2
and older, no manifest) still load under their old names, with no digests to check.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from pydantic import ValidationError
from safetensors import SafetensorError
from safetensors.torch import load_file, save
from torch import nn

from more_cli.adapters.config import AdapterConfig, with_legacy_defaults, without_inactive
from more_cli.adapters.injection import MultiTaskAdapter, inject_adapter
from more_cli.atomic import atomic_write_bytes
from more_cli.errors import UserError
from more_cli.integrity import has_manifest, verify_manifest, write_manifest
from more_cli.sharded import copy_whole_into, whole

# 2: baselines rebuilt as their papers define them (multilora is MultiLoRA, the old per-task
# LoRA is per_task_lora; moelora and mosld changed shape); config keys a kind does not read
# are no longer written. 3: files renamed away from PEFT's names, SHA256SUMS manifest.
# 4: MoRE's defaults moved (initial_rank full, rank_scaling false); initial_rank may be
# full or random, so older versions must not read it.
FORMAT_VERSION = 4
CONFIG_FILE = "more_adapter.json"
WEIGHTS_FILE = "more_adapter.safetensors"
LEGACY_FILES = {CONFIG_FILE: "adapter_config.json", WEIGHTS_FILE: "adapter_model.safetensors"}


def adapter_file(directory: str | Path, name: str) -> Path:
    """``directory/name``, or the file's name before format 3 where only that one exists."""
    path = Path(directory) / name
    legacy = Path(directory) / LEGACY_FILES[name]
    return legacy if not path.exists() and legacy.exists() else path


def verify_adapter_folder(directory: str | Path) -> None:
    """Check every file of an adapter folder against its manifest; a folder written before
    manifests (old file names, none) has nothing to check. Raises :class:`UserError`."""
    directory = Path(directory)
    if has_manifest(directory) or (directory / CONFIG_FILE).exists():
        verify_manifest(directory)


def _describe(adapter: MultiTaskAdapter) -> dict:
    return {
        "format_version": FORMAT_VERSION,
        "config": adapter.config.model_dump(mode="json"),
        "tasks": adapter.tasks,
        "layers": {
            name: {"d_in": layer.d_in, "d_out": layer.d_out}
            for name, layer in adapter.layers.items()
        },
    }


def adapter_tensors(adapter: MultiTaskAdapter) -> dict[str, torch.Tensor]:
    """The adapter's tensors by name, whole and on the CPU. Under FSDP2 this gathers the
    shards of every process: all of them call it."""
    return {k: whole(v).contiguous().cpu() for k, v in adapter.state_dict().items()}


def save_adapter(
    adapter: MultiTaskAdapter,
    directory: str | Path,
    tensors: dict[str, torch.Tensor] | None = None,
    *,
    seal: bool = True,
) -> Path:
    """Write the adapter's weights and description into ``directory`` (each file atomically),
    then its manifest; ``tensors`` are those :func:`adapter_tensors` already gathered. With
    ``seal=False`` the caller adds files of its own and writes the manifest itself."""
    directory = Path(directory)
    tensors = adapter_tensors(adapter) if tensors is None else tensors
    atomic_write_bytes(directory / WEIGHTS_FILE, save(tensors, metadata={"format": "pt"}))
    text = json.dumps(_describe(adapter), indent=2)
    atomic_write_bytes(directory / CONFIG_FILE, text.encode())
    if seal:
        write_manifest(directory)
    return directory


def read_description(directory: str | Path) -> dict:
    """The adapter JSON of ``directory``, checked for presence, syntax and format version;
    a config from an older format is returned in today's terms."""
    path = adapter_file(directory, CONFIG_FILE)
    if not path.is_file():
        raise UserError(f"{path} not found; point at a folder written by `more train` or save()")
    try:
        description = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise UserError(f"{path} is not valid JSON ({error}); the file is damaged") from None
    if not isinstance(description, dict) or "format_version" not in description:
        raise UserError(f"{path} is not a more adapter description (no format_version)")
    version = description["format_version"]
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise UserError(
            f"{path} has format version {version}, newer than this more understands "
            f"({FORMAT_VERSION}); upgrade more"
        )
    if version < 2:
        description = _upgraded(description, path)
    config = description.get("config")
    if version < 4 and isinstance(config, dict):
        description = description | {"config": with_legacy_defaults(config)}
    return description


def _upgraded(description: dict, path: Path) -> dict:
    """A format-1 description in today's terms: ``multilora`` then meant one LoRA per task
    (today's ``per_task_lora``, same tensors), and every config key was written whatever the
    kind. Format-1 moelora and mosld adapters have other tensors than today's kinds."""
    config = description.get("config")
    if not isinstance(config, dict):
        return description
    kind = config.get("kind", "more")
    if kind in ("moelora", "mosld"):
        raise UserError(
            f"{path} is a {kind} adapter in format 1, from before {kind} was rebuilt as its "
            "paper defines it; its tensors do not fit today's kind: train it again"
        )
    renamed = config | {"kind": "per_task_lora" if kind == "multilora" else kind}
    return description | {"config": without_inactive(renamed)}


def read_weights(path: Path) -> dict[str, torch.Tensor]:
    """safetensors only; a truncated or foreign file, or one holding NaN or infinite values
    (bytes changed in a folder without digests), is a clear error naming the file."""
    if not path.is_file():
        raise UserError(f"{path} not found; the folder holding it is incomplete")
    try:
        tensors = load_file(path)
    except (SafetensorError, OSError, ValueError) as error:
        raise UserError(f"{path} is not a readable safetensors file ({error})") from None
    for name, tensor in tensors.items():
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            raise UserError(
                f"{path}: tensor {name} holds NaN or infinite values; the file is damaged",
                details=["restore it from a copy, or resume from an earlier checkpoint"],
            )
    return tensors


def load_adapter(
    model: nn.Module, directory: str | Path, tasks: list[str] | None = None
) -> MultiTaskAdapter:
    """Inject the adapter saved in ``directory`` into ``model`` and load its weights.

    Args:
        model: a fresh copy of the base model the adapter was trained on.
        directory: folder written by :func:`save_adapter`.
        tasks: optional check that the adapter knows exactly these tasks.
    """
    verify_adapter_folder(directory)
    description = read_description(directory)
    try:
        config = AdapterConfig.model_validate(description["config"])
    except Exception as error:  # pydantic ValidationError, KeyError on damaged files
        raise UserError(
            f"{adapter_file(directory, CONFIG_FILE)} holds no valid adapter config ({error})"
        ) from None
    saved_tasks = list(description.get("tasks", []))
    if tasks is not None and list(tasks) != saved_tasks:
        raise UserError(
            f"adapter in {directory} was trained on tasks {saved_tasks}, not {list(tasks)}"
        )
    adapter = inject_adapter(model, config, saved_tasks)
    _check_layers(adapter, description.get("layers", {}), directory)
    load_adapter_weights(adapter, directory)
    return adapter


def check_same_adapter(adapter: MultiTaskAdapter, directory: str | Path) -> None:
    """Refuse a saved adapter whose config or tasks differ from ``adapter``'s: a checkpoint
    of another adapter kind or another recipe must not be loaded into it.

    The saved config is compared with its defaults filled in, so a folder written before a
    key existed (new keys default to the behaviour from before them) still matches."""
    path = adapter_file(directory, CONFIG_FILE)
    description = read_description(directory)
    saved = _with_defaults(description.get("config"))
    current = adapter.config.model_dump(mode="json")
    changed = sorted(
        key for key in saved.keys() | current.keys() if saved.get(key) != current.get(key)
    )
    saved_tasks = description.get("tasks")
    if changed or saved_tasks != adapter.tasks:
        differences = [f"{key} {saved.get(key)} (run: {current.get(key)})" for key in changed]
        if saved_tasks != adapter.tasks:
            differences.append(f"tasks {saved_tasks} (run: {adapter.tasks})")
        what = ("settings: " if changed else "") + ", ".join(differences)
        raise UserError(
            f"{path} describes a {saved.get('kind')} adapter with other {what}",
            details=["load only checkpoints written by this run"],
        )


def _with_defaults(config: object) -> dict:
    """A saved config as today's :class:`AdapterConfig` writes it; as found if it is not valid."""
    if not isinstance(config, dict):
        return {}
    try:
        return AdapterConfig.model_validate(config).model_dump(mode="json")
    except ValidationError:  # compared as found, so it differs
        return config


def _check_layers(adapter: MultiTaskAdapter, saved: dict, directory: str | Path) -> None:
    current = _describe(adapter)["layers"]
    if set(saved) != set(current):
        missing, extra = sorted(set(saved) - set(current)), sorted(set(current) - set(saved))
        adapter.remove()
        raise UserError(
            f"adapter in {directory} does not fit this model: layers missing from the model "
            f"{missing[:3]}, unexpected layers {extra[:3]}; load it into the base model it was "
            "trained on"
        )
    for name, shape in saved.items():
        if shape != current[name]:
            adapter.remove()
            raise UserError(
                f"adapter in {directory} does not fit this model: layer {name} is "
                f"{shape} in the adapter but {current[name]} in the model"
            )


def load_adapter_weights(adapter: MultiTaskAdapter, directory: str | Path) -> None:
    """Copy the saved tensors into an existing adapter, checking names, shapes and kind."""
    path = adapter_file(directory, WEIGHTS_FILE)
    saved = read_weights(path)
    current = adapter.state_dict()
    if set(saved) != set(current):
        missing = sorted(set(current) - set(saved))[:3]
        extra = sorted(set(saved) - set(current))[:3]
        raise UserError(
            f"{path} does not match this adapter (kind {adapter.config.kind}): missing "
            f"{missing}, unexpected {extra}"
        )
    for key, tensor in saved.items():
        if tensor.shape != current[key].shape:
            raise UserError(
                f"{path}: tensor {key} has shape {tuple(tensor.shape)}, the adapter expects "
                f"{tuple(current[key].shape)}"
            )
    for key, tensor in saved.items():
        copy_whole_into(current[key], tensor)
