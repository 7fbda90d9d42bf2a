"""Tiny in-memory rows in each hub dataset's column layout, for the task tests."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

ARC_CHOICES = {"text": ["iron", "wood", "glass", "water"], "label": ["A", "B", "C", "D"]}

HUB_ROWS: dict[str, dict[str, Any]] = {
    "cola": {"sentence": "The cat sat.", "label": 1, "idx": 0},
    "sst2": {"sentence": "a good film", "label": 1, "idx": 0},
    "mrpc": {"sentence1": "A b.", "sentence2": "B a.", "label": 0, "idx": 0},
    "qqp": {"question1": "Why?", "question2": "How?", "label": 1, "idx": 0},
    "stsb": {"sentence1": "A plane.", "sentence2": "An airplane.", "label": 3.77, "idx": 0},
    "mnli": {"premise": "P here.", "hypothesis": "H here.", "label": 2, "idx": 0},
    "qnli": {"question": "Who?", "sentence": "Him.", "label": 1, "idx": 0},
    "rte": {"sentence1": "S one.", "sentence2": "S two.", "label": 0, "idx": 0},
    "boolq": {"question": "is it", "passage": "It is.", "label": 1, "idx": 0},
    "cb": {"premise": "P.", "hypothesis": "H.", "label": 1, "idx": 0},
    "scitail": {"premise": "P.", "hypothesis": "H.", "label": "entails"},
    "piqa": {"goal": "open a jar", "sol1": "twist", "sol2": "push", "label": 0},
    "openbookqa": {
        "id": "1",
        "question_stem": "Which conducts?",
        "choices": ARC_CHOICES,
        "answerKey": "A",
    },
    "arc_easy": {
        "id": "1",
        "question": "Which conducts?",
        "choices": ARC_CHOICES,
        "answerKey": "A",
    },
    "arc_challenge": {
        "id": "1",
        "question": "Which floats?",
        "choices": {"text": ["rock", "wood", "iron"], "label": ["1", "2", "3"]},
        "answerKey": "2",
    },
}

EXPECTED: dict[str, tuple[str, str, int | float]] = {
    "cola": ("cola sentence: The cat sat.", "acceptable", 1),
    "sst2": ("sst2 sentence: a good film", "positive", 1),
    "mrpc": ("mrpc sentence1: A b. sentence2: B a.", "not_equivalent", 0),
    "qqp": ("qqp question1: Why? question2: How?", "duplicate", 1),
    "stsb": ("stsb sentence1: A plane. sentence2: An airplane.", "3.8", 3.77),
    "mnli": ("mnli hypothesis: H here. premise: P here.", "contradiction", 2),
    "qnli": ("qnli question: Who? sentence: Him.", "not_entailment", 1),
    "rte": ("rte sentence1: S one. sentence2: S two.", "entailment", 0),
    "boolq": ("boolq question: is it passage: It is.", "true", 1),
    "cb": ("cb hypothesis: H. premise: P.", "contradiction", 1),
    "scitail": ("scitail premise: P. hypothesis: H.", "entailment", 0),
    "piqa": ("piqa question: open a jar options: (A) twist (B) push", "A", 0),
    "openbookqa": (
        "openbookqa question: Which conducts? options: (A) iron (B) wood (C) glass (D) water",
        "A",
        0,
    ),
    "arc_easy": (
        "arc_easy question: Which conducts? options: (A) iron (B) wood (C) glass (D) water",
        "A",
        0,
    ),
    "arc_challenge": (
        "arc_challenge question: Which floats? options: (A) rock (B) wood (C) iron",
        "B",
        1,
    ),
}


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path
