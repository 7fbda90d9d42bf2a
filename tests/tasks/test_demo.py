"""The generated demo suite: deterministic, labelled, sized, and learnable."""

from __future__ import annotations

import numpy as np
from sklearn.feature_extraction.text import CountVectorizer
from sklearn.linear_model import LogisticRegression

from more_cli.recipe import TaskConfig
from more_cli.tasks import DEMO_TASKS, get_task
from more_cli.tasks.demo import NEGATIONS, ORIGIN, POSITIVE, demo_rows


def _task(name):
    return get_task(TaskConfig(name=name))


def test_sizes_and_determinism():
    for name in DEMO_TASKS:
        assert len(_task(name).load_split("train")) == 600
        assert len(_task(name).load_split("validation")) == 200
        assert demo_rows(name, "train") == demo_rows(name, "train")
        assert demo_rows(name, "train") != demo_rows(name, "validation")


def test_labelled_as_synthetic():
    origin, _ = _task("demo_topic").source.rows("train")
    assert ORIGIN in origin and "synthetic" in ORIGIN


def test_shapes():
    assert _task("demo_sentiment").label_words == ["negative", "positive"]
    assert _task("demo_topic").num_labels == 4
    similarity = _task("demo_similarity")
    assert similarity.is_regression
    scores = [example.label for example in similarity.load_split("train")]
    assert min(scores) >= 0.0 and max(scores) <= 5.0 and np.std(scores) > 1.0


def test_classes_are_balanced_enough():
    for name in ("demo_sentiment", "demo_topic"):
        labels = [example.label for example in _task(name).load_split("train")]
        counts = np.bincount(labels)
        assert counts.min() > 0.5 * counts.max()


def test_topic_is_learnable():
    """A bag-of-words model separates the topics, so a small encoder can too."""
    task = _task("demo_topic")
    train, validation = task.load_split("train"), task.load_split("validation")
    vectorizer = CountVectorizer().fit([e.text for e in train])
    model = LogisticRegression(max_iter=2000).fit(
        vectorizer.transform([e.text for e in train]), [e.label for e in train]
    )
    predicted = model.predict(vectorizer.transform([e.text for e in validation]))
    assert np.mean(predicted == [e.label for e in validation]) > 0.9


def test_sentiment_is_polarity_flipped_by_negation():
    rows = demo_rows("demo_sentiment", "train")
    negated = [any(word in NEGATIONS for word in r["review"].split()) for r in rows]
    positive = [any(word in POSITIVE for word in r["review"].split()) for r in rows]
    assert all(r["label"] == int(p != n) for r, p, n in zip(rows, positive, negated, strict=True))
    assert 0.15 < np.mean(negated) < 0.35


def test_similarity_follows_word_overlap():
    rows = demo_rows("demo_similarity", "validation")
    overlap = [len(set(r["sentence1"].split()) & set(r["sentence2"].split())) for r in rows]
    assert np.corrcoef(overlap, [r["label"] for r in rows])[0, 1] > 0.95
