"""Several processes: DDP without unused-parameter search, sampler state, a 2-process run.

The 2-process run goes through ``more train --num-processes 2`` (accelerate launch, gloo on
the CPU) and must end where a 1-process run with the same global batch ends. The global
batch of 2 processes x ``batch_size`` B is two micro-batches of B: sampler batches ``2k``
(process 0) and ``2k + 1`` (process 1). One process with ``grad_accum: 2`` takes exactly
those two micro-batches for step ``k``, and both set-ups average the two micro-batch mean
losses (DDP averages gradients over processes; accumulation divides each loss by 2), so
the two runs differ only in float summation order. The tolerance (1e-5 absolute on adapter
weights after 4 AdamW steps at lr 0.01) leaves room for that and nothing else.
"""

from __future__ import annotations

import importlib.util
import itertools
import json
import shutil
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from safetensors.torch import load_file
from torch.nn.parallel import DistributedDataParallel

from more_cli import data as data_lib
from more_cli.adapters import AdapterConfig, inject_adapter
from more_cli.data import MultiTaskBatchSampler
from more_cli.modeling import HeadSpec, adapter_host, load_base
from more_cli.recipe import ModelConfig, TaskConfig
from more_cli.recipe_io import load_recipe
from more_cli.rundir import RunDir, read_run_info, write_run_info
from more_cli.tasks import get_task
from more_cli.training.loop import train
from tests.helpers.subprocess_runs import ROOT, more_train, run_python


@pytest.fixture
def process_group(tmp_path: Path) -> Iterator[None]:
    """A one-process gloo group: DDP's unused-parameter check works the same with one."""
    store = tmp_path / "store"
    dist.init_process_group("gloo", init_method=f"file://{store}", world_size=1, rank=0)
    yield
    dist.destroy_process_group()


def _single_task_batches(kind: str, glue_data: Path, tokenizer: object) -> list[dict]:
    """A batch of sst2 only, one of rte only, then sst2 again."""
    cache = data_lib.FeatureCache(tokenizer, kind, 32, 4)
    collate = data_lib.Collator(data_lib.pad_token_id(tokenizer), kind)
    batches = {}
    for task_id, name in enumerate(("sst2", "rte")):
        task = get_task(TaskConfig(name=name, source=str(glue_data / name)))
        features = cache.features(task, "train")[:4]
        batches[name] = collate([{**feature, "task_id": task_id} for feature in features])
    return [batches["sst2"], batches["rte"], batches["sst2"]]


@pytest.mark.parametrize(
    "kind, adapter_kind",
    [
        ("seq2seq", "more"), ("decoder", "more"), ("encoder", "more"),
        ("decoder", "moelora"), ("decoder", "mosld"), ("decoder", "multilora"),
    ],
)  # fmt: skip
def test_ddp_trains_on_batches_holding_only_some_tasks(
    kind: str,
    adapter_kind: str,
    process_group: None,
    tiny_model_dir: Callable[[str], Path],
    glue_data: Path,
) -> None:
    # Per-task state is stacked and the encoder heads all run on every batch, so every
    # trainable parameter gets a gradient each step and plain DDP never complains that a
    # parameter "was not used in producing loss" (it would on the second step).
    tasks = [HeadSpec("sst2", 2), HeadSpec("rte", 2)]
    model, tokenizer, family = load_base(ModelConfig(name=str(tiny_model_dir(kind))), tasks)
    config = AdapterConfig(kind=adapter_kind, r=4, alpha=8, dropout=0.0)
    adapter = inject_adapter(adapter_host(model), config, ["sst2", "rte"])
    ddp = DistributedDataParallel(model.train(), find_unused_parameters=False)
    trainable = [p for p in model.parameters() if p.requires_grad]
    for batch in _single_task_batches(family, glue_data, tokenizer):
        loss = ddp(**batch).loss
        aux = adapter.auxiliary_loss()
        (loss if aux is None else loss + aux).backward()
        assert all(p.grad is not None for p in trainable)
        ddp.zero_grad(set_to_none=True)


def test_every_rank_resumes_from_the_main_process_sampler_state() -> None:
    def sampler(rank: int) -> MultiTaskBatchSampler:
        return MultiTaskBatchSampler([7, 12, 5], 3, "balanced", seed=1, num_replicas=2, rank=rank)

    consumed = 6
    uninterrupted = [list(itertools.islice(iter(sampler(rank)), consumed + 4)) for rank in (0, 1)]
    main = sampler(0)
    stream = iter(main)
    for _ in range(consumed + 2):  # DataLoader workers prefetch ahead of the loop
        next(stream)
    saved = main.state_dict(consumed=consumed)
    for rank in (0, 1):
        resumed = sampler(rank)
        resumed.load_state_dict(saved)
        assert list(itertools.islice(iter(resumed), 4)) == uninterrupted[rank][consumed:]


def _adapter(run: Path) -> dict[str, torch.Tensor]:
    return load_file(str(run / "adapter" / "more_adapter.safetensors"))


@pytest.mark.slow
def test_two_processes_match_one_with_the_same_global_batch(
    write_recipe: Callable[..., Path], tmp_path: Path
) -> None:
    # LLaMA (no dropout), balanced sampling: every micro-batch holds one task only.
    train_cfg = {"batch_size": 2, "max_steps": 4, "save_every": 2, "log_every": 2}
    recipe = write_recipe("decoder", train=train_cfg)
    two = tmp_path / "two"
    done = more_train(str(recipe), "--num-processes", "2", "-o", str(two))
    assert done.returncode == 0, done.stderr[-3000:]
    one = train(load_recipe(recipe, ["train.grad_accum=2", f"output_dir={tmp_path / 'one'}"]))
    for key, value in _adapter(one).items():
        torch.testing.assert_close(_adapter(two)[key], value, atol=1e-5, rtol=0, msg=key)

    # Only the main process wrote: one metrics record per log step, gathered over both.
    records = [json.loads(line) for line in (two / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if "loss" in r] == [2, 4]
    one_records = [json.loads(line) for line in (one / "metrics.jsonl").read_text().splitlines()]
    for mine, theirs in zip(records, one_records, strict=True):
        if "loss" in mine:
            assert mine["loss"] == pytest.approx(theirs["loss"], abs=1e-5)
    assert read_run_info(RunDir(two))["status"] == "finished"

    # Resume with 2 processes from the step-2 checkpoint: it ends where the run did.
    final = _adapter(two)
    shutil.rmtree(two / "checkpoints" / "step-4")
    shutil.rmtree(two / "adapter")
    write_run_info(RunDir(two), status="interrupted", step=2)
    done = more_train(str(two), "--resume", "--num-processes", "2")
    assert done.returncode == 0, done.stderr[-3000:]
    for key, value in final.items():
        assert torch.equal(_adapter(two)[key], value), key


def _launch(engine: str, *args: str) -> subprocess.CompletedProcess:
    """``more train`` under accelerate launch with the shipped ``<engine>.yaml`` config and 2
    processes, through the shim that lets accelerate's engine run on this CPU-only machine."""
    config = str(ROOT / "recipes" / "accelerate" / f"{engine}.yaml")
    return run_python(
        "-m", "accelerate.commands.launch", "--config_file", config, "--num_processes", "2",
        "--mixed_precision", "no", "-m", "tests.helpers.engines_on_cpu", "train", *args,
    )  # fmt: skip


@pytest.mark.slow
@pytest.mark.parametrize(
    "engine, banner",
    [
        ("fsdp", "model sharded with FSDP2"),
        pytest.param(
            "deepspeed", "DeepSpeed ZeRO stage 2",
            marks=pytest.mark.skipif(
                importlib.util.find_spec("deepspeed") is None,
                reason="deepspeed is not installed (pip install -e '.[deepspeed]')",
            ),
        ),
    ],
)  # fmt: skip
def test_sharded_engines_end_where_one_process_does_and_resume(
    engine: str, banner: str, write_recipe: Callable[..., Path], tmp_path: Path
) -> None:
    # Same comparison as the DDP test above. FSDP2 shards every block of the model (base,
    # adapter) across the two processes, DeepSpeed ZeRO-2 the optimizer state: adapter/
    # and checkpoints must still hold the whole adapter.
    train_cfg = {"batch_size": 2, "max_steps": 4, "save_every": 2, "log_every": 2}
    recipe = write_recipe("decoder", train=train_cfg)
    run = tmp_path / engine
    done = _launch(engine, str(recipe), "-o", str(run))
    assert done.returncode == 0, done.stderr[-3000:]
    assert banner in done.stdout
    one = train(load_recipe(recipe, ["train.grad_accum=2", f"output_dir={tmp_path / 'one'}"]))
    for key, value in _adapter(one).items():
        torch.testing.assert_close(_adapter(run)[key], value, atol=1e-5, rtol=0, msg=key)
    assert read_run_info(RunDir(run))["status"] == "finished"

    # Resume under the same engine from the step-2 checkpoint (FSDP2: whole AdamW moments
    # cut back into shards; DeepSpeed: its own optimizer partitions): it ends where the
    # run did.
    final = _adapter(run)
    shutil.rmtree(run / "checkpoints" / "step-4")
    shutil.rmtree(run / "adapter")
    write_run_info(RunDir(run), status="interrupted", step=2)
    done = _launch(engine, str(run), "--resume")
    assert done.returncode == 0, done.stderr[-3000:]
    for key, value in final.items():
        assert torch.equal(_adapter(run)[key], value), key
    if engine == "deepspeed":  # its optimizer partitions need DeepSpeed to resume
        shutil.rmtree(run / "checkpoints" / "step-4")
        write_run_info(RunDir(run), status="interrupted", step=2)
        done = more_train(str(run), "--resume")
        assert done.returncode == 2 and "written under DeepSpeed" in done.stderr, done.stderr


@pytest.mark.slow
def test_fsdp2_encoder_run_gathers_its_task_heads(
    write_recipe: Callable[..., Path], tmp_path: Path
) -> None:
    recipe = write_recipe("encoder", train={"max_steps": 2, "log_every": 1})
    run = tmp_path / "fsdp"
    done = _launch("fsdp", str(recipe), "-o", str(run))
    assert done.returncode == 0, done.stderr[-3000:]
    heads = load_file(str(run / "adapter" / "heads.safetensors"))
    hidden = json.loads((Path(load_recipe(recipe).model.name) / "config.json").read_text())
    assert heads["sst2.weight"].shape == (2, hidden["hidden_size"])
    assert set(json.loads((run / "eval.json").read_text())["tasks"]) == {"sst2", "rte"}
