"""Multi-task training with accelerate, and evaluation of a finished run.

:func:`train` runs a recipe end to end and writes the run directory (:mod:`more_cli.rundir`):

- **Model**: the frozen base (:func:`~more_cli.modeling.load_base`, 4-bit if asked), the
  adapter injected into it, per-task heads for encoders. Only adapter and heads train.
- **Optimizer**: AdamW over the trainable parameters; no weight decay on biases, norms and
  task embeddings. Warm-up then ``train.scheduler`` decay (linear, cosine or constant).
- **Loss**: task loss + the adapter kind's own weighted loss term (MoRE: ``cl_weight`` ×
  the contrastive loss; MoSLD: ``balance_weight`` × the load-balancing loss). Gradient
  accumulation through ``accelerator.accumulate`` (the loss of each micro-batch is divided
  by ``train.grad_accum``), clipping at ``train.max_grad_norm``, mixed precision through
  ``train.precision``.
- **Data**: batches come from the seeded, resumable multi-task sampler of :mod:`more_cli.data`.
- **Transfer**: with ``transfer.from_run`` the run starts from a trained run's adapter and
  trains only the recipe's new tasks, leaving the old ones bit-for-bit (:mod:`more_cli.transfer`).
- **Evaluation**: every ``train.eval_every`` steps on the model-selection split
  (``val_select``, or ``validation`` without ``data.split_validation``); the best average
  headline metric is checkpointed and kept; ``train.early_stopping_patience`` evaluations
  without improvement stop the run. The final adapter (best, else last) is scored on the
  test split (``val_test`` / ``validation``) into ``eval.json``.
- **Checkpoints**: every ``train.save_every`` steps and at every new best, the last
  ``train.keep_checkpoints`` plus the best are kept. ``resume=True`` restores weights,
  optimizer, scheduler, sampler position, RNG and step: on CPU with a fixed seed a resumed run
  ends bitwise identical to an uninterrupted one. (Several processes: the main process's RNG
  is saved and restored on every process.)
- **Engines**: one process, DDP, FSDP2 and DeepSpeed ZeRO-1/2, all through accelerate
  (:mod:`more_cli.engines`). Adapter, heads and checkpoints hold whole tensors whatever
  the engine (gathered from FSDP2 shards, :mod:`more_cli.sharded`); only DeepSpeed's
  optimizer partitions stay in its own format, in ``trainer/deepspeed/``.
- **Signals**: SIGINT / SIGTERM save a checkpoint at the next step boundary, mark the run
  ``interrupted`` and raise :class:`TrainingInterrupted` (exit code 130 / 143).
- **Logging**: a rich progress bar on a terminal, plain lines otherwise; always
  ``metrics.jsonl``; ``train.trackers`` through accelerate. Only the main process writes.

Raises:
    UserError: bad recipe for this machine, a run directory that already holds a run (fix:
        ``--resume``, or another ``--output-dir``), a recipe changed in a way resuming cannot
        honour, or a loss that became NaN / infinite (the last good checkpoint is kept).
"""

from __future__ import annotations

import contextlib
import math
import os
import random
import shutil
import signal
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.utils import set_seed
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table
from safetensors.torch import save_file
from torch import nn
from torch.utils.data import DataLoader

from more_cli import data as data_lib
from more_cli import engines
from more_cli.adapters import MultiTaskAdapter, inject_adapter, load_adapter_weights, save_adapter
from more_cli.adapters.state import adapter_tensors, check_same_adapter, read_weights
from more_cli.errors import UserError
from more_cli.evaluation import predict
from more_cli.launch import use_cpu_process_group
from more_cli.modeling import (
    HeadSpec,
    adapter_host,
    head_tensors,
    load_base,
    load_heads,
    save_heads,
)
from more_cli.recipe import Recipe
from more_cli.recipe_io import dump_resolved, load_recipe
from more_cli.run_loading import load_run
from more_cli.rundir import (
    FORMAT_VERSION,
    RunDir,
    append_jsonl,
    atomic_directory,
    atomic_write_json,
    is_complete,
    latest_checkpoint,
    mark_complete,
    prune_checkpoints,
    read_json,
    read_run_info,
    truncate_metrics,
    write_run_info,
)
from more_cli.sharded import shard_like, whole
from more_cli.tasks import Task, compute_metrics, get_task, glue_average
from more_cli.transfer import old_task_names, resolve_transfer, start_transfer

# Recipe keys that may change between a run and its resumption; anything else would make
# the resumed run a different experiment than the checkpoint it starts from.
RESUMABLE_CHANGES = frozenset(
    {
        "output_dir", "data.num_workers", "train.max_steps", "train.epochs",
        "train.eval_every", "train.save_every", "train.keep_checkpoints",
        "train.early_stopping_patience", "train.log_every", "train.trackers",
        "train.eval_batch_size",
    }
)  # fmt: skip
_SIGNAL_EXIT_CODES = {signal.SIGINT: 130, signal.SIGTERM: 143}
_NO_DECAY_MARKERS = ("bias", "norm", "embedding")


class TrainingInterrupted(Exception):
    """Training stopped on SIGINT / SIGTERM after saving a checkpoint."""

    def __init__(self, signal_number: int, run_dir: Path) -> None:
        super().__init__(f"interrupted by {signal.Signals(signal_number).name}")
        self.exit_code = _SIGNAL_EXIT_CODES.get(signal_number, 128 + signal_number)
        self.run_dir = run_dir


@dataclass
class TrainerState:
    """Loop counters saved with every checkpoint (JSON)."""

    step: int = 0
    best_metric: float | None = None
    best_step: int | None = None
    evals_without_improvement: int = 0


@dataclass
class Session:
    """Everything the loop works on, built once by :func:`_setup`."""

    recipe: Recipe
    run: RunDir
    accelerator: Accelerator
    tasks: list[Task]
    family: str
    tokenizer: Any
    model: nn.Module
    adapter: MultiTaskAdapter
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    batches: TrainBatches
    total_steps: int
    state: TrainerState = field(default_factory=TrainerState)

    def say(self, message: str) -> None:
        if self.accelerator.is_main_process:
            print(message, flush=True)

    @property
    def trained_tasks(self) -> list[str]:
        """The tasks this run trains: all of them, or a transfer's new tasks."""
        return [task.name for task in self.tasks[self.batches.first_task_id :]]


# =============================================================================================
# Entry points


def train(recipe: Recipe, resume: bool = False) -> Path:
    """Train ``recipe`` into ``recipe.output_dir`` and return the run directory.

    Raises:
        UserError: see the module docstring.
        TrainingInterrupted: SIGINT / SIGTERM; a checkpoint was saved, the run can resume.
    """
    recipe = resolve_transfer(recipe)
    run = RunDir(Path(recipe.output_dir))
    checkpoint = _check_run_dir(run, recipe, resume)
    session = _setup(recipe, run)
    if checkpoint is not None:
        _restore_checkpoint(session, checkpoint)
        session.say(f"resuming {run.root} from {checkpoint.name}")
    else:
        _start_run(session, resumed=resume)
    try:
        with _SignalCatcher() as signals:
            _init_trackers(session)
            _fit(session, signals)
        _finish(session)
    except TrainingInterrupted:
        raise
    except BaseException as error:
        if session.accelerator.is_main_process:
            write_run_info(run, status="failed", step=session.state.step, error=str(error))
        raise
    return run.root


def evaluate_run(
    run_dir: Path,
    tasks: Sequence[str] | None = None,
    split: str | None = None,
    checkpoint: str | None = None,
) -> dict[str, Any]:
    """Score a run's adapter (or ``checkpoints/<checkpoint>``) and write ``eval.json``.

    Args:
        run_dir: a run directory written by :func:`train`.
        tasks: task names to score (default: all the run's tasks).
        split: split to score (default: the test split, ``val_test`` or ``validation``).
        checkpoint: ``step-N`` to score a checkpoint instead of ``adapter/``.

    Returns:
        The report written to ``eval.json``: ``split``, ``source``, ``tasks``
        (``{task: {metric: value}}``) and ``average`` (of the headline metrics).
    """
    loaded = load_run(run_dir, checkpoint)
    recipe = loaded.recipe
    all_tasks = [get_task(cfg, seed=recipe.train.seed) for cfg in recipe.tasks]
    _check_task_names(all_tasks, tasks)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    if not recipe.model.load_in_4bit:  # a 4-bit model is placed by its device_map
        loaded.model.to(device)
    split = split or _test_split(recipe)
    report = score_tasks(
        loaded.model, loaded.tokenizer, loaded.family, all_tasks, recipe, split, device,
        only=tasks,
    )  # fmt: skip
    report["source"] = loaded.source.relative_to(loaded.root).as_posix()
    atomic_write_json(RunDir(loaded.root).eval, report)
    return report


def metrics_table(report: dict[str, Any]) -> Table:
    """A rich table: one row per task, one column per metric, the average last."""
    names = {name for values in report["tasks"].values() for name in values} - {"headline"}
    metrics = [*sorted(names), "headline"]
    table = Table(title=f"{report['source']} on {report['split']}")
    table.add_column("task")
    for name in metrics:
        table.add_column(name, justify="right")
    for task, values in report["tasks"].items():
        table.add_row(task, *(_cell(values.get(name)) for name in metrics))
    table.add_section()
    table.add_row("average (headline)", *([""] * (len(metrics) - 1)), _cell(report["average"]))
    return table


# =============================================================================================
# Set-up


def _check_run_dir(run: RunDir, recipe: Recipe, resume: bool) -> Path | None:
    """Refuse to overwrite a run; for ``resume`` return the checkpoint to start from."""
    info = read_run_info(run)
    if not resume:
        if info is not None:
            raise UserError(
                f"{run.root} already holds a run (status: {info.get('status')})",
                details=[
                    f"continue it with: more train {run.root} --resume",
                    "or start a new run elsewhere with --output-dir <new folder>",
                ],
            )
        if run.root.exists() and any(run.root.iterdir()):
            raise UserError(
                f"output directory {run.root} is not empty and is not a run directory",
                details=["choose a new or empty folder with --output-dir"],
            )
        return None
    if info is None:
        raise UserError(
            f"nothing to resume: {run.root} holds no run",
            details=["start it without --resume"],
        )
    if info.get("status") == "finished":
        raise UserError(
            f"the run in {run.root} has already finished",
            details=[f"score it with: more eval {run.root}", "or train anew with --output-dir"],
        )
    _check_same_experiment(run, recipe)
    return latest_checkpoint(run)


def _check_same_experiment(run: RunDir, recipe: Recipe) -> None:
    stored = _flatten(load_recipe(run.recipe, resolved=True).model_dump(mode="json"))
    current = _flatten(recipe.model_dump(mode="json"))
    changed = sorted(
        key
        for key in stored.keys() | current.keys()
        if stored.get(key) != current.get(key) and key not in RESUMABLE_CHANGES
    )
    if changed:
        raise UserError(
            f"the recipe differs from the one {run.root} was started with: {', '.join(changed)}",
            details=[
                f"resume with the run's own recipe: more train {run.root} --resume",
                f"keys that may change on resume: {', '.join(sorted(RESUMABLE_CHANGES))}",
            ],
        )


def _flatten(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` → ``{"a.b": 1}``."""
    flat: dict[str, Any] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{name}."))
        else:
            flat[name] = value
    return flat


def _make_accelerator(recipe: Recipe, run: RunDir) -> Accelerator:
    precision = recipe.train.precision
    if precision == "fp16" and not torch.cuda.is_available():
        raise UserError(
            "train.precision fp16 needs a CUDA GPU",
            details=["use train.precision=bf16 or fp32 on this machine"],
        )
    accelerator = Accelerator(
        cpu=use_cpu_process_group(),  # launched on a machine without GPUs: gloo on the CPU
        mixed_precision="no" if precision == "fp32" else precision,
        gradient_accumulation_steps=recipe.train.grad_accum,
        log_with=list(recipe.train.trackers) or None,
        project_dir=str(run.root),
    )
    engines.check_engine(accelerator, recipe)
    return accelerator


def _setup(recipe: Recipe, run: RunDir) -> Session:
    accelerator = _make_accelerator(recipe, run)
    set_seed(recipe.train.seed)
    tasks = [get_task(cfg, seed=recipe.train.seed) for cfg in recipe.tasks]
    device_index = accelerator.local_process_index if accelerator.device.type == "cuda" else None
    model, tokenizer, family = load_base(
        recipe.model, [HeadSpec.for_task(t) for t in tasks], device_index=device_index
    )
    old = old_task_names(recipe)  # a transfer trains only the tasks after these
    if old:
        adapter = start_transfer(model, recipe)
    else:
        adapter = inject_adapter(adapter_host(model), recipe.adapter, recipe.task_names)
    batches = TrainBatches(recipe, tasks[len(old) :], tokenizer, family, accelerator, len(old))
    total_steps = _total_steps(recipe, max(batches.task_sizes), accelerator.num_processes)
    optimizer = _make_optimizer(model, recipe)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, _lr_factor(recipe.train.scheduler, recipe.train.warmup_steps, total_steps)
    )
    engines.configure(accelerator, recipe)
    model, optimizer = accelerator.prepare(model, optimizer)
    description = engines.describe(accelerator)
    if description and accelerator.is_main_process:
        print(description, flush=True)
    return Session(
        recipe, run, accelerator, tasks, family, tokenizer, model, adapter,
        optimizer, scheduler, batches, total_steps,
    )  # fmt: skip


def _total_steps(recipe: Recipe, largest_task: int, num_processes: int) -> int:
    """``train.max_steps``, else ``train.epochs`` passes over the largest task."""
    if recipe.train.max_steps is not None:
        return recipe.train.max_steps
    per_step = recipe.train.batch_size * recipe.train.grad_accum * num_processes
    return max(1, math.ceil(recipe.train.epochs * largest_task / per_step))


def _lr_factor(kind: str, warmup: int, total: int) -> Callable[[int], float]:
    """Multiplier of the peak lr at a step: linear warm-up, then linear / cosine / constant."""

    def factor(step: int) -> float:
        if step < warmup:
            return step / warmup
        if kind == "constant":
            return 1.0
        progress = min((step - warmup) / max(total - warmup, 1), 1.0)
        if kind == "linear":
            return 1.0 - progress
        return 0.5 * (1.0 + math.cos(math.pi * progress))

    return factor


def _make_optimizer(model: nn.Module, recipe: Recipe) -> torch.optim.Optimizer:
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if param.requires_grad:
            lowered = name.lower()
            no_wd = param.ndim < 2 or any(m in lowered for m in _NO_DECAY_MARKERS)
            (no_decay if no_wd else decay).append(param)
    if not decay and not no_decay:
        raise UserError("nothing to train: the model has no trainable parameters")
    groups = [
        {"params": decay, "weight_decay": recipe.train.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    return torch.optim.AdamW([g for g in groups if g["params"]], lr=recipe.train.lr)


def _start_run(session: Session, *, resumed: bool) -> None:
    """Write the resolved recipe and ``run.json`` of a fresh run."""
    run, recipe = session.run, session.recipe
    if resumed:
        session.say(f"no complete checkpoint in {run.root}; starting from step 0")
    if session.accelerator.is_main_process:
        run.root.mkdir(parents=True, exist_ok=True)
        dump_resolved(recipe, run.recipe)
        truncate_metrics(run.metrics, after_step=0)
        write_run_info(
            run,
            status="running",
            tasks=recipe.task_names,
            family=session.family,
            base_model=recipe.model.name,
            adapter_kind=recipe.adapter.kind,
            total_steps=session.total_steps,
            step=0,
            parameters=session.adapter.parameter_counts(),
        )
    session.accelerator.wait_for_everyone()


class TrainBatches:
    """This process's endless stream of training micro-batches, resumable.

    Wraps :class:`~more_cli.data.MultiTaskBatchSampler` (sharded per process) in a
    DataLoader and counts the batches the loop has consumed, so the saved sampler state is
    the one just after them even when workers prefetch ahead. ``tasks`` are the trained
    tasks; the first one has task id ``first_task_id`` (a transfer's new tasks follow the
    run's old ones).
    """

    def __init__(
        self, recipe: Recipe, tasks: list[Task], tokenizer: Any, family: str,
        accelerator: Accelerator, first_task_id: int = 0,
    ) -> None:  # fmt: skip
        self.first_task_id = first_task_id
        cache = data_lib.FeatureCache(
            tokenizer, family, recipe.data.max_source_length, recipe.data.max_target_length
        )
        dataset = data_lib.MultiTaskDataset([cache.features(task, "train") for task in tasks])
        self.task_sizes = dataset.sizes
        self.sampler = data_lib.MultiTaskBatchSampler(
            dataset.sizes, recipe.train.batch_size, recipe.data.sampling,
            recipe.data.temperature, seed=recipe.train.seed,
            num_replicas=accelerator.num_processes, rank=accelerator.process_index,
        )  # fmt: skip
        # An own generator: creating the loader's iterator must not draw from the global
        # RNG, or a resumed run's dropout would differ from an uninterrupted one.
        self.loader = DataLoader(
            dataset,
            batch_sampler=self.sampler,
            collate_fn=data_lib.Collator(data_lib.pad_token_id(tokenizer), family),
            num_workers=recipe.data.num_workers,
            generator=torch.Generator().manual_seed(recipe.train.seed),
        )
        self.consumed = 0

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        for batch in self.loader:
            self.consumed += 1
            batch["task_ids"] += self.first_task_id
            yield batch

    def state_dict(self) -> dict[str, Any]:
        return self.sampler.state_dict(consumed=self.consumed)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.sampler.load_state_dict(state)
        self.consumed = 0


# =============================================================================================
# The loop


def _fit(session: Session, signals: _SignalCatcher) -> None:
    """Optimizer steps until ``total_steps``, early stopping, or a signal."""
    acc, state, cfg = session.accelerator, session.state, session.recipe.train
    window = _LossWindow()
    with _progress(session) as show_progress:
        for batch in session.batches:
            if state.step >= session.total_steps:
                break
            session.model.train()
            with acc.accumulate(session.model):
                loss, task_loss, aux_loss = _forward(session, batch)
                _check_finite(session, loss)
                acc.backward(loss)
                if acc.sync_gradients:
                    if cfg.max_grad_norm is not None:
                        acc.clip_grad_norm_(session.model.parameters(), cfg.max_grad_norm)
                    session.optimizer.step()
                    session.scheduler.step()
                    session.optimizer.zero_grad(set_to_none=True)
            window.add(task_loss, aux_loss, batch["input_ids"].shape[0])
            if not acc.sync_gradients:
                continue
            state.step += 1
            if state.step % cfg.log_every == 0 or state.step == session.total_steps:
                _log(session, window.flush(session))
            show_progress(state.step, window.last_loss)
            improved = _evaluate_if_due(session)
            received = _signal_on_any_process(session, signals)
            if improved or _due(state.step, cfg.save_every) or received is not None:
                _save_checkpoint(session)
            if received is not None:
                _interrupt(session, received)
            if _patience_exhausted(session):
                session.say(
                    f"early stopping at step {state.step}: no better evaluation in "
                    f"{state.evals_without_improvement} evaluations"
                )
                break


def _forward(
    session: Session, batch: dict[str, torch.Tensor]
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Total loss, task loss and the adapter's weighted auxiliary loss of one micro-batch."""
    batch = {key: value.to(session.accelerator.device) for key, value in batch.items()}
    with session.accelerator.autocast():
        task_loss = session.model(**batch).loss
    aux_loss = session.adapter.auxiliary_loss()
    if aux_loss is None:
        return task_loss, task_loss, None
    return task_loss + aux_loss, task_loss, aux_loss


def _check_finite(session: Session, loss: torch.Tensor) -> None:
    """Stop before a NaN / infinite loss reaches the weights (on every process alike)."""
    if bool(torch.isfinite(session.accelerator.gather(loss.detach()[None])).all()):
        return
    state, run = session.state, session.run
    last_good = latest_checkpoint(run)
    raise UserError(
        f"the loss became {loss.item()} at step {state.step + 1}; training stopped",
        details=[
            f"last good checkpoint: {last_good}" if last_good else "no checkpoint was saved",
            "lower train.lr, keep train.max_grad_norm set, or use train.precision=fp32",
        ],
    )


def _due(step: int, every: int | None) -> bool:
    return every is not None and step % every == 0


def _patience_exhausted(session: Session) -> bool:
    patience = session.recipe.train.early_stopping_patience
    return patience is not None and session.state.evals_without_improvement >= patience


class _LossWindow:
    """Running means of the losses between two log lines, and throughput."""

    def __init__(self) -> None:
        self.last_loss: float | None = None
        self._reset()

    def _reset(self) -> None:
        self.task_loss, self.aux_loss, self.micro_batches, self.samples = 0.0, 0.0, 0, 0
        self.has_aux = False
        self.started = time.perf_counter()

    def add(self, task_loss: torch.Tensor, aux_loss: torch.Tensor | None, samples: int) -> None:
        self.task_loss += task_loss.item()
        if aux_loss is not None:
            self.aux_loss += aux_loss.item()
            self.has_aux = True
        self.micro_batches += 1
        self.samples += samples
        self.last_loss = task_loss.item()

    def flush(self, session: Session) -> dict[str, float]:
        elapsed = max(time.perf_counter() - self.started, 1e-9)
        sums = [self.task_loss, self.aux_loss, self.micro_batches, self.samples]
        acc = session.accelerator
        if acc.num_processes > 1:  # every process logs the figures of all of them
            local = torch.tensor(sums, dtype=torch.float64, device=acc.device)
            sums = acc.reduce(local, "sum").tolist()
        task_loss, aux_loss, micro_batches, samples = sums
        record = {
            "loss": task_loss / max(micro_batches, 1),
            "lr": session.scheduler.get_last_lr()[0],
            "samples_per_s": samples / elapsed,
        }
        if self.has_aux:
            record["aux_loss"] = aux_loss / max(micro_batches, 1)
        self._reset()
        return record


def _log(session: Session, values: dict[str, Any]) -> None:
    """One record in metrics.jsonl and the trackers; a plain line when not on a terminal."""
    step = session.state.step
    session.accelerator.log(
        {k: v for k, v in values.items() if isinstance(v, (int, float))}, step=step
    )
    if not session.accelerator.is_main_process:
        return
    append_jsonl(session.run.metrics, {"step": step, **values})
    if not sys.stdout.isatty() and "loss" in values:
        extra = f" aux {values['aux_loss']:.4f}" if "aux_loss" in values else ""
        session.say(
            f"step {step}/{session.total_steps} loss {values['loss']:.4f}{extra} "
            f"lr {values['lr']:.2e} {values['samples_per_s']:.1f} samples/s"
        )


@contextlib.contextmanager
def _progress(session: Session) -> Iterator[Any]:
    """Yield ``show(step, loss)``: a rich bar on a terminal (main process), else a no-op."""
    if not (session.accelerator.is_main_process and sys.stdout.isatty()):
        yield lambda step, loss: None
        return
    columns = (
        TextColumn("[bold]train"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
        TextColumn("{task.fields[status]}"),
    )  # fmt: skip
    with Progress(*columns) as bar:
        task = bar.add_task(
            "train", total=session.total_steps, status="", completed=session.state.step
        )
        started, first_step = time.perf_counter(), session.state.step

        def show(step: int, loss: float | None) -> None:
            rate = (step - first_step) / max(time.perf_counter() - started, 1e-9)
            lr = session.scheduler.get_last_lr()[0]
            status = f"loss {loss:.4f} lr {lr:.2e} {rate:.2f} steps/s" if loss is not None else ""
            bar.update(task, completed=step, status=status)

        yield show


# =============================================================================================
# Evaluation during and after training


def _evaluate_if_due(session: Session) -> bool:
    """Evaluate on the model-selection split when due; True when this is a new best."""
    state = session.state
    if not _due(state.step, session.recipe.train.eval_every):
        return False
    report = _evaluate_in_training(
        session, _selection_split(session.recipe), only=session.trained_tasks
    )
    _log(session, {"split": report["split"], "eval": report["tasks"], "average": report["average"]})
    session.say(f"step {state.step}: {report['split']} average {report['average']:.4f}")
    if state.best_metric is None or report["average"] > state.best_metric:
        state.best_metric, state.best_step = report["average"], state.step
        state.evals_without_improvement = 0
        return True
    state.evals_without_improvement += 1
    return False


def _evaluate_in_training(
    session: Session, split: str, only: Sequence[str] | None = None
) -> dict[str, Any]:
    model = session.accelerator.unwrap_model(session.model)
    report = score_tasks(
        model, session.tokenizer, session.family, session.tasks, session.recipe, split,
        session.accelerator.device, only=only,
    )  # fmt: skip
    report["source"] = f"step-{session.state.step}"
    return report


def score_tasks(
    model: nn.Module,
    tokenizer: Any,
    family: str,
    tasks: Sequence[Task],
    recipe: Recipe,
    split: str,
    device: torch.device | str,
    only: Sequence[str] | None = None,
) -> dict[str, Any]:
    """Metrics of ``tasks`` (the run's task list, in order: position = task id) on ``split``.

    ``only`` restricts scoring to those task names. Returns ``{"split", "tasks": {task:
    {metric: value, "headline": value}}, "average"}`` (mean headline, 0-100).
    """
    results = {}
    for task_id, task in enumerate(tasks):
        if only and task.name not in only:
            continue
        examples = task.load_split(split)
        predictions = predict(
            model, tokenizer, task, examples, family,
            recipe.train.eval_batch_size or recipe.train.batch_size, device, task_id=task_id,
            max_source_length=recipe.data.max_source_length,
            max_target_length=recipe.data.max_target_length,
        )  # fmt: skip
        references = [example.label for example in examples]
        results[task.name] = compute_metrics(task, [p.label for p in predictions], references)
    return {"split": split, "tasks": results, "average": glue_average(results)}


def _selection_split(recipe: Recipe) -> str:
    return "val_select" if recipe.data.split_validation else "validation"


def _test_split(recipe: Recipe) -> str:
    return "val_test" if recipe.data.split_validation else "validation"


def _check_task_names(tasks: list[Task], names: Sequence[str] | None) -> None:
    unknown = [name for name in names or [] if name not in {task.name for task in tasks}]
    if unknown:
        raise UserError(
            f"this run has no task {', '.join(unknown)}",
            details=[f"its tasks are: {', '.join(task.name for task in tasks)}"],
        )


def _cell(value: float | None) -> str:
    return "" if value is None else f"{value:.4f}"


def _finish(session: Session) -> None:
    """Write adapter/ (best, else last), score it on the test split, mark the run finished."""
    acc, state, run = session.accelerator, session.state, session.run
    if state.best_step is not None and state.best_step != state.step:
        best = run.checkpoint(state.best_step) / "adapter"
        load_adapter_weights(session.adapter, best)
        load_heads(_model(session), best)
    # Every process gathers and evaluates (under FSDP2 both need all of them); main writes.
    adapter, heads = adapter_tensors(session.adapter), head_tensors(_model(session))
    report = _evaluate_in_training(session, _test_split(session.recipe))
    report["source"] = "adapter"
    if acc.is_main_process:
        with atomic_directory(run.adapter) as directory:
            _write_adapter(session, directory, adapter, heads)
        atomic_write_json(run.eval, report)
        write_run_info(
            run, status="finished", step=state.step, best_step=state.best_step,
            best_metric=state.best_metric, test_average=report["average"],
        )  # fmt: skip
        session.say(f"{report['split']} average {report['average']:.4f}; adapter in {run.adapter}")
    acc.wait_for_everyone()
    acc.end_training()


# =============================================================================================
# Checkpoints


def _model(session: Session) -> nn.Module:
    return session.accelerator.unwrap_model(session.model)


def _write_adapter(
    session: Session,
    directory: Path,
    adapter: dict[str, torch.Tensor],
    heads: dict[str, torch.Tensor],
) -> None:
    save_adapter(session.adapter, directory, adapter)
    save_heads(_model(session), directory, heads)


def _save_checkpoint(session: Session) -> None:
    """``checkpoints/step-N``: adapter/ + trainer/ (optimizer, scheduler, sampler, RNG)."""
    acc, run, state = session.accelerator, session.run, session.state
    # Gathered on every process (a collective under FSDP2), written by the main one.
    adapter, heads = adapter_tensors(session.adapter), head_tensors(_model(session))
    optimizer_tensors, optimizer_rest, engine_state = None, None, None
    if engines.is_deepspeed(acc):  # every process writes its optimizer partition
        engine_state = run.checkpoints / f".tmp-engine-step-{state.step}"
        engines.save_engine_state(session.model, engine_state)
        acc.wait_for_everyone()
    else:
        optimizer_tensors, optimizer_rest = _split_optimizer_state(session.optimizer.state_dict())
    if acc.is_main_process and not is_complete(run.checkpoint(state.step)):
        with atomic_directory(run.checkpoint(state.step)) as directory:
            _write_adapter(session, directory / "adapter", adapter, heads)
            _write_trainer_state(session, directory / "trainer", optimizer_tensors, optimizer_rest)
            if engine_state is not None:
                os.replace(engine_state, directory / "trainer" / engines.ENGINE_STATE_DIR)
            mark_complete(directory)
        prune_checkpoints(run, session.recipe.train.keep_checkpoints, state.best_step)
        write_run_info(run, status="running", step=state.step, best_step=state.best_step)
    elif acc.is_main_process and engine_state is not None:
        shutil.rmtree(engine_state, ignore_errors=True)
    acc.wait_for_everyone()


def _write_trainer_state(
    session: Session,
    directory: Path,
    optimizer_tensors: dict[str, torch.Tensor] | None,
    optimizer_rest: dict[str, Any] | None,
) -> None:
    """Loop state as JSON and safetensors; the optimizer's too, unless DeepSpeed holds it."""
    directory.mkdir()
    if optimizer_tensors is not None:
        save_file(optimizer_tensors, str(directory / "optimizer.safetensors"))
    save_file(_torch_rng_state(), str(directory / "rng.safetensors"))
    scaler = session.accelerator.scaler
    atomic_write_json(
        directory / "state.json",
        {
            "format_version": FORMAT_VERSION,
            "trainer": asdict(session.state),
            "optimizer": optimizer_rest,
            "scheduler": session.scheduler.state_dict(),
            "sampler": session.batches.state_dict(),
            "grad_scaler": scaler.state_dict() if scaler is not None else None,
            "python_rng": random.getstate(),
            "numpy_rng": _numpy_rng_state(),
        },
    )


def _restore_checkpoint(session: Session, checkpoint: Path) -> None:
    """Load everything :func:`_save_checkpoint` wrote; drop metrics logged after it."""
    check_same_adapter(session.adapter, checkpoint / "adapter")
    load_adapter_weights(session.adapter, checkpoint / "adapter")
    load_heads(_model(session), checkpoint / "adapter")
    trainer = checkpoint / "trainer"
    saved = read_json(trainer / "state.json")
    session.state = TrainerState(**saved["trainer"])
    _restore_optimizer(session, trainer, saved["optimizer"])
    session.scheduler.load_state_dict(saved["scheduler"])
    session.batches.load_state_dict(saved["sampler"])
    if saved["grad_scaler"] is not None and session.accelerator.scaler is not None:
        session.accelerator.scaler.load_state_dict(saved["grad_scaler"])
    version, internal, gauss = saved["python_rng"]
    random.setstate((version, tuple(internal), gauss))
    _set_numpy_rng_state(saved["numpy_rng"])
    _set_torch_rng_state(read_weights(trainer / "rng.safetensors"))
    if session.accelerator.is_main_process:
        truncate_metrics(session.run.metrics, after_step=session.state.step)
        write_run_info(session.run, status="running", step=session.state.step)


def _restore_optimizer(session: Session, trainer: Path, rest: dict[str, Any] | None) -> None:
    engine_state = trainer / engines.ENGINE_STATE_DIR
    if engine_state.is_dir() != engines.is_deepspeed(session.accelerator):
        written = "under DeepSpeed" if engine_state.is_dir() else "without DeepSpeed"
        raise UserError(
            f"{trainer.parent} was written {written}; its optimizer state cannot be "
            "restored under this accelerate set-up",
            details=["resume with the accelerate config (and process count) the run used"],
        )
    if engine_state.is_dir():
        engines.load_engine_state(session.model, engine_state)
        return
    tensors = read_weights(trainer / "optimizer.safetensors")
    session.optimizer.load_state_dict(
        _join_optimizer_state(tensors, rest, _optimized_parameters(session))
    )


def _split_optimizer_state(state: dict[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Optimizer state as whole safetensors tensors (``<param>.<key>``) + a JSON remainder.

    Under FSDP2 the state of a sharded parameter is sharded too: gathering it is a
    collective, so every process calls this.
    """
    tensors: dict[str, torch.Tensor] = {}
    rest: dict[str, Any] = {"param_groups": state["param_groups"], "state": {}}
    for index, values in state["state"].items():
        for key, value in values.items():
            if isinstance(value, torch.Tensor):
                tensors[f"{index}.{key}"] = whole(value.detach()).contiguous().cpu()
            else:
                rest["state"].setdefault(str(index), {})[key] = value
    return tensors, rest


def _join_optimizer_state(
    tensors: dict[str, torch.Tensor], rest: dict[str, Any], parameters: list[torch.Tensor]
) -> dict[str, Any]:
    """The optimizer state dict from :func:`_split_optimizer_state`'s parts; the state of a
    sharded parameter (``parameters`` in optimizer order) is cut to this process's shard."""
    state: dict[int, dict[str, Any]] = {int(i): dict(v) for i, v in rest["state"].items()}
    for name, tensor in tensors.items():
        index, key = name.split(".", 1)
        parameter = parameters[int(index)]
        if tensor.shape == parameter.shape:  # moments follow the parameter; `step` does not
            tensor = shard_like(tensor, parameter)
        state.setdefault(int(index), {})[key] = tensor
    return {"state": state, "param_groups": rest["param_groups"]}


def _optimized_parameters(session: Session) -> list[torch.Tensor]:
    """The optimizer's parameters in the order its state dict numbers them."""
    return [p for group in session.optimizer.param_groups for p in group["params"]]


def _torch_rng_state() -> dict[str, torch.Tensor]:
    state = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.stack(torch.cuda.get_rng_state_all())
    return state


def _set_torch_rng_state(state: dict[str, torch.Tensor]) -> None:
    torch.set_rng_state(state["cpu"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(list(state["cuda"]))


def _numpy_rng_state() -> list[Any]:
    name, keys, position, has_gauss, cached = np.random.get_state()
    return [name, keys.tolist(), position, has_gauss, cached]


def _set_numpy_rng_state(state: list[Any]) -> None:
    name, keys, position, has_gauss, cached = state
    np.random.set_state((name, np.array(keys, dtype=np.uint32), position, has_gauss, cached))


# =============================================================================================
# Signals


class _SignalCatcher:
    """Record SIGINT / SIGTERM so the loop can checkpoint at the next step boundary.

    A second signal of the same kind restores the default behaviour (stop at once).
    """

    def __init__(self) -> None:
        self.received: int | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> _SignalCatcher:
        for number in _SIGNAL_EXIT_CODES:
            with contextlib.suppress(ValueError):  # not the main thread: leave signals alone
                self._previous[number] = signal.signal(number, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for number, handler in self._previous.items():
            signal.signal(number, handler)

    def _handle(self, number: int, frame: Any) -> None:
        if self.received is not None:
            signal.signal(number, self._previous.get(number, signal.SIG_DFL))
            signal.raise_signal(number)
            return
        self.received = number


def _signal_on_any_process(session: Session, signals: _SignalCatcher) -> int | None:
    """The signal some process received, so that all checkpoint and stop at the same step."""
    acc = session.accelerator
    if acc.num_processes == 1:
        return signals.received
    number = torch.tensor([signals.received or 0], device=acc.device)
    return int(acc.gather(number).max()) or None


def _interrupt(session: Session, signal_number: int) -> None:
    run = session.run
    if session.accelerator.is_main_process:
        write_run_info(run, status="interrupted", step=session.state.step)
    session.say(
        f"interrupted at step {session.state.step}; checkpoint saved.\n"
        f"  resume with: more train {run.root} --resume"
    )
    session.accelerator.end_training()
    raise TrainingInterrupted(signal_number, run.root)


def _init_trackers(session: Session) -> None:
    if session.recipe.train.trackers:
        flat = _flatten(session.recipe.model_dump(mode="json"))
        config = {
            k: v if isinstance(v, int | float | str | bool) else str(v) for k, v in flat.items()
        }
        session.accelerator.init_trackers("more", config=config)
