"""A task as a text-to-text problem: :class:`Example`, :class:`Task` and its splits.

Splits every task offers (``SPLITS``):

- ``train``: the training split.
- ``validation``: the whole validation split (MNLI on the hub: ``validation_matched``).
- ``val_select`` / ``val_test``: the two halves of the validation split after a shuffle with
  the fixed ``SPLIT_SEED`` (method.md §4): select checkpoints on ``val_select``, report
  ``val_test``. ``val_select`` gets the extra row when the count is odd. The halves do not
  depend on the training seed, so runs with different seeds are scored on the same rows.

``max_train_samples`` subsamples ``train``; ``max_eval_samples`` subsamples the three
evaluation splits (after halving). Subsamples are seeded and keep the file order.

Regression tasks score on a 0–5 scale (STS-B); their text-to-text target is the score
rounded to 0.2 and printed with one decimal, and their rank-classification candidates are the
26 strings ``"0.0"`` … ``"5.0"``.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from more_cli.errors import UserError
from more_cli.tasks.sources import DataSource

SPLIT_SEED = 2023
SPLITS = ("train", "validation", "val_select", "val_test")
SCORE_RANGE = (0.0, 5.0)
MAX_REPORTED_ROW_ERRORS = 20


@dataclass(frozen=True)
class Example:
    """One formatted example: ``text`` (input with task prefix), ``target`` (answer string)
    and ``label`` (class id, or the float score for regression)."""

    text: str
    target: str
    label: int | float


class RowError(ValueError):
    """A problem with one row; :meth:`Task.load_split` adds the file and the row number."""


RowFormatter = Callable[[Mapping[str, Any]], tuple[str, Any]]
"""Turns one raw row into ``(text, raw label)``; raises :class:`RowError` on bad rows."""


def score_target(score: float) -> str:
    """STS-B target: the score rounded to 0.2, printed with one decimal (``3.8``)."""
    return f"{round(score * 5) / 5:.1f}"


@dataclass(frozen=True, eq=False)
class Task:
    """A task: how to read its rows, format them, and score its answers.

    ``label_words`` is None for regression tasks. ``metrics`` are the metrics reported;
    ``headline_metric`` is one of them, or ``acc_and_f1`` (mean of accuracy and F1, as GLUE
    reports MRPC and QQP).
    """

    name: str
    prefix: str
    label_words: list[str] | None
    metrics: list[str]
    headline_metric: str
    formatter: RowFormatter = field(repr=False)
    source: DataSource = field(repr=False)
    label_aliases: Mapping[str, int] = field(default_factory=dict, repr=False)
    max_train_samples: int | None = None
    max_eval_samples: int | None = None
    seed: int = SPLIT_SEED
    _cache: dict[str, list[Example]] = field(default_factory=dict, repr=False)

    @property
    def is_regression(self) -> bool:
        return self.label_words is None

    @property
    def num_labels(self) -> int:
        """Number of classes; 1 for regression."""
        return 1 if self.label_words is None else len(self.label_words)

    def candidates(self) -> list[str]:
        """Answer strings scored by rank classification, in label-id order."""
        if self.label_words is not None:
            return list(self.label_words)
        low, high = SCORE_RANGE
        return [f"{low + i / 5:.1f}" for i in range(round((high - low) * 5) + 1)]

    def candidate_value(self, index: int) -> int | float:
        """The label (class id, or score) that candidate ``index`` stands for."""
        if self.label_words is not None:
            return index
        return float(self.candidates()[index])

    def target_for(self, label: int | float) -> str:
        """The answer string for a label."""
        if self.label_words is None:
            return score_target(float(label))
        return self.label_words[int(label)]

    def load_split(self, split: str) -> list[Example]:
        """Examples of ``split`` (one of ``SPLITS``), read once and cached."""
        if split not in SPLITS:
            raise UserError(f"unknown split {split!r} for task {self.name}; use one of {SPLITS}")
        if split not in self._cache:
            source_split = "train" if split == "train" else "validation"
            examples = self._read(source_split)
            if split in ("val_select", "val_test"):
                examples = _half(examples, first=split == "val_select")
            limit = self.max_train_samples if split == "train" else self.max_eval_samples
            self._cache[split] = _subsample(examples, limit, self.seed)
        return self._cache[split]

    def _read(self, split: str) -> list[Example]:
        origin, rows = self.source.rows(split)
        examples: list[Example] = []
        errors: list[str] = []
        for number, row in enumerate(rows, start=1):
            try:
                text, raw_label = self.formatter(row)
                label = self._parse_label(raw_label)
            except RowError as error:
                errors.append(f"row {number}: {error}")
                continue
            examples.append(Example(text, self.target_for(label), label))
        if errors:
            shown = errors[:MAX_REPORTED_ROW_ERRORS]
            raise UserError(
                f"{origin}: {len(errors)} bad row(s) for task {self.name}; {errors[0]}",
                details=shown,
            )
        if not examples:
            raise UserError(f"{origin}: no rows for task {self.name}")
        return examples

    def _parse_label(self, raw: Any) -> int | float:
        if raw is None or (isinstance(raw, str) and not raw.strip()):
            raise RowError("empty label")
        if self.label_words is None:
            return _parse_score(raw)
        return _parse_class(raw, self.label_words, self.label_aliases)


def _parse_score(raw: Any) -> float:
    try:
        score = float(raw)
    except (TypeError, ValueError):
        raise RowError(f"score {raw!r} is not a number") from None
    if math.isnan(score) or math.isinf(score):
        raise RowError(f"score is {score}")
    low, high = SCORE_RANGE
    if not low <= score <= high:
        raise RowError(f"score {score} is outside {low}–{high}")
    return score


def _parse_class(raw: Any, words: list[str], aliases: Mapping[str, int]) -> int:
    if isinstance(raw, str):
        text = raw.strip()
        if text in words:
            return words.index(text)
        if text in aliases:
            return aliases[text]
        try:
            raw = int(text)
        except ValueError:
            raise RowError(
                f"label {raw!r} is not one of {words} nor an id 0–{len(words) - 1}"
            ) from None
    if isinstance(raw, float) and raw.is_integer():
        raw = int(raw)
    if isinstance(raw, int) and 0 <= raw < len(words):
        return int(raw)
    raise RowError(f"label {raw!r} is outside the label set {words} (ids 0–{len(words) - 1})")


def _half(examples: list[Example], *, first: bool) -> list[Example]:
    order = list(range(len(examples)))
    random.Random(SPLIT_SEED).shuffle(order)
    cut = (len(order) + 1) // 2
    chosen = order[:cut] if first else order[cut:]
    return [examples[i] for i in sorted(chosen)]


def _subsample(examples: list[Example], limit: int | None, seed: int) -> list[Example]:
    if limit is None or limit >= len(examples):
        return examples
    keep = sorted(random.Random(seed).sample(range(len(examples)), limit))
    return [examples[i] for i in keep]
