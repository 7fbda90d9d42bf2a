"""Injection into real architectures, task ids, exact per-task merge, accounting."""

from __future__ import annotations

import pytest
import torch

from more_cli.adapters import AdapterConfig, get_adapter, inject_adapter
from more_cli.errors import UserError
from tests.adapters.conftest import BUILDERS, model_inputs, output_of, randomize_adapter
from tests.helpers.kinds import MERGEABLE_KINDS, adapter_config

TASKS = ["alpha", "beta"]
EXPECTED_LEAVES = {
    "t5": {"q", "k", "v", "o", "wi", "wo"},
    "llama": {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"},
    "bert": {"query", "key", "value", "dense"},
    "gpt2": {"c_attn", "c_proj", "c_fc"},
}


def test_auto_targets_cover_the_family_preset(family: str) -> None:
    adapter = inject_adapter(BUILDERS[family](), AdapterConfig(), TASKS)
    leaves = {name.rsplit(".", 1)[-1] for name in adapter.layers}
    assert leaves == EXPECTED_LEAVES[family]
    assert not any("pooler" in name or "lm_head" in name for name in adapter.layers)


def test_only_adapter_parameters_train(family: str) -> None:
    model = BUILDERS[family]()
    adapter = inject_adapter(model, AdapterConfig(), TASKS)
    trainable = {id(p) for p in model.parameters() if p.requires_grad}
    assert trainable == {id(p) for p in adapter.named_trainable_parameters().values()}


def test_explicit_targets_by_name_and_regex() -> None:
    adapter = inject_adapter(
        BUILDERS["t5"](), AdapterConfig(targets=["q", r"encoder\..*\.wo"]), TASKS
    )
    assert {n.rsplit(".", 1)[-1] for n in adapter.layers} == {"q", "wo"}
    assert all(n.startswith("encoder") for n in adapter.layers if n.endswith("wo"))


def test_targets_that_match_nothing_are_refused_with_the_available_names() -> None:
    with pytest.raises(UserError, match="matched no linear layer.*q_proj"):
        inject_adapter(BUILDERS["llama"](), AdapterConfig(targets=["query"]), TASKS)


def test_forward_without_task_ids_is_a_clear_error() -> None:
    model = BUILDERS["llama"]()
    inject_adapter(model, AdapterConfig(), TASKS)
    with pytest.raises(UserError, match="without task ids"):
        model(**model_inputs("llama", batch=2))


def test_task_ids_accept_names_and_reject_unknown_tasks() -> None:
    model = BUILDERS["llama"]()
    adapter = inject_adapter(model, AdapterConfig(), TASKS)
    assert adapter.as_task_ids(["beta", "alpha"]).tolist() == [1, 0]
    with pytest.raises(UserError, match="unknown task 'gamma'"):
        adapter.as_task_ids(["gamma"])
    with pytest.raises(UserError, match="task ids must lie"):
        model(**model_inputs("llama", batch=1), task_ids=torch.tensor([5]))


def test_task_context_routes_generate() -> None:
    model = BUILDERS["llama"]()
    adapter = inject_adapter(model, AdapterConfig(), TASKS)
    randomize_adapter(adapter)
    inputs = model_inputs("llama", batch=2)
    with adapter.task_context(["alpha", "beta"]):
        generated = model.generate(**inputs, max_new_tokens=3, do_sample=False, num_beams=2)
    assert generated.shape == (2, 9)


@pytest.mark.parametrize("kind", MERGEABLE_KINDS)
def test_merged_output_equals_adapter_output(family: str, kind: str) -> None:
    model = BUILDERS[family]()
    adapter = inject_adapter(model, adapter_config(kind, r=4, num_experts=2), TASKS)
    randomize_adapter(adapter, scale=0.05)
    inputs = model_inputs(family, batch=2)
    with torch.no_grad():
        for task in TASKS:
            expected = output_of(
                model, inputs, task_ids=torch.tensor([adapter.task_index(task)] * 2)
            )
            adapter.merge(task)
            merged = output_of(model, inputs)
            adapter.unmerge()
            torch.testing.assert_close(merged, expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("kind", MERGEABLE_KINDS)
def test_a_merged_adapter_serves_other_tasks_correctly_or_refuses(kind: str) -> None:
    """After merge("alpha") a call for beta must give beta's output or a clear error, never
    alpha's output: kinds whose update is the same for every task give the right output."""
    model = BUILDERS["t5"]()
    adapter = inject_adapter(model, adapter_config(kind, r=4, num_experts=2), TASKS)
    randomize_adapter(adapter, scale=0.05)
    inputs = model_inputs("t5", batch=2)
    beta = torch.tensor([1, 1])
    with torch.no_grad():
        expected = output_of(model, inputs, task_ids=beta)
        adapter.merge("alpha")
        if kind in ("lora", "multilora"):
            torch.testing.assert_close(
                output_of(model, inputs, task_ids=beta), expected, atol=1e-5, rtol=1e-5
            )
        else:
            with pytest.raises(UserError, match="'alpha' merged.*cannot serve 'beta'"):
                output_of(model, inputs, task_ids=beta)
            with (
                pytest.raises(UserError, match="cannot serve 'beta'"),
                adapter.task_context(["alpha", "beta"]),
            ):
                pass
        merged_alpha = output_of(model, inputs, task_ids=torch.tensor([0, 0]))
        adapter.unmerge()
        torch.testing.assert_close(
            merged_alpha, output_of(model, inputs, task_ids=torch.tensor([0, 0])),
            atol=1e-5, rtol=1e-5,
        )  # fmt: skip
        torch.testing.assert_close(output_of(model, inputs, task_ids=beta), expected)


def test_mosld_refuses_to_merge_with_the_reason() -> None:
    adapter = inject_adapter(BUILDERS["t5"](), AdapterConfig(kind="mosld", r=4), TASKS)
    for attempt in (adapter.merge, adapter.merge_and_unload, adapter.delta_weights):
        with pytest.raises(UserError, match="picks experts for every token"):
            attempt("alpha")


def test_merge_and_unload_leaves_a_plain_model() -> None:
    model = BUILDERS["gpt2"]()
    adapter = inject_adapter(model, AdapterConfig(kind="more", r=4), TASKS)
    randomize_adapter(adapter)
    inputs = model_inputs("gpt2", batch=2)
    with torch.no_grad():
        expected = output_of(model, inputs, task_ids=torch.tensor([1, 1]))
        plain = adapter.merge_and_unload("beta")
        got = output_of(plain, inputs)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    assert not any("lora" in k or "more_router" in k for k in plain.state_dict())
    with pytest.raises(UserError, match="holds no more adapter"):
        get_adapter(plain)


def test_parameter_counts_by_kind() -> None:
    counts = {
        kind: inject_adapter(BUILDERS["t5"](), adapter_config(kind, r=4), TASKS).parameter_counts()
        for kind in ["lora", "per_task_lora", "multilora", "more"]
    }
    assert counts["lora"]["total"] == counts["lora"]["lora_same_rank"]
    assert counts["per_task_lora"]["lora"] == len(TASKS) * counts["lora"]["lora"]
    # MultiLoRA: 4 parallel modules shared by all tasks, plus one scaling vector per module
    scales = 4 * sum(
        layer.d_out
        for layer in inject_adapter(
            BUILDERS["t5"](), AdapterConfig(kind="lora", r=4), TASKS
        ).layers.values()
    )
    assert counts["multilora"]["lora"] == 4 * counts["lora"]["lora"] + scales
    assert counts["more"]["lora"] == counts["lora"]["lora"]
    assert counts["more"]["task_embeddings"] > 0 and counts["more"]["gates"] > 0
