"""Task metrics, reported on a 0–100 scale as GLUE leaderboards do.

- ``accuracy``; ``f1``: binary F1 of class 1 for two-class tasks (MRPC ``equivalent``, QQP
  ``duplicate``), macro F1 over classes otherwise (CB); ``matthews`` (CoLA).
- ``pearson`` / ``spearman`` for regression; constant predictions give 0 (no correlation can
  be measured) rather than NaN, so model selection never compares against NaN.
- The headline of a task is ``task.headline_metric``; ``acc_and_f1`` is the mean of accuracy
  and F1 (MRPC, QQP), as the GLUE benchmark averages them. :func:`glue_average` is the mean
  of the headlines.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
from scipy import stats
from sklearn.metrics import f1_score, matthews_corrcoef

from more_cli.tasks.base import Task

Values = Sequence[int] | Sequence[float]


def accuracy(predictions: Values, references: Values) -> float:
    return 100.0 * float(np.mean(np.asarray(predictions) == np.asarray(references)))


def f1(predictions: Values, references: Values, *, num_labels: int = 2) -> float:
    """Binary F1 (positive class 1) for two classes, macro F1 otherwise."""
    if num_labels == 2:
        return 100.0 * float(f1_score(references, predictions, pos_label=1, zero_division=0))
    return 100.0 * float(
        f1_score(
            references,
            predictions,
            labels=list(range(num_labels)),
            average="macro",
            zero_division=0,
        )
    )


def matthews(predictions: Values, references: Values) -> float:
    return 100.0 * float(matthews_corrcoef(references, predictions))


def pearson(predictions: Values, references: Values) -> float:
    if _constant(predictions) or _constant(references):
        return 0.0
    return 100.0 * float(stats.pearsonr(predictions, references)[0])


def spearman(predictions: Values, references: Values) -> float:
    if _constant(predictions) or _constant(references):
        return 0.0
    return 100.0 * float(stats.spearmanr(predictions, references)[0])


def _constant(values: Values) -> bool:
    return len(set(values)) < 2


def compute_metrics(task: Task, predictions: Values, references: Values) -> dict[str, float]:
    """Every metric of ``task`` plus ``headline``, each in 0–100."""
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions for {len(references)} references")
    results: dict[str, float] = {}
    for name in task.metrics:
        if name == "f1":
            results[name] = f1(predictions, references, num_labels=task.num_labels)
        else:
            results[name] = _SIMPLE[name](predictions, references)
    results["headline"] = headline(task.headline_metric, results)
    return results


def headline(metric: str, results: Mapping[str, float]) -> float:
    """The headline value; ``acc_and_f1`` is the mean of accuracy and F1."""
    if metric == "acc_and_f1":
        return (results["accuracy"] + results["f1"]) / 2
    return results[metric]


def glue_average(results: Mapping[str, Mapping[str, float]]) -> float:
    """Mean of the per-task ``headline`` values (GLUE average)."""
    if not results:
        raise ValueError("no task results to average")
    return float(np.mean([metrics["headline"] for metrics in results.values()]))


_SIMPLE = {
    "accuracy": accuracy,
    "matthews": matthews,
    "pearson": pearson,
    "spearman": spearman,
}
CLASSIFICATION_METRICS = ("accuracy", "f1", "matthews")
REGRESSION_METRICS = ("pearson", "spearman")
