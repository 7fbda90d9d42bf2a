"""Row formatters: raw row → ``(text, raw label)`` in the text-to-text layout of method.md §4.

- :func:`fields_formatter`: ``"<prefix> <name>: <value> <name>: <value>"`` (T5 on GLUE).
- :func:`template_formatter`: a user template, ``str.format`` over the row's columns.
- :func:`choice_formatter`: multiple choice, ``"<prefix> question: <q> options: (A) … (B) …"``;
  the raw label is the position of the right option, so the label words are the letters.
"""

from __future__ import annotations

import string
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from more_cli.tasks.base import RowError, RowFormatter

OPTION_LETTERS = ["A", "B", "C", "D", "E"]

Choices = tuple[str, list[Any], int | None]
"""``(question, options, index of the right option or None when the key is missing)``."""


def column(row: Mapping[str, Any], name: str) -> Any:
    """The value of a column, or a :class:`RowError` naming the columns the row has."""
    if name not in row:
        raise RowError(f"missing column {name!r} (columns: {', '.join(map(str, row))})")
    return row[name]


def text_column(row: Mapping[str, Any], name: str) -> str:
    """A non-empty text column: a string, never a number, list, object or boolean."""
    return _text(column(row, name), f"column {name!r}")


def _text(value: Any, where: str) -> str:
    if value is None:
        raise RowError(f"empty text in {where}")
    if not isinstance(value, str):
        shown = repr(value) if len(repr(value)) <= 40 else repr(value)[:37] + "..."
        raise RowError(f"{where} holds a {_json_type(value)} ({shown}), not text")
    if not value.strip():
        raise RowError(f"empty text in {where}")
    return value.strip()


def _json_type(value: Any) -> str:
    """The JSON name of a parsed value's type (a Python bool is also an int: test it first)."""
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, Mapping):
        return "object"
    if isinstance(value, list | tuple):
        return "list"
    return type(value).__name__


def fields_formatter(
    prefix: str, fields: Sequence[tuple[str, str]], label_column: str = "label"
) -> RowFormatter:
    """Format ``(shown name, column)`` pairs after the prefix, e.g.
    ``rte sentence1: … sentence2: …``."""

    def format_row(row: Mapping[str, Any]) -> tuple[str, Any]:
        parts = [f"{shown}: {text_column(row, name)}" for shown, name in fields]
        return " ".join([prefix, *parts]), column(row, label_column)

    return format_row


def template_formatter(template: str, label_column: str) -> RowFormatter:
    """Format with ``template.format(**row)``; every referenced column must be non-empty."""
    names = [name for _, name, _, _ in string.Formatter().parse(template) if name]

    def format_row(row: Mapping[str, Any]) -> tuple[str, Any]:
        values = {name: text_column(row, name) for name in names}
        return template.format(**values), column(row, label_column)

    return format_row


def choice_formatter(
    prefix: str, read: Callable[[Mapping[str, Any]], Choices], letters: int
) -> RowFormatter:
    """Multiple choice with up to ``letters`` options: question and lettered options in the
    text, raw label = index of the right option."""

    def format_row(row: Mapping[str, Any]) -> tuple[str, Any]:
        question, options, answer = read(row)
        if not 2 <= len(options) <= letters:
            raise RowError(f"{len(options)} options; expected 2–{letters}")
        shown = []
        for letter, option in zip(OPTION_LETTERS, options, strict=False):
            shown.append(f"({letter}) {_text(option, f'option {letter}')}")
        return f"{prefix} question: {question} options: {' '.join(shown)}", answer

    return format_row


def read_two_solutions(row: Mapping[str, Any]) -> Choices:
    """PIQA: ``goal``, ``sol1``, ``sol2``, ``label`` (0 or 1)."""
    options = [column(row, "sol1"), column(row, "sol2")]
    return text_column(row, "goal"), options, column(row, "label")


def lettered_choices(question_column: str) -> Callable[[Mapping[str, Any]], Choices]:
    """ARC / OpenBookQA: ``choices = {"text": [...], "label": [...]}`` and ``answerKey``.

    Options are shown by position (A, B, …) whatever their original labels ("1", "2", …).
    """

    def read(row: Mapping[str, Any]) -> Choices:
        question = text_column(row, question_column)
        choices = column(row, "choices")
        if not isinstance(choices, Mapping) or "text" not in choices or "label" not in choices:
            raise RowError("column 'choices' must hold {'text': [...], 'label': [...]}")
        labels = [str(label) for label in choices["label"]]
        key = str(column(row, "answerKey")).strip()
        if key not in labels:
            raise RowError(f"answerKey {key!r} is not one of the choice labels {labels}")
        return question, list(choices["text"]), labels.index(key)

    return read
