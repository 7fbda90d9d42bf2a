"""Per-task exports: low-rank factors, PEFT adapters, merged checkpoints, verification.

Runs are built directly (resolved recipe + saved adapter with random weights, so every
update is visible) on the tiny saved models of ``tests/conftest.py``.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file

from more_cli.adapters import AdapterConfig, inject_adapter
from more_cli.errors import UserError
from more_cli.exports.heads import TaskHead, task_head
from more_cli.exports.runs import export_run
from more_cli.exports.verify import TOLERANCES, probe_inputs, verify_export
from more_cli.exports.writers import export_merged, export_peft
from more_cli.run_loading import load_run
from tests.exports.conftest import randomize
from tests.helpers.tiny import tiny_t5

# ---------------------------------------------------------------------------------------------
# PEFT adapters


def test_peft_adapter_has_standard_keys_and_ranks(tmp_path: Path) -> None:
    model = tiny_t5()
    config = AdapterConfig(r=8, targets=["q", "v"], fixed_ranks={"a": 2, "b": 6})
    adapter = inject_adapter(model, config, ["a", "b"])
    randomize(model, adapter)
    out = export_peft(adapter, "a", tmp_path / "peft", "t5-tiny", family="seq2seq")
    saved = json.loads((out / "adapter_config.json").read_text())
    assert saved["task_type"] == "SEQ_2_SEQ_LM" and saved["peft_type"] == "LORA"
    assert saved["r"] == saved["lora_alpha"] == 2 and saved["rank_pattern"] == {}
    tensors = load_file(out / "adapter_model.safetensors")
    key = "base_model.model.encoder.block.0.layer.0.SelfAttention.q.lora_A.weight"
    assert tensors[key].shape == (2, model.config.d_model)
    assert len(tensors) == 2 * len(adapter.layers)


@pytest.mark.parametrize("kind", ["seq2seq", "decoder", "encoder", "gpt2"])
def test_peft_export_matches_adapter_output(kind: str, make_run: Callable[..., Path]) -> None:
    run = load_run(make_run(kind))
    head = task_head(run, "rte")
    out = export_peft(run.adapter, "rte", run.root / "peft", "base", family=run.family, head=head)
    config = json.loads((out / "adapter_config.json").read_text())
    assert config["fan_in_fan_out"] is (kind == "gpt2")
    assert (out / "task_head.safetensors").is_file() is (kind == "encoder")
    assert verify_export(run, "rte", None, out)["peft"] < 1e-5


def test_peft_rank_pattern_holds_per_module_ranks(make_run: Callable[..., Path]) -> None:
    run = load_run(make_run("decoder", adapter={"r": 8}))
    ranks = run.adapter.chosen_ranks()["sst2"]
    assert len(set(ranks.values())) > 1  # random gates choose different ranks per layer
    out = export_peft(run.adapter, "sst2", run.root / "peft", "base", family=run.family)
    config = json.loads((out / "adapter_config.json").read_text())
    for name, rank in ranks.items():
        assert config["rank_pattern"].get(name, config["r"]) == rank
        assert config["alpha_pattern"].get(name, config["lora_alpha"]) == rank
    assert verify_export(run, "sst2", None, out)["peft"] < 1e-5


# ---------------------------------------------------------------------------------------------
# Merged checkpoints


@pytest.mark.parametrize("kind", ["seq2seq", "decoder", "encoder", "gpt2"])
def test_merged_output_equals_adapter_output(kind: str, make_run: Callable[..., Path]) -> None:
    run_dir = make_run(kind)
    reference = load_run(run_dir)
    for task in ("sst2", "rte"):
        out = export_merged(load_run(run_dir), task, run_dir / "merged" / task)
        assert verify_export(reference, task, out, None)["merged"] < 1e-5


def test_encoder_export_carries_the_task_head(make_run: Callable[..., Path]) -> None:
    run_dir = make_run("encoder")
    run = load_run(run_dir)
    out = export_merged(load_run(run_dir), "rte", run_dir / "merged")
    head = TaskHead.load(out)
    description = json.loads((out / "task_head.json").read_text())
    assert description["num_labels"] == 2
    assert description["id2label"] == {"0": "entailment", "1": "not_entailment"}
    assert description["problem_type"] == "single_label_classification"
    torch.testing.assert_close(head.weight, run.model.heads[1].weight)
    assert json.loads((out / "config.json").read_text())["architectures"] == ["BertModel"]


def test_merged_checkpoint_loads_without_more_cli(make_run: Callable[..., Path]) -> None:
    run_dir = make_run("decoder")
    run = load_run(run_dir)
    inputs = probe_inputs(run, "sst2")
    with torch.no_grad(), run.adapter.task_context("sst2"):
        expected = run.model(**inputs).logits
    out = export_merged(run, "sst2", run_dir / "merged", max_shard_size="20KB")
    assert len(list(out.glob("model-*.safetensors"))) > 1  # sharded
    assert (out / "generation_config.json").is_file() and (out / "tokenizer.json").is_file()
    torch.save(dict(inputs), run_dir / "inputs.pt")
    script = f"""
import sys, torch
from transformers import AutoModelForCausalLM
model = AutoModelForCausalLM.from_pretrained({str(out)!r}).eval()
inputs = torch.load({str(run_dir / "inputs.pt")!r})
with torch.no_grad():
    torch.save(model(**inputs).logits, {str(run_dir / "logits.pt")!r})
assert not any(name.startswith("more_cli") for name in sys.modules), "more_cli was imported"
"""
    subprocess.run([sys.executable, "-c", script], check=True, cwd=run_dir)
    torch.testing.assert_close(torch.load(run_dir / "logits.pt"), expected, atol=1e-5, rtol=0)


def test_bfloat16_export_is_verified_with_a_looser_tolerance(
    make_run: Callable[..., Path],
) -> None:
    run_dir = make_run("seq2seq")
    results = export_run(run_dir, ["rte"], dtype=torch.bfloat16, say=lambda _: None)
    tensors = load_file(results[0].merged_dir / "model.safetensors")
    assert {t.dtype for t in tensors.values()} == {torch.bfloat16}
    # export_run verified it: bf16 rounding a float32 export's tolerance would have refused.
    assert results[0].differences["merged"] > TOLERANCES[torch.float32]


# ---------------------------------------------------------------------------------------------
# 4-bit bases


FOUR_BIT = {
    "load_in_4bit": True,
    "dtype": "float32",
    "quantization": {"compute_dtype": "float32", "double_quant": False},
}


@pytest.mark.parametrize("roundtrip", [False, True])
def test_4bit_run_merges_into_a_full_precision_copy(
    roundtrip: bool, make_run: Callable[..., Path]
) -> None:
    pytest.importorskip("bitsandbytes")
    run_dir = make_run("decoder", model=FOUR_BIT, adapter={"targets": ["q_proj", "v_proj"]})
    results = export_run(run_dir, ["rte"], nf4_roundtrip=roundtrip, say=lambda _: None)
    tensors = load_file(results[0].merged_dir / "model.safetensors")
    assert {t.dtype for t in tensors.values()} == {torch.float32}
    assert not any("absmax" in key or "quant" in key for key in tensors)
    config = json.loads((results[0].merged_dir / "config.json").read_text())
    assert "quantization_config" not in config
    # The round trip gives the NF4-rounded weights the adapter was trained against.
    original = load_file(next(Path(load_run(run_dir).recipe.model.name).glob("*.safetensors")))
    unadapted = "model.layers.0.mlp.down_proj.weight"  # quantized in training, not adapted
    assert torch.equal(tensors[unadapted], original[unadapted]) is not roundtrip


def test_4bit_run_refuses_a_merge_into_4bit_weights(make_run: Callable[..., Path]) -> None:
    pytest.importorskip("bitsandbytes")
    run = load_run(make_run("decoder", model=FOUR_BIT))
    with pytest.raises(ValueError, match="4-bit layers"):
        export_merged(run, "rte", run.root / "merged")


def test_nf4_roundtrip_needs_a_4bit_run(make_run: Callable[..., Path]) -> None:
    with pytest.raises(UserError, match="only applies to runs trained on a 4-bit base"):
        export_run(make_run("seq2seq"), None, nf4_roundtrip=True, say=lambda _: None)


# ---------------------------------------------------------------------------------------------
# Atomic writes and overwriting


def test_export_refuses_to_overwrite_without_force(make_run: Callable[..., Path]) -> None:
    run_dir = make_run("seq2seq")
    export_run(run_dir, ["rte"], verify=False, say=lambda _: None)
    merged = run_dir / "exports" / "merged" / "rte"
    marker = merged / "config.json"
    before = marker.stat().st_mtime_ns
    with pytest.raises(UserError, match="already exists"):
        export_run(run_dir, ["rte"], verify=False, say=lambda _: None)
    assert marker.stat().st_mtime_ns == before
    export_run(run_dir, ["rte"], verify=False, force=True, say=lambda _: None)
    assert (merged / "model.safetensors").is_file()


def test_failed_merge_leaves_no_folder(
    make_run: Callable[..., Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    run_dir = make_run("seq2seq")
    run = load_run(run_dir)

    def broken_save(*args: Any, **kwargs: Any) -> None:
        raise RuntimeError("disk full")

    monkeypatch.setattr(type(run.host), "save_pretrained", broken_save)
    with pytest.raises(RuntimeError, match="disk full"):
        export_merged(run, "rte", run_dir / "exports" / "merged" / "rte")
    assert list((run_dir / "exports" / "merged").iterdir()) == []


def test_non_finite_merged_weights_are_refused_with_the_task_named(
    make_run: Callable[..., Path],
) -> None:
    run_dir = make_run("seq2seq")
    run = load_run(run_dir)
    with torch.no_grad():
        next(iter(run.adapter.layers.values())).lora_B.fill_(float("nan"))
    with pytest.raises(UserError, match="task rte: 1 merged tensor.*NaN or infinite"):
        export_merged(run, "rte", run_dir / "exports" / "merged" / "rte")
    assert list((run_dir / "exports" / "merged").iterdir()) == []


def test_unknown_task_fails_before_writing(make_run: Callable[..., Path]) -> None:
    run_dir = make_run("seq2seq")
    with pytest.raises(UserError, match="unknown task 'cola'"):
        export_run(run_dir, ["rte", "cola"], say=lambda _: None)
    assert not (run_dir / "exports").exists()


def test_bad_shard_size_is_a_user_error(make_run: Callable[..., Path]) -> None:
    with pytest.raises(UserError, match="is not a size"):
        export_run(make_run("seq2seq"), None, max_shard_size="2 gigs", say=lambda _: None)


def test_verification_fails_loudly(make_run: Callable[..., Path]) -> None:
    run_dir = make_run("seq2seq")
    out = export_merged(load_run(run_dir), "rte", run_dir / "merged")
    with pytest.raises(UserError, match="does not reproduce the adapter"):
        verify_export(load_run(run_dir), "sst2", out, None)  # the other task's merge


def test_a_failed_verification_keeps_the_exports_it_would_have_replaced(
    make_run: Callable[..., Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from more_cli.exports import runs

    run_dir = make_run("seq2seq")
    out = tmp_path / "out"
    export_run(run_dir, ["rte"], out, verify=False, say=lambda _: None)
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}

    def failing_verify(*args: Any, **kwargs: Any) -> None:
        raise UserError("task rte: the export does not reproduce the adapter")

    monkeypatch.setattr(runs, "verify_export", failing_verify)
    with pytest.raises(UserError, match="does not reproduce"):
        export_run(run_dir, ["rte"], out, force=True, say=lambda _: None)
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before
    assert sorted(p.name for p in (out / "merged").iterdir()) == ["rte"]  # no .tmp-* left
