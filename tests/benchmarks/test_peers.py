"""PEFT's LoRA layer inside this project's training (the quality study's peer reference row):
the update really comes from PEFT's module, on the layer's own parameters, and trains to the
same losses as the project's own ``lora`` from the same factors."""

from __future__ import annotations

import copy

import torch

from benchmarks.peers import use_peft_lora_layers
from more_cli.adapters import AdapterConfig, inject_adapter
from more_cli.adapters.layer import AdapterLayer
from tests.adapters.conftest import model_inputs
from tests.helpers.tiny import tiny_llama

TARGETS = ["q_proj", "v_proj", "down_proj"]
GENERATOR = torch.Generator().manual_seed(1)


def _lora_model(base: torch.nn.Module):
    config = AdapterConfig(kind="lora", r=4, alpha=8.0, dropout=0.1, targets=TARGETS)
    adapter = inject_adapter(base, config, ["t"])
    with torch.no_grad():  # a non-zero B, so that the update shows in the outputs
        for layer in adapter.layers.values():
            layer.lora_B.copy_(torch.randn(layer.lora_B.shape, generator=GENERATOR) * 0.1)
    return base, adapter


def _losses(model: torch.nn.Module, steps: int = 3) -> list[torch.Tensor]:
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-2)
    losses = []
    for step in range(steps):
        torch.manual_seed(step)  # the same dropout masks for both models
        inputs = model_inputs("llama", batch=2, seed=step)
        task_ids = torch.zeros(2, dtype=torch.long)
        loss = model(**inputs, labels=inputs["input_ids"], task_ids=task_ids).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.detach())
    return losses


def test_peft_layers_train_to_the_same_losses_as_our_lora(monkeypatch) -> None:
    base = tiny_llama().train()
    theirs, theirs_adapter = _lora_model(copy.deepcopy(base))
    ours, ours_adapter = _lora_model(base)
    with torch.no_grad():
        for name, layer in theirs_adapter.layers.items():
            layer.lora_A.copy_(ours_adapter.layers[name].lora_A)
            layer.lora_B.copy_(ours_adapter.layers[name].lora_B)
    own = _losses(ours)
    monkeypatch.setattr(AdapterLayer, "forward", AdapterLayer.forward)  # restored after
    use_peft_lora_layers()
    with_peft = _losses(theirs)
    torch.testing.assert_close(torch.stack(with_peft), torch.stack(own), rtol=1e-5, atol=1e-6)
    for name, layer in theirs_adapter.layers.items():
        assert layer.peft_layer.lora_A["default"].weight is layer.lora_A
        assert layer.peft_layer.lora_B["default"].weight is layer.lora_B
        torch.testing.assert_close(layer.lora_B, ours_adapter.layers[name].lora_B)
    # PEFT's layer stays outside the module tree: checkpoints hold the same tensors.
    assert theirs.state_dict().keys() == ours.state_dict().keys()


def test_the_update_is_computed_by_peft_s_layer(monkeypatch) -> None:
    model = tiny_llama().eval()
    inputs = model_inputs("llama", batch=2)
    task_ids = torch.zeros(2, dtype=torch.long)
    with torch.no_grad():
        unadapted = model(**inputs).logits
        _, adapter = _lora_model(model)
        monkeypatch.setattr(AdapterLayer, "forward", AdapterLayer.forward)
        use_peft_lora_layers()
        adapted = model(**inputs, task_ids=task_ids).logits
        for layer in adapter.layers.values():
            layer.peft_layer.scaling["default"] = 0.0  # only PEFT's layer reads this
        dropped = model(**inputs, task_ids=task_ids).logits
    assert not torch.allclose(adapted, unadapted)
    torch.testing.assert_close(dropped, unadapted)


def test_the_study_s_peer_row_is_the_lora_recipe_with_peft_layers(tmp_path) -> None:
    from benchmarks.glue8 import SETTINGS, job

    peer = job("peft_lora", 2023, 3e-4, SETTINGS, tmp_path, tmp_path / "work")
    ours = job("lora", 2023, 3e-4, SETTINGS, tmp_path, tmp_path / "work")
    assert peer.peft_layers and not ours.peft_layers
    assert peer.recipe.model_dump(exclude={"output_dir"}) == ours.recipe.model_dump(
        exclude={"output_dir"}
    )
