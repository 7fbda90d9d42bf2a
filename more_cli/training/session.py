"""A training session: the run-directory checks, the model, adapter, optimizer, schedule and
batches one run trains with, built once by :func:`setup`; and the start of a fresh run."""

from __future__ import annotations

import importlib.util
import math
import shlex
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.utils import set_seed
from torch import nn
from torch.utils.data import DataLoader

from more_cli import data as data_lib
from more_cli import engines
from more_cli.adapters import MultiTaskAdapter, inject_adapter
from more_cli.errors import UserError
from more_cli.evaluation.scoring import selection_split, test_split
from more_cli.launch import use_cpu_process_group
from more_cli.modeling import (
    HeadSpec,
    adapter_host,
    load_base,
)
from more_cli.recipe import Recipe
from more_cli.recipe_io import dump_resolved, load_recipe
from more_cli.rundir import (
    RunDir,
    newest_good_checkpoint,
    read_run_info,
    truncate_metrics,
    write_run_info,
)
from more_cli.tasks import Task, get_task
from more_cli.transfer import old_task_names, start_transfer

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


_NO_DECAY_MARKERS = ("bias", "norm", "embedding")


@dataclass
class TrainerState:
    """Loop counters saved with every checkpoint (JSON)."""

    step: int = 0
    best_metric: float | None = None
    best_step: int | None = None
    evals_without_improvement: int = 0


def say_on_main(accelerator: Accelerator, message: str) -> None:
    """Print ``message`` once, on the main process."""
    if accelerator.is_main_process:
        print(message, flush=True)


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
        say: Callable[[str], None] = lambda line: None,
    ) -> None:  # fmt: skip
        self.first_task_id = first_task_id
        cache = data_lib.FeatureCache(
            tokenizer, family, recipe.data.max_source_length, recipe.data.max_target_length
        )
        features = []
        for task in tasks:
            started = time.perf_counter()
            features.append(cache.features(task, "train"))
            seconds = time.perf_counter() - started
            say(f"tokenized {task.name}: {len(features[-1]):,} training rows ({seconds:.1f} s)")
        dataset = data_lib.MultiTaskDataset(features)
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


@dataclass
class Session:
    """Everything the loop works on, built once by :func:`setup`."""

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
        say_on_main(self.accelerator, message)

    @property
    def trained_tasks(self) -> list[str]:
        """The tasks this run trains: all of them, or a transfer's new tasks."""
        return [task.name for task in self.tasks[self.batches.first_task_id :]]


def check_run_dir(run: RunDir, recipe: Recipe, resume: bool) -> tuple[Path | None, list[str]]:
    """Refuse to overwrite a run; for ``resume`` return the checkpoint to start from (the
    newest that passes its manifest) and a line for each newer one passed over as damaged."""
    info, shown = read_run_info(run), shlex.quote(str(run.root))  # hints a shell can run
    if not resume:
        if info is not None:
            # Every hint must be a command that works: a finished run cannot be resumed.
            finished = info.get("status") == "finished"
            next_step = (
                f"score it with: more eval {shown}"
                if finished
                else f"continue it with: more train {shown} --resume"
            )
            raise UserError(
                f"{run.root} already holds a run (status: {info.get('status')})",
                details=[next_step, "or start a new run elsewhere with --output-dir <new folder>"],
            )
        if run.root.exists() and any(run.root.iterdir()):
            raise UserError(
                f"output directory {run.root} is not empty and is not a run directory",
                details=["choose a new or empty folder with --output-dir"],
            )
        return None, []
    if info is None:
        raise UserError(
            f"nothing to resume: {run.root} holds no run",
            details=["start it without --resume"],
        )
    if info.get("status") == "finished":
        raise UserError(
            f"the run in {run.root} has already finished",
            details=[
                f"score it with: more eval {shown}",
                "or train anew with --output-dir",
            ],
        )
    _check_same_experiment(run, recipe)
    checkpoint, passed_over = newest_good_checkpoint(run)
    if checkpoint is None and passed_over:
        raise UserError(
            f"no checkpoint of {run.root} is intact, so the run cannot resume: {passed_over[0]}",
            details=[*passed_over, "restore a checkpoint from a copy, or train anew elsewhere"],
        )
    return checkpoint, passed_over


def _check_same_experiment(run: RunDir, recipe: Recipe) -> None:
    stored = flatten(load_recipe(run.recipe, resolved=True).model_dump(mode="json"))
    current = flatten(recipe.model_dump(mode="json"))
    changed = sorted(
        key
        for key in stored.keys() | current.keys()
        if stored.get(key) != current.get(key) and key not in RESUMABLE_CHANGES
    )
    if changed:
        shown = shlex.quote(str(run.root))
        raise UserError(
            f"the recipe differs from the one {run.root} was started with: {', '.join(changed)}",
            details=[
                f"resume with the run's own recipe: more train {shown} --resume",
                f"keys that may change on resume: {', '.join(sorted(RESUMABLE_CHANGES))}",
            ],
        )


def flatten(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` → ``{"a.b": 1}``."""
    flat: dict[str, Any] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = value
    return flat


# The package each accelerate tracker needs, and how to install it.
TRACKER_PACKAGES = {
    "tensorboard": (
        "tensorboard",
        "pip install 'more-cli[tracking]' (or: pip install tensorboard)",
    ),
    "wandb": ("wandb", "pip install wandb"),
    "mlflow": ("mlflow", "pip install mlflow"),
}


def _check_trackers(recipe: Recipe) -> None:
    """A tracker whose package is missing would log nothing (accelerate only warns)."""
    for tracker in recipe.train.trackers:
        package, install = TRACKER_PACKAGES[tracker]
        if importlib.util.find_spec(package) is None:
            raise UserError(
                f"train.trackers: {tracker} needs the {package} package, which is not "
                "installed; nothing was trained",
                details=[f"install it: {install}", f"or remove {tracker} from train.trackers"],
            )


def _make_accelerator(recipe: Recipe, run: RunDir) -> Accelerator:
    _check_trackers(recipe)
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


def _tasks_with_their_data(recipe: Recipe) -> list[Task]:
    """Every task of the recipe with every split the run will read loaded and checked now,
    before the model loads (a bad validation row must not surface after the last step):
    training rows of the trained tasks, their model-selection half when the run evaluates,
    and every task's test split. All problems are reported at once."""
    old = set(old_task_names(recipe))
    tasks, problems = [], []
    for cfg in recipe.tasks:
        trained = cfg.name not in old
        splits = ["train"] if trained else []
        if trained and recipe.train.eval_every is not None:
            splits.append(selection_split(recipe))
        splits.append(test_split(recipe))
        try:
            task = get_task(cfg, seed=recipe.train.seed)
            for split in splits:
                task.load_split(split)
        except UserError as error:
            problems.append(str(error))
            continue
        tasks.append(task)
    if problems:
        raise UserError(
            f"{len(problems)} task(s) cannot be read; nothing was trained: {problems[0]}",
            details=problems,
        )
    return tasks


def setup(recipe: Recipe, run: RunDir) -> Session:
    accelerator = _make_accelerator(recipe, run)
    set_seed(recipe.train.seed)
    tasks = _tasks_with_their_data(recipe)
    device_index = accelerator.local_process_index if accelerator.device.type == "cuda" else None
    model, tokenizer, family = load_base(
        recipe.model, [HeadSpec.for_task(t) for t in tasks], device_index=device_index
    )
    old = old_task_names(recipe)  # a transfer trains only the tasks after these
    if old:
        adapter = start_transfer(model, recipe)
    else:
        adapter = inject_adapter(adapter_host(model), recipe.adapter, recipe.task_names)

    batches = TrainBatches(
        recipe, tasks[len(old) :], tokenizer, family, accelerator, len(old),
        say=partial(say_on_main, accelerator),
    )  # fmt: skip
    total_steps = _total_steps(recipe, max(batches.task_sizes), accelerator.num_processes)
    optimizer = _make_optimizer(model, recipe, adapter.router, fused=engines.plain(accelerator))
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


def _make_optimizer(
    model: nn.Module, recipe: Recipe, router: nn.Module | None, fused: bool = False
) -> torch.optim.Optimizer:
    """AdamW with weight decay on matrices only (not biases, norms, embeddings); MoRE's
    router (task embeddings, gates) at ``router_lr_scale`` times the learning rate.

    ``fused``: torch's fused AdamW kernel on CPU and CUDA parameters (the same
    update up to float rounding; on one CPU thread a quarter of the default loop's time, and
    MoRE's per-task tables make the optimizer a visible part of a many-task step). Only
    asked for without FSDP2 or DeepSpeed, which hand the optimizer sharded or flattened
    parameters of their own."""
    router_scale = recipe.adapter.router_lr_scale or 1.0
    # With the scale at 1 the groups (and so the checkpoints' optimizer state) stay as before.
    scaled = router is not None and router_scale != 1.0
    router_ids = {id(p) for p in router.parameters()} if scaled else set()
    groups: dict[tuple[bool, bool], list[nn.Parameter]] = {}
    for name, param in model.named_parameters():
        if param.requires_grad:
            lowered = name.lower()
            no_wd = param.ndim < 2 or any(m in lowered for m in _NO_DECAY_MARKERS)
            groups.setdefault((id(param) in router_ids, no_wd), []).append(param)
    if not groups:
        raise UserError("nothing to train: the model has no trainable parameters")
    lr = recipe.train.lr
    param_groups = [
        {
            "params": params,
            "lr": lr * router_scale if in_router else lr,
            "weight_decay": 0.0 if no_wd else recipe.train.weight_decay,
        }
        for (in_router, no_wd), params in sorted(groups.items())
    ]
    # torch checks the devices only at the first step; cpu and cuda have had the kernel
    # since torch 2.4 (older than this package's floor), other devices take the default loop.
    trainable = [p for params in groups.values() for p in params]
    fused = fused and all(p.device.type in ("cpu", "cuda") for p in trainable)
    return torch.optim.AdamW(param_groups, lr=lr, fused=fused or None)


def start_run(session: Session, *, resumed: bool) -> None:
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


def unwrapped_model(session: Session) -> nn.Module:
    return session.accelerator.unwrap_model(session.model)
