"""Metrics against values computed by hand (all on the 0–100 scale)."""

from __future__ import annotations

import math

import pytest

from more_cli.recipe import TaskConfig
from more_cli.tasks import compute_metrics, get_task, glue_average
from more_cli.tasks.metrics import accuracy, f1, matthews, pearson, spearman

PRED, REF = [1, 0, 1, 1], [1, 1, 1, 0]  # TP 2, TN 0, FP 1, FN 1


def test_classification_metrics():
    assert accuracy(PRED, REF) == pytest.approx(50.0)
    assert f1(PRED, REF) == pytest.approx(100 * 2 / 3)  # precision = recall = 2/3
    assert matthews(PRED, REF) == pytest.approx(-100 / 3)  # (2·0 − 1·1) / sqrt(3·3·1·1)


def test_macro_f1_for_three_classes():
    # per-class F1: 1, 2/3, 2/3
    assert f1([0, 1, 2, 2], [0, 1, 1, 2], num_labels=3) == pytest.approx(100 * 7 / 9)


def test_correlations():
    assert pearson([1, 2, 3], [1, 2, 4]) == pytest.approx(100 * 9 / math.sqrt(84))
    assert spearman([1, 2, 3], [1, 2, 4]) == pytest.approx(100.0)
    assert pearson([2, 2, 2], [1, 2, 3]) == 0.0  # constant predictions: no correlation


def test_compute_metrics_headlines():
    mrpc = compute_metrics(get_task(TaskConfig(name="mrpc")), PRED, REF)
    assert mrpc["headline"] == pytest.approx((50 + 100 * 2 / 3) / 2)
    cola = compute_metrics(get_task(TaskConfig(name="cola")), PRED, REF)
    assert set(cola) == {"matthews", "headline"} and cola["headline"] == pytest.approx(-100 / 3)
    stsb = compute_metrics(get_task(TaskConfig(name="stsb")), [1.0, 2.0, 3.0], [1.0, 2.0, 4.0])
    assert set(stsb) == {"pearson", "spearman", "headline"}
    assert stsb["headline"] == stsb["pearson"]


def test_glue_average():
    assert glue_average({"a": {"headline": 80.0}, "b": {"headline": 60.0}}) == 70.0
    with pytest.raises(ValueError):
        glue_average({})


def test_length_mismatch():
    with pytest.raises(ValueError, match="3 predictions for 4 references"):
        compute_metrics(get_task(TaskConfig(name="rte")), [0, 1, 0], PRED)
