"""Evaluation: prediction (:mod:`.predict`), per-task scoring (:mod:`.scoring`) and the
evaluation of a finished run (:mod:`.runs`). Names are imported on first use, so that the
low layers that predict never import the run loader."""

from __future__ import annotations

from typing import TYPE_CHECKING

from more_cli.lazy import lazy_getattr

if TYPE_CHECKING:
    from more_cli.evaluation.predict import (
        Prediction,
        candidate_scores,
        predict,
        prediction_from_candidate_scores,
        prediction_from_head_logits,
        sequence_log_likelihood,
    )
    from more_cli.evaluation.runs import evaluate_run
    from more_cli.evaluation.scoring import metrics_table, score_tasks

_HOMES = {
    "Prediction": "predict",
    "candidate_scores": "predict",
    "predict": "predict",
    "prediction_from_candidate_scores": "predict",
    "prediction_from_head_logits": "predict",
    "sequence_log_likelihood": "predict",
    "evaluate_run": "runs",
    "metrics_table": "scoring",
    "score_tasks": "scoring",
}

__all__ = [
    "Prediction",
    "candidate_scores",
    "evaluate_run",
    "metrics_table",
    "predict",
    "prediction_from_candidate_scores",
    "prediction_from_head_logits",
    "score_tasks",
    "sequence_log_likelihood",
]


__getattr__ = lazy_getattr(__name__, _HOMES)
