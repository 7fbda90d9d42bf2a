"""The task registry: built-in tasks and user-defined ones, from a :class:`TaskConfig`.

Built-in tasks read their hub dataset (``source: null``), a local folder with the hub's
columns (``source: ../shared/data/glue/rte``), or, for the demo suite, generated rows.
A task with ``template`` (and ``data_files`` or a ``source`` folder) is user-defined.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

from more_cli.errors import UserError
from more_cli.recipe import TaskConfig
from more_cli.tasks.base import SPLIT_SEED, RowFormatter, Task
from more_cli.tasks.demo import ORIGIN, demo_rows
from more_cli.tasks.formats import (
    OPTION_LETTERS,
    choice_formatter,
    fields_formatter,
    lettered_choices,
    read_two_solutions,
    template_formatter,
)
from more_cli.tasks.metrics import CLASSIFICATION_METRICS, REGRESSION_METRICS
from more_cli.tasks.sources import (
    DataSource,
    DirectorySource,
    FileSource,
    GeneratedSource,
    HubSource,
)


@dataclass(frozen=True)
class _Builtin:
    hub: tuple[str, str | None] | None  # (path, config); None for generated tasks
    label_words: list[str] | None
    formatter: Callable[[str], RowFormatter]  # prefix → formatter
    metrics: list[str] = field(default_factory=lambda: ["accuracy"])
    headline: str = "accuracy"
    hub_splits: Mapping[str, str] = field(default_factory=dict)
    label_aliases: Mapping[str, int] = field(default_factory=dict)


def _fields(*names: str) -> Callable[[str], RowFormatter]:
    return lambda prefix: fields_formatter(prefix, [(name, name) for name in names])


def _glue(
    name: str,
    *fields: str,
    words: list[str] | None,
    metrics: tuple[str, ...] = ("accuracy",),
    headline: str = "accuracy",
    hub_splits: Mapping[str, str] | None = None,
) -> _Builtin:
    return _Builtin(
        hub=("nyu-mll/glue", name),
        label_words=words,
        formatter=_fields(*fields),
        metrics=list(metrics),
        headline=headline,
        hub_splits=hub_splits or {},
    )


def _choices(hub: tuple[str, str | None], letters: int, read: Callable) -> _Builtin:
    return _Builtin(
        hub=hub,
        label_words=OPTION_LETTERS[:letters],
        formatter=partial(choice_formatter, read=read, letters=letters),
    )


_ENTAILMENT = ["entailment", "not_entailment"]
_GLUE = {
    "cola": _glue(
        "cola",
        "sentence",
        words=["unacceptable", "acceptable"],
        metrics=("matthews",),
        headline="matthews",
    ),
    "sst2": _glue("sst2", "sentence", words=["negative", "positive"]),
    "mrpc": _glue(
        "mrpc",
        "sentence1",
        "sentence2",
        words=["not_equivalent", "equivalent"],
        metrics=("accuracy", "f1"),
        headline="acc_and_f1",
    ),
    "qqp": _glue(
        "qqp",
        "question1",
        "question2",
        words=["not_duplicate", "duplicate"],
        metrics=("accuracy", "f1"),
        headline="acc_and_f1",
    ),
    "stsb": _glue(
        "stsb",
        "sentence1",
        "sentence2",
        words=None,
        metrics=("pearson", "spearman"),
        headline="pearson",
    ),
    "mnli": _glue(
        "mnli",
        "hypothesis",
        "premise",
        words=["entailment", "neutral", "contradiction"],
        hub_splits={"validation": "validation_matched"},
    ),
    "qnli": _glue("qnli", "question", "sentence", words=_ENTAILMENT),
    "rte": _glue("rte", "sentence1", "sentence2", words=_ENTAILMENT),
}

_BUILTINS: dict[str, _Builtin] = {
    **_GLUE,
    "boolq": _Builtin(
        hub=("aps/super_glue", "boolq"),
        label_words=["false", "true"],
        formatter=_fields("question", "passage"),
    ),
    "cb": _Builtin(
        hub=("aps/super_glue", "cb"),
        label_words=["entailment", "contradiction", "neutral"],
        formatter=_fields("hypothesis", "premise"),
        metrics=["accuracy", "f1"],
    ),
    "scitail": _Builtin(
        hub=("allenai/scitail", "tsv_format"),
        label_words=["entailment", "neutral"],
        formatter=_fields("premise", "hypothesis"),
        label_aliases={"entails": 0},
    ),
    "piqa": _choices(("ybisk/piqa", None), 2, read_two_solutions),
    "openbookqa": _choices(("allenai/openbookqa", "main"), 4, lettered_choices("question_stem")),
    "arc_easy": _choices(("allenai/ai2_arc", "ARC-Easy"), 5, lettered_choices("question")),
    "arc_challenge": _choices(
        ("allenai/ai2_arc", "ARC-Challenge"), 5, lettered_choices("question")
    ),
    "demo_sentiment": _Builtin(
        hub=None, label_words=["negative", "positive"], formatter=_fields("review")
    ),
    "demo_topic": _Builtin(
        hub=None,
        label_words=["sports", "science", "business", "politics"],
        formatter=_fields("text"),
    ),
    "demo_similarity": _Builtin(
        hub=None,
        label_words=None,
        formatter=_fields("sentence1", "sentence2"),
        metrics=["pearson", "spearman"],
        headline="pearson",
    ),
}

TASK_NAMES: tuple[str, ...] = tuple(_BUILTINS)
"""Every built-in task name, in registry order."""

GLUE_TASKS: tuple[str, ...] = tuple(_GLUE)
DEMO_TASKS: tuple[str, ...] = ("demo_sentiment", "demo_topic", "demo_similarity")

_USER_ONLY_KEYS = ("template", "data_files", "label_words", "metric")


def get_task(cfg: TaskConfig, *, seed: int = SPLIT_SEED) -> Task:
    """Build the task a recipe entry describes; ``seed`` drives the max_*_samples subsets.

    Raises:
        UserError: unknown task (with a did-you-mean), a missing folder or file, or keys
            that only user-defined tasks take.
    """
    if cfg.template is not None or cfg.data_files is not None:
        return _user_task(cfg, seed)
    spec = _BUILTINS.get(cfg.name)
    if spec is None:
        close = difflib.get_close_matches(cfg.name, TASK_NAMES, n=1)
        hint = f"did you mean {close[0]!r}? " if close else ""
        raise UserError(
            f"unknown task {cfg.name!r}; {hint}known tasks: {', '.join(TASK_NAMES)}. "
            "For your own data give template and data_files."
        )
    stray = [key for key in _USER_ONLY_KEYS if getattr(cfg, key) is not None]
    if cfg.label_column != "label":
        stray.append("label_column")
    if stray:
        raise UserError(
            f"task {cfg.name}: {', '.join(stray)} only apply to user-defined tasks "
            "(with template and data_files); remove them or rename the task"
        )
    return Task(
        name=cfg.name,
        prefix=cfg.name,
        label_words=spec.label_words,
        metrics=spec.metrics,
        headline_metric=spec.headline,
        formatter=spec.formatter(cfg.name),
        source=_builtin_source(cfg, spec),
        label_aliases=spec.label_aliases,
        max_train_samples=cfg.max_train_samples,
        max_eval_samples=cfg.max_eval_samples,
        seed=seed,
    )


def _builtin_source(cfg: TaskConfig, spec: _Builtin) -> DataSource:
    if cfg.source is not None:
        aliases = {split: (name,) for split, name in spec.hub_splits.items()}
        return DirectorySource(_existing_directory(cfg), aliases)
    if spec.hub is None:
        return GeneratedSource(f"{cfg.name} ({ORIGIN})", partial(demo_rows, cfg.name))
    path, config = spec.hub
    return HubSource(path, config, spec.hub_splits)


def _user_task(cfg: TaskConfig, seed: int) -> Task:
    if cfg.template is None:
        raise UserError(
            f"task {cfg.name}: a user-defined task needs a template, e.g. "
            f"'{cfg.name} text: {{text}}'"
        )
    if cfg.data_files is not None:
        for split, file in cfg.data_files.items():
            if not Path(file).is_file():
                raise UserError(f"task {cfg.name}: data_files.{split} not found: {file}")
        source: DataSource = FileSource(cfg.data_files)
    elif cfg.source is not None:
        source = DirectorySource(_existing_directory(cfg))
    else:
        raise UserError(f"task {cfg.name}: give data_files (split: file) or a source folder")
    regression = not cfg.label_words
    allowed = REGRESSION_METRICS if regression else CLASSIFICATION_METRICS
    metric = cfg.metric or allowed[0]
    if metric not in allowed:
        kind = "regression (no label_words)" if regression else "classification"
        raise UserError(
            f"task {cfg.name}: metric {metric!r} does not fit a {kind} task; use one of {allowed}"
        )
    return Task(
        name=cfg.name,
        prefix=_template_prefix(cfg.template) or cfg.name,
        label_words=None if regression else list(cfg.label_words),
        metrics=[metric],
        headline_metric=metric,
        formatter=template_formatter(cfg.template, cfg.label_column),
        source=source,
        max_train_samples=cfg.max_train_samples,
        max_eval_samples=cfg.max_eval_samples,
        seed=seed,
    )


def _existing_directory(cfg: TaskConfig) -> Path:
    directory = Path(cfg.source)
    if not directory.is_dir():
        raise UserError(f"task {cfg.name}: source folder not found: {directory}")
    return directory


def _template_prefix(template: str) -> str | None:
    """The first literal word of a template (``'sentiment review: {text}'`` → ``sentiment``)."""
    words = template.split("{", 1)[0].split()
    return words[0].rstrip(":") if words else None
