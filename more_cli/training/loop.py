"""The training loop: :func:`train` runs a recipe end to end, set-up → steps → evaluation when
due → finish, readable top to bottom here; checkpoints, signals and reporting live beside it.

:func:`train` runs a recipe end to end and writes the run directory (:mod:`more_cli.rundir`):

- **Model**: the frozen base (:func:`~more_cli.modeling.load_base`, 4-bit if asked), the
  adapter injected into it, per-task heads for encoders. Only adapter and heads train.
- **Optimizer**: AdamW over the trainable parameters (torch's fused kernel on CPU and CUDA,
  except under FSDP2 and DeepSpeed); no weight decay on biases, norms and task
  embeddings. Warm-up then ``train.scheduler`` decay (linear, cosine or constant).
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

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from rich.console import Console

from more_cli.adapters import load_adapter_weights
from more_cli.adapters.state import adapter_tensors, verify_adapter_folder
from more_cli.errors import UserError
from more_cli.evaluation.scoring import metrics_table, score_tasks, selection_split, test_split
from more_cli.modeling import (
    head_tensors,
    load_heads,
)
from more_cli.recipe import Recipe
from more_cli.rundir import (
    RunDir,
    atomic_directory,
    atomic_write_json,
    newest_good_checkpoint,
    write_run_info,
)
from more_cli.training.checkpoints import restore_checkpoint, save_checkpoint, write_adapter
from more_cli.training.reporting import (
    LossWindow,
    RouterTrace,
    init_trackers,
    log_metrics,
    progress,
    tracker_values,
)
from more_cli.training.session import (
    Session,
    check_run_dir,
    setup,
    start_run,
    unwrapped_model,
)
from more_cli.training.signals import (
    SignalCatcher,
    TrainingInterrupted,
    interrupt,
    signal_on_any_process,
)
from more_cli.transfer import resolve_transfer

__all__ = ["Session", "TrainingInterrupted", "train"]


def train(recipe: Recipe, resume: bool = False) -> Path:
    """Train ``recipe`` into ``recipe.output_dir`` and return the run directory.

    Raises:
        UserError: see the module docstring.
        TrainingInterrupted: SIGINT / SIGTERM; a checkpoint was saved, the run can resume.
    """
    recipe = resolve_transfer(recipe)
    run = RunDir(Path(recipe.output_dir))
    checkpoint, passed_over = check_run_dir(run, recipe, resume)
    session = setup(recipe, run)
    for line in passed_over:
        session.say(line)
    if checkpoint is not None:
        restore_checkpoint(session, checkpoint)
        session.say(f"resuming {run.root} from {checkpoint.name}")
    else:
        start_run(session, resumed=resume)
    try:
        with SignalCatcher() as signals:
            init_trackers(session)
            _fit(session, signals)
        _finish(session)
    except TrainingInterrupted:
        raise
    except BaseException as error:
        if session.accelerator.is_main_process:
            write_run_info(run, status="failed", step=session.state.step, error=str(error))
        raise
    return run.root


def _fit(session: Session, signals: SignalCatcher) -> None:
    """Optimizer steps until ``total_steps``, early stopping, or a signal."""
    acc, state, cfg = session.accelerator, session.state, session.recipe.train
    window, router_trace = LossWindow(), RouterTrace(session.adapter)
    with progress(session) as show_progress:
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
                log_metrics(session, window.flush(session) | router_trace.record())
                _record_phase(session, "train")
            show_progress(state.step, window.last_loss)
            improved = _evaluate_if_due(session)
            received = signal_on_any_process(session, signals)
            if improved or _due(state.step, cfg.save_every) or received is not None:
                save_checkpoint(session)
            if received is not None:
                interrupt(session, received)
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
    last_good, _ = newest_good_checkpoint(run)
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


def _evaluate_if_due(session: Session) -> bool:
    """Evaluate on the model-selection split when due; True when this is a new best."""
    state = session.state
    if not _due(state.step, session.recipe.train.eval_every):
        return False
    report = _evaluate_in_training(
        session, selection_split(session.recipe), only=session.trained_tasks
    )
    summary = _metrics_record(report)
    log_metrics(session, summary)
    session.say(f"step {state.step}: {report['split']} average {report['average']:.4f}")
    if state.best_metric is None or report["average"] > state.best_metric:
        state.best_metric, state.best_step = report["average"], state.step
        state.evals_without_improvement = 0
        return True
    state.evals_without_improvement += 1
    return False


def _metrics_record(report: dict[str, Any]) -> dict[str, Any]:
    """An evaluation report as ``metrics.jsonl`` and the trackers take it."""
    return {"split": report["split"], "eval": report["tasks"], "average": report["average"]}


def _record_phase(session: Session, phase: str) -> None:
    """``run.json`` says what a live run is doing (``phase``) and at which step."""
    if session.accelerator.is_main_process:
        write_run_info(session.run, status="running", phase=phase, step=session.state.step)


def _evaluate_in_training(
    session: Session, split: str, only: Sequence[str] | None = None
) -> dict[str, Any]:
    _record_phase(session, f"evaluate {split}")
    session.say(f"step {session.state.step}: evaluating on {split}")
    model = session.accelerator.unwrap_model(session.model)
    report = score_tasks(
        model, session.tokenizer, session.family, session.tasks, session.recipe, split,
        session.accelerator.device, only=only, say=session.say,
    )  # fmt: skip
    report["source"] = f"step-{session.state.step}"
    return report


def _finish(session: Session) -> None:
    """Write adapter/ (best, else last), score it on the test split, mark the run finished."""
    acc, state, run = session.accelerator, session.state, session.run
    if state.best_step is not None and state.best_step != state.step:
        best = run.checkpoint(state.best_step) / "adapter"
        verify_adapter_folder(best)
        load_adapter_weights(session.adapter, best)
        load_heads(unwrapped_model(session), best)
    # Every process gathers and evaluates (under FSDP2 both need all of them); main writes.
    adapter, heads = adapter_tensors(session.adapter), head_tensors(unwrapped_model(session))
    report = _evaluate_in_training(session, test_split(session.recipe))
    report["source"] = "adapter"
    acc.log(tracker_values(_metrics_record(report)), step=state.step)
    if acc.is_main_process:
        with atomic_directory(run.adapter) as directory:
            write_adapter(session, directory, adapter, heads)
        atomic_write_json(run.eval, report)
        write_run_info(
            run, status="finished", phase="finished", step=state.step, best_step=state.best_step,
            best_metric=state.best_metric, test_average=report["average"],
        )  # fmt: skip
        Console().print(metrics_table(report))
        session.say(f"{report['split']} average {report['average']:.4f}; adapter in {run.adapter}")
    acc.wait_for_everyone()
    acc.end_training()
