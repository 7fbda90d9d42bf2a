"""The task registry: built-in tasks and user-defined ones, from a :class:`TaskConfig`.

Built-in tasks read their hub dataset (``source: null``), a local folder with the hub's
columns (``source: data/glue/rte``), or, for the demo suite, generated rows.
A task with ``template`` (and ``data_files`` or a ``source`` folder) is user-defined.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

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
    columns: tuple[str, ...]  # the input columns a row needs (besides the label)
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
        columns=fields,
        metrics=list(metrics),
        headline=headline,
        hub_splits=hub_splits or {},
    )


def _choices(
    hub: tuple[str, str | None], letters: int, read: Callable, columns: tuple[str, ...]
) -> _Builtin:
    return _Builtin(
        hub=hub,
        label_words=OPTION_LETTERS[:letters],
        formatter=partial(choice_formatter, read=read, letters=letters),
        columns=columns,
    )


def _plain(
    hub: tuple[str, str | None] | None, words: list[str] | None, *columns: str, **extra
) -> _Builtin:
    return _Builtin(hub, words, _fields(*columns), columns, **extra)


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
    "boolq": _plain(("aps/super_glue", "boolq"), ["false", "true"], "question", "passage"),
    "cb": _plain(
        ("aps/super_glue", "cb"), ["entailment", "contradiction", "neutral"],
        "hypothesis", "premise", metrics=["accuracy", "f1"],
    ),
    "scitail": _plain(
        ("allenai/scitail", "tsv_format"), ["entailment", "neutral"], "premise", "hypothesis",
        label_aliases={"entails": 0},
    ),
    "piqa": _choices(("ybisk/piqa", None), 2, read_two_solutions, ("goal", "sol1", "sol2")),
    "openbookqa": _choices(
        ("allenai/openbookqa", "main"), 4, lettered_choices("question_stem"),
        ("question_stem", "choices"),
    ),
    "arc_easy": _choices(
        ("allenai/ai2_arc", "ARC-Easy"), 5, lettered_choices("question"), ("question", "choices")
    ),
    "arc_challenge": _choices(
        ("allenai/ai2_arc", "ARC-Challenge"), 5, lettered_choices("question"),
        ("question", "choices"),
    ),
    "demo_sentiment": _plain(None, ["negative", "positive"], "review"),
    "demo_topic": _plain(None, ["sports", "science", "business", "politics"], "text"),
    "demo_similarity": _plain(
        None, None, "sentence1", "sentence2", metrics=["pearson", "spearman"], headline="pearson"
    ),
}  # fmt: skip

TASK_NAMES: tuple[str, ...] = tuple(_BUILTINS)
"""Every built-in task name, in registry order."""

GLUE_TASKS: tuple[str, ...] = tuple(_GLUE)
DEMO_TASKS: tuple[str, ...] = ("demo_sentiment", "demo_topic", "demo_similarity")

_USER_ONLY_KEYS = ("template", "data_files", "label_words", "metric")


@dataclass(frozen=True)
class TaskInfo:
    """What a user needs to write recipes and ``more predict`` input for a built-in task."""

    name: str
    columns: tuple[str, ...]
    label_words: list[str] | None  # None: a regression task (a score from 0 to 5)
    metrics: list[str]
    headline: str
    hub: str  # "path (config)" of its hub dataset, or "generated" for the demo suite
    input_example: str  # the model input the task's formatter makes of a placeholder row


def _placeholder_row(columns: Sequence[str]) -> dict[str, Any]:
    """A row whose text columns hold ``<column>`` (and ``choices`` two placeholder options)."""
    row: dict[str, Any] = {"label": 0, "answerKey": "A"}
    for name in columns:
        options = {"text": ["<option 1>", "<option 2>"], "label": ["A", "B"]}
        row[name] = options if name == "choices" else f"<{name}>"
    return row


def _builtin(name: str) -> _Builtin:
    spec = _BUILTINS.get(name)
    if spec is None:
        close = difflib.get_close_matches(name, TASK_NAMES, n=1)
        hint = f"did you mean {close[0]!r}? " if close else ""
        raise UserError(f"unknown task {name!r}; {hint}list them with: more tasks")
    return spec


def hub_source(name: str) -> HubSource:
    """Where a built-in task's rows live on the hub (an error for generated tasks)."""
    spec = _builtin(name)
    if spec.hub is None:
        raise UserError(f"task {name} is generated on the fly ({ORIGIN}); it has no hub data")
    path, config = spec.hub
    return HubSource(path, config, spec.hub_splits)


def task_info(name: str) -> TaskInfo:
    """The description of one built-in task (a did-you-mean error for an unknown one)."""
    spec = _builtin(name)
    if spec.hub is None:
        hub = "generated"
    else:
        path, config = spec.hub
        hub = f"{path} ({config})" if config else path
    example, _ = spec.formatter(name)(_placeholder_row(spec.columns))
    return TaskInfo(name, spec.columns, spec.label_words, spec.metrics, spec.headline, hub, example)


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
    return hub_source(cfg.name)


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
        shown = (
            f"{directory} (= {directory.resolve()})" if not directory.is_absolute() else directory
        )
        raise UserError(f"task {cfg.name}: source folder not found: {shown}")
    return directory


def _template_prefix(template: str) -> str | None:
    """The first literal word of a template (``'sentiment review: {text}'`` → ``sentiment``)."""
    words = template.split("{", 1)[0].split()
    return words[0].rstrip(":") if words else None
