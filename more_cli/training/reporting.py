"""What a training session reports: loss windows, ``metrics.jsonl`` and the trackers, plain
log lines or a rich progress bar."""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Iterator
from typing import Any

import torch
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from more_cli.adapters import MultiTaskAdapter
from more_cli.adapters.router import Router
from more_cli.rundir import append_jsonl
from more_cli.sharded import is_sharded
from more_cli.training.session import Session, flatten


class LossWindow:
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


class RouterTrace:
    """Where MoRE's hard router stands, for the loss records: each task's mean chosen rank
    and mean gate confidence over the layers, and how many (layer, task) choices changed
    since the previous record (left out of the first record of a process).

    Empty for kinds without a hard router, and under FSDP2, where the router's parameters
    are sharded (the adapter files written at the end still hold the chosen ranks).
    """

    def __init__(self, adapter: MultiTaskAdapter) -> None:
        router = adapter.router
        self.router = router if isinstance(router, Router) else None
        self.tasks = adapter.tasks
        self.previous: torch.Tensor | None = None

    def record(self) -> dict[str, Any]:
        if self.router is None or any(is_sharded(p) for p in self.router.parameters()):
            return {}
        ranks = self.router.chosen_ranks()  # [layers, tasks]
        confidence = self.router.confidence()
        summary: dict[str, Any] = {
            "mean_rank": dict(zip(self.tasks, ranks.float().mean(0).tolist(), strict=True)),
            "confidence": dict(zip(self.tasks, confidence.mean(0).tolist(), strict=True)),
        }
        if self.previous is not None:
            summary["changed"] = int((ranks != self.previous).sum())
        self.previous = ranks
        return {"router": summary}


def tracker_values(values: dict[str, Any]) -> dict[str, float]:
    """The numbers of a metrics record as tracker scalars: ``loss``, ``lr``, ... as they
    are, the router's as ``router/<task>/mean_rank`` (and ``confidence``) and
    ``router/changed``; an evaluation as ``<split>/average`` and ``<split>/<task>/<metric>``."""
    if "eval" not in values:
        scalars = {k: v for k, v in values.items() if isinstance(v, int | float)}
        router = values.get("router", {})
        for name in ("mean_rank", "confidence"):
            for task, value in router.get(name, {}).items():
                scalars[f"router/{task}/{name}"] = value
        if "changed" in router:
            scalars["router/changed"] = router["changed"]
        return scalars
    split = values["split"]
    scalars = {f"{split}/average": values["average"]}
    for task, metrics in values["eval"].items():
        for name, value in metrics.items():
            if isinstance(value, int | float) and not isinstance(value, bool):
                scalars[f"{split}/{task}/{name}"] = value
    return scalars


def log_metrics(session: Session, values: dict[str, Any]) -> None:
    """One record in metrics.jsonl and the trackers; a plain line when not on a terminal."""
    step = session.state.step
    session.accelerator.log(tracker_values(values), step=step)
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
def progress(session: Session) -> Iterator[Any]:
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


def init_trackers(session: Session) -> None:
    if session.recipe.train.trackers:
        flat = flatten(session.recipe.model_dump(mode="json"))
        config = {
            k: v if isinstance(v, int | float | str | bool) else str(v) for k, v in flat.items()
        }
        session.accelerator.init_trackers("more", config=config)
