"""A 4-bit base end to end on the CPU: train, merge a task into a dequantized copy, evaluate.

bitsandbytes 0.50 runs NF4 forward and backward on the CPU. Its kernels work on blocks of
64 values, so the tiny LLaMA here is 64 wide (the shared tiny models are 32 wide).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM

from more_cli import modeling
from more_cli.errors import UserError
from more_cli.evaluation.predict import predict
from more_cli.exports.runs import export_run
from more_cli.recipe import ModelConfig
from more_cli.recipe_io import load_recipe
from more_cli.tasks import compute_metrics, get_task
from more_cli.training.loop import train
from tests.helpers.subprocess_runs import more_train
from tests.helpers.tiny import TINY_VOCAB, accept_task_ids, tiny_tokenizer

bnb = pytest.importorskip("bitsandbytes")

FOUR_BIT = {
    "load_in_4bit": True,
    "dtype": "float32",
    "quantization": {"quant_type": "nf4", "double_quant": True, "compute_dtype": "float32"},
}


@pytest.fixture(scope="module")
def llama64(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=TINY_VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
        pad_token_id=0, eos_token_id=1, bos_token_id=3,
    )  # fmt: skip
    directory = tmp_path_factory.mktemp("llama64")
    LlamaForCausalLM(config).save_pretrained(directory)
    tiny_tokenizer(add_eos=False).save_pretrained(directory)
    return directory


def _losses(run: Path) -> list[float]:
    records = map(json.loads, (run / "metrics.jsonl").read_text().splitlines())
    return [record["loss"] for record in records if "loss" in record]


def test_4bit_base_trains_merges_and_evaluates(
    llama64: Path, write_recipe: Callable[..., Path], tmp_path: Path
) -> None:
    recipe = write_recipe(
        "decoder",
        tasks=("sst2",),
        model={"name": str(llama64), "gradient_checkpointing": True, **FOUR_BIT},
        adapter={"targets": ["q_proj", "v_proj"]},
        train={"max_steps": 16, "log_every": 8, "lr": 0.02},
    )
    run = train(load_recipe(recipe))
    losses = _losses(run)
    assert losses[-1] < losses[0], losses
    adapter_score = json.loads((run / "eval.json").read_text())["tasks"]["sst2"]

    results = export_run(run, ["sst2"], say=lambda _: None)  # verified against the adapter
    merged = AutoModelForCausalLM.from_pretrained(results[0].merged_dir, dtype=torch.float32)
    assert not any("4bit" in type(module).__name__ for module in merged.modules())
    task = get_task(load_recipe(run / "recipe.resolved.yaml").tasks[0], seed=0)
    examples = task.load_split("val_test")
    predictions = predict(
        accept_task_ids(merged), AutoTokenizer.from_pretrained(llama64), task, examples,
        "decoder", 8, "cpu", task_id=0, max_source_length=32, max_target_length=4,
    )  # fmt: skip
    merged_score = compute_metrics(
        task, [p.label for p in predictions], [e.label for e in examples]
    )
    # The merged copy computes in float32 what bitsandbytes' CPU kernel computed in bf16:
    # rank classification may flip on a near-tie, so allow one example of difference.
    assert abs(merged_score["headline"] - adapter_score["headline"]) <= 100 / len(examples)


def test_unsupported_4bit_combination_fails_before_loading(
    llama64: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def unsupported(*args: object, **kwargs: object) -> None:
        raise NotImplementedError("fp4 is not implemented for this device\nmore detail")

    loaded: list[object] = []
    monkeypatch.setattr(bnb.functional, "quantize_4bit", unsupported)
    monkeypatch.setattr(modeling.AutoModelForCausalLM, "from_pretrained", loaded.append)
    quantization = {"quant_type": "fp4", "compute_dtype": "float32"}
    cfg = ModelConfig(name=str(llama64), **{**FOUR_BIT, "quantization": quantization})
    with pytest.raises(UserError, match="cannot run 4-bit fp4 with float32 compute on cpu"):
        modeling.load_base(cfg)
    assert not loaded


@pytest.mark.parametrize("compute_dtype", ["float32", "bfloat16", "float16"])
def test_supported_4bit_combinations_pass_the_check(compute_dtype: str) -> None:
    quant = {"quant_type": "nf4", "compute_dtype": compute_dtype}
    cfg = ModelConfig(name="x", load_in_4bit=True, dtype=compute_dtype, quantization=quant)
    kwargs = modeling._quantization_kwargs(cfg, None)
    assert kwargs["quantization_config"].bnb_4bit_compute_dtype == getattr(torch, compute_dtype)


@pytest.mark.slow
def test_4bit_base_trains_with_two_processes(
    llama64: Path, write_recipe: Callable[..., Path], tmp_path: Path
) -> None:
    # Each process quantizes its own copy of the base; DDP all-reduces the adapter's
    # gradients only. Same global batch as one process with grad_accum 2 (see
    # tests/test_distributed.py): the adapters agree up to float summation order.
    recipe = write_recipe(
        "decoder",
        model={"name": str(llama64), **FOUR_BIT},
        adapter={"targets": ["q_proj", "v_proj"]},
        train={"batch_size": 2, "max_steps": 4, "log_every": 2},
    )
    two = tmp_path / "two"
    done = more_train(str(recipe), "--num-processes", "2", "-o", str(two))
    assert done.returncode == 0, done.stderr[-3000:]
    one = train(load_recipe(recipe, ["train.grad_accum=2", f"output_dir={tmp_path / 'one'}"]))
    weights = "adapter/more_adapter.safetensors"
    mine, theirs = load_file(str(two / weights)), load_file(str(one / weights))
    for key, value in theirs.items():
        torch.testing.assert_close(mine[key], value, atol=1e-5, rtol=0, msg=key)
