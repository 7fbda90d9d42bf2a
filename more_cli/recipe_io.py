"""Reading, overriding, checking and writing recipes.

``load_recipe`` turns a YAML file plus ``--set key.path=value`` overrides into a validated
:class:`~more_cli.recipe.Recipe`. Every problem (file, YAML, override syntax, schema) becomes
a :class:`~more_cli.errors.UserError`; schema problems are collected and reported together,
one line each, naming the dotted key and the fix. ``dump_resolved`` writes a recipe back
with every default filled in, and ``reference_markdown`` renders the key reference in
``docs/recipes.md`` from the field descriptions in :mod:`more_cli.recipe`.
"""

from __future__ import annotations

import difflib
import re
import reprlib
import types
from collections.abc import Sequence
from pathlib import Path, PurePath
from typing import Annotated, Any, Literal, Union, get_args, get_origin

import yaml
from pydantic import BaseModel, ValidationError
from pydantic.fields import FieldInfo
from yaml.constructor import ConstructorError

from more_cli.adapters.config import KIND_FIELDS, with_legacy_defaults, without_inactive
from more_cli.errors import UserError
from more_cli.recipe import Recipe
from more_cli.rundir import atomic_write_text

Loc = tuple[str | int, ...]

_MERGE_TAG = "tag:yaml.org,2002:merge"
_DOCUMENT_END = "...\n"  # what yaml.dump appends after a lone scalar
_INDEX = re.compile(r"[0-9]+")  # a list index in a --set key (str.isdigit also takes '²')
_PLAIN_KEY = re.compile(r"[\w\-]+")
_TYPE_ERROR = re.compile(r"_(type|parsing)$|^int_from_float$")

_short = reprlib.Repr()
_short.maxstring = 60
_short.maxother = 60
_short.maxlevel = 3


class _StrictLoader(yaml.SafeLoader):
    """The safe loader, plus: a key given twice in one mapping is an error, and a value the
    safe constructors fail on (``2020-13-45``, ``!!int abc``) is a YAML error with a line."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[str] = set()
        for key_node, _ in node.value:
            if not isinstance(key_node, yaml.ScalarNode) or key_node.tag == _MERGE_TAG:
                continue
            if key_node.value in seen:
                raise ConstructorError(
                    None,
                    None,
                    f"key {key_node.value!r} is given twice; keep one",
                    key_node.start_mark,
                )
            seen.add(key_node.value)
        return super().construct_mapping(node, deep=deep)

    def construct_object(self, node: yaml.Node, deep: bool = False) -> Any:
        try:
            return super().construct_object(node, deep=deep)
        except (ValueError, TypeError, KeyError, AttributeError) as err:
            kind = node.tag.rsplit(":", 1)[-1]
            reason = _short.repr(str(err))
            raise ConstructorError(
                None, None, f"cannot read this {kind} value ({reason}); quote it", node.start_mark
            ) from None


def load_recipe(
    path: str | Path, overrides: Sequence[str] = (), *, resolved: bool = False
) -> Recipe:
    """Read a YAML recipe, apply ``--set`` overrides and validate it.

    Args:
        path: The recipe file.
        overrides: ``dotted.key=value`` strings applied in order; the value is parsed as YAML
            (``adapter.targets=[q,v]``, ``model.load_in_4bit=true``), list items are addressed
            by index (``tasks.0.name=rte``) and an empty value means null.
        resolved: ``path`` is a run's ``recipe.resolved.yaml``. Runs written before adapter
            format 2 hold every adapter key whatever the kind; those the kind does not read
            are dropped, and such a ``multilora`` (then: one LoRA per task) is read as
            ``per_task_lora``. A MoRE run from before MoRE's defaults moved (no
            ``initial_rank``, or null) is read with the settings it was trained with
            (:func:`~more_cli.adapters.config.with_legacy_defaults`).

    Returns:
        The validated recipe.

    Raises:
        UserError: The file cannot be read or parsed, or the recipe is invalid. For an
            invalid recipe ``details`` holds one line per problem, all problems at once.
    """
    label = f"recipe {_shown(str(path))}"
    data = _parse_yaml(_read_text(Path(path), label), label)
    if not isinstance(data, dict):
        kind = "empty" if data is None else f"a {_yaml_kind(data)}"
        raise UserError(
            f"{label} is {kind}; it must be a mapping of sections (model:, tasks:, ...)"
        )
    if resolved:
        data = _upgraded_resolved(data)
    problems: list[str] = []
    overridden: dict[Loc, str] = {}
    for raw in overrides:
        try:
            key, value = _parse_override(raw)
            data = _set_path(data, key, value)
        except _OverrideError as err:
            problems.append(f"--set {_shown(raw)}: {err}")
        else:
            overridden[key] = raw
    try:
        recipe = Recipe.model_validate(data)
    except ValidationError as err:
        problems.extend(_explain(err, data, overridden))
    else:
        if not problems:
            return recipe
    raise _recipe_error(label, problems)


def _upgraded_resolved(data: dict[str, Any]) -> dict[str, Any]:
    adapter = data.get("adapter")
    if not isinstance(adapter, dict):
        return data
    if without_inactive(adapter) != adapter:  # written before format 2: every key
        if adapter.get("kind") == "multilora":
            adapter = adapter | {"kind": "per_task_lora"}
        adapter = without_inactive(adapter)
    return data | {"adapter": with_legacy_defaults(adapter)}


def dump_resolved(recipe: Recipe, path: Path) -> None:
    """Write ``recipe`` as YAML with every default filled in, atomically.

    The text goes to a temporary file in the same folder, is flushed to disk, then renamed
    over ``path``, so a crash leaves the old file or the new one, never half of one.
    ``load_recipe(path) == recipe`` holds afterwards.
    """
    text = "# Resolved recipe: every key, defaults filled in. Load it like any recipe.\n"
    text += yaml.dump(
        recipe.model_dump(), Dumper=_RecipeDumper, sort_keys=False, allow_unicode=True
    )
    atomic_write_text(Path(path), text)


def reference_markdown() -> str:
    """The reference of every recipe key, rendered from the schema's field descriptions.

    One table per section (``model``, ``adapter``, ``tasks``, ...); nested sections are
    flattened into dotted keys and ``N`` stands for a list index (``tasks.N.name``).
    """
    top_level = []
    blocks = []
    for name, field in Recipe.model_fields.items():
        section = _section_model(field.annotation)
        if section is None:
            top_level.append(_reference_row(name, field))
            continue
        prefix = f"{name}.N." if get_origin(field.annotation) is list else f"{name}."
        blocks.append(
            f"### `{name}`\n\n{_one_line(section.__doc__ or '')}\n\n"
            + _table(_reference_rows(section, prefix))
        )
    blocks.append("### top level\n\n" + _table(top_level))
    return "\n".join(blocks)


# --- reading -------------------------------------------------------------------------------


def _read_text(path: Path, label: str) -> str:
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise UserError(f"{label} not found; check the path") from None
    except IsADirectoryError:
        raise UserError(f"{label} is a directory; pass a .yaml file") from None
    except OSError as err:
        raise UserError(f"{label} cannot be read: {err.strerror or err}") from None
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise UserError(
            f"{label} is not UTF-8 text (bad byte at offset {err.start}); save it as UTF-8"
        ) from None


def _parse_yaml(text: str, label: str) -> Any:
    try:
        return yaml.load(text, Loader=_StrictLoader)  # SafeLoader subclass
    except ConstructorError as err:
        fix = "; recipes hold plain values only, remove the tag" if _is_tag_error(err) else ""
        raise UserError(f"{label}{_where(err)}: {err.problem}{fix}") from None
    except yaml.MarkedYAMLError as err:
        raise UserError(f"{label} is not valid YAML{_where(err)}: {err.problem}") from None
    except yaml.YAMLError as err:
        raise UserError(f"{label} is not valid YAML: {_one_line(str(err))}") from None
    except RecursionError:
        raise UserError(f"{label} is nested too deeply to be a recipe") from None


def _is_tag_error(err: ConstructorError) -> bool:
    return (err.problem or "").startswith("could not determine a constructor for the tag")


def _where(err: yaml.MarkedYAMLError) -> str:
    mark = err.problem_mark
    return f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""


def _yaml_kind(value: Any) -> str:
    return "list" if isinstance(value, list) else f"single value ({_short.repr(value)})"


def _shown(text: str) -> str:
    """``text`` as it can appear inside a one-line message (quoted if it must be)."""
    return text if text.isprintable() and text.strip() == text and text else repr(text)


def _one_line(text: str) -> str:
    return " ".join(text.split())


# --- overrides -----------------------------------------------------------------------------


class _OverrideError(Exception):
    """A ``--set`` that cannot be applied; the message says why."""


def _parse_override(raw: str) -> tuple[Loc, Any]:
    key, sep, text = raw.partition("=")
    parts = key.strip().split(".")
    if not sep or not all(parts):
        raise _OverrideError("expected dotted.key=value, e.g. train.lr=1e-4")
    try:
        value = yaml.load(text, Loader=_StrictLoader)  # SafeLoader subclass
    except yaml.YAMLError as err:
        problem = getattr(err, "problem", None) or str(err)
        raise _OverrideError(f"value is not valid YAML ({_one_line(problem)}); quote it") from None
    except RecursionError:
        raise _OverrideError("value is nested too deeply") from None
    return tuple(int(p) if _INDEX.fullmatch(p) else p for p in parts), value


def _set_path(data: dict[Any, Any], key: Loc, value: Any) -> dict[Any, Any]:
    """Return a copy of ``data`` with ``value`` set at ``key``, creating missing sections.

    Containers along the path are copied, so YAML anchors shared with other keys keep their
    values. Unknown keys are set like any other and rejected by validation, as in a file.
    """
    root = dict(data)
    parent: dict[Any, Any] | list[Any] = root
    for depth, part in enumerate(key):
        if isinstance(parent, list) and not (isinstance(part, int) and part < len(parent)):
            raise _OverrideError(
                f"{_dotted(key[:depth])} is a list of {len(parent)} items; "
                f"use an index from 0 to {len(parent) - 1}"
            )
        if isinstance(parent, dict):
            part = str(part)
        if depth == len(key) - 1:
            parent[part] = value
            break
        child = parent[part] if isinstance(parent, list) else parent.get(part, {})
        if isinstance(child, dict):
            child = dict(child)
        elif isinstance(child, list):
            child = list(child)
        else:
            raise _OverrideError(
                f"{_dotted(key[: depth + 1])} is {_short.repr(child)}, not a section or a list"
            )
        parent[part] = child
        parent = child
    return root


# --- validation errors ---------------------------------------------------------------------


def _recipe_error(label: str, problems: list[str]) -> UserError:
    if len(problems) == 1:
        return UserError(f"{label}: {problems[0]}", details=problems)
    return UserError(f"{label} has {len(problems)} errors; see below", details=problems)


def _explain(err: ValidationError, data: dict[Any, Any], overridden: dict[Loc, str]) -> list[str]:
    """One line per problem; the failed branches of one union field make a single line."""
    lines = []
    unions_done: set[Loc] = set()
    for error in err.errors():
        loc, annotation, in_union = _resolve(tuple(error["loc"]))
        if in_union:
            if loc in unions_done:
                continue
            unions_done.add(loc)
            got = _short.repr(_value_at(data, loc))
            line = f"expected {_describe(annotation)}, got {got}"
        else:
            line = _explain_one(error, loc, annotation)
        source = _override_for(loc, overridden)
        if source is not None:
            line += f" (from --set {_shown(source)})"
        lines.append(f"{_dotted(loc)}: {line}")
    return lines


def _value_at(data: Any, loc: Loc) -> Any:
    for part in loc:
        data = data[part]
    return data


def _explain_one(error: dict[str, Any], loc: Loc, annotation: Any) -> str:
    kind = error["type"]
    got = _short.repr(error["input"])
    if kind in ("extra_forbidden", "invalid_key"):
        return _unknown_key(loc)
    if kind == "missing":
        return "required key is missing; add it"
    if _TYPE_ERROR.search(kind):
        return f"expected {_describe(annotation)}, got {got}"
    message = error["msg"].removeprefix("Value error, ")
    return message if kind == "value_error" else f"{message}, got {got}"


def _unknown_key(loc: Loc) -> str:
    section = _resolve(loc[:-1])[1]
    fields = list(section.model_fields) if _is_model(section) else []
    match = difflib.get_close_matches(str(loc[-1]), fields, n=1, cutoff=0.6)
    hint = f"did you mean {match[0]!r}?" if match else f"allowed keys: {', '.join(fields)}"
    return f"unknown key; {hint}"


def _override_for(loc: Loc, overridden: dict[Loc, str]) -> str | None:
    """The ``--set`` that touched ``loc`` (set it, or set something inside it), if any."""
    for key, raw in overridden.items():
        if loc and (key[: len(loc)] == loc or loc[: len(key)] == key):
            return raw
    return None


def _resolve(loc: Loc) -> tuple[Loc, Any, bool]:
    """Follow a pydantic error location through the schema.

    Returns the location as a user writes it (pydantic's ``[key]`` marker and union-branch
    tags removed), the type expected there (``None`` past an unknown key), and whether the
    error came from one branch of a union; those are reported once, for the whole field.
    """
    annotation: Any = Recipe
    for depth, part in enumerate(loc):
        annotation = _without_none(annotation)
        origin = get_origin(annotation)
        if _is_model(annotation):
            if part not in annotation.model_fields:
                return loc, None, False
            annotation = annotation.model_fields[part].annotation
        elif origin is list:
            annotation = get_args(annotation)[0]
        elif origin is dict:
            key_type, value_type = get_args(annotation)
            annotation = key_type if part == "[key]" else value_type
        elif origin in (Union, types.UnionType):
            return loc[:depth], annotation, True
    return tuple(p for p in loc if p != "[key]"), annotation, False


def _without_none(annotation: Any) -> Any:
    if get_origin(annotation) in (Union, types.UnionType):
        members = [a for a in get_args(annotation) if a is not type(None)]
        if len(members) == 1:
            return members[0]
    return annotation


def _is_model(annotation: Any) -> bool:
    return isinstance(annotation, type) and issubclass(annotation, BaseModel)


_TYPE_NAMES: dict[Any, tuple[str, str]] = {
    str: ("a string", "strings"),
    int: ("an integer", "integers"),
    float: ("a number", "numbers"),
    bool: ("true or false", "true/false values"),
    Path: ("a path", "paths"),
    type(None): ("null", "nulls"),
}


def _describe(annotation: Any, plural: bool = False) -> str:
    """A type as a recipe writer reads it: 'an integer', 'one of nf4, fp4', ..."""
    origin = get_origin(annotation)
    args = get_args(annotation)
    if origin is Annotated:  # a constrained type (StrictInt, ...) reads as the type itself
        return _describe(args[0], plural)
    if origin in (Union, types.UnionType):
        return " or ".join(_describe(a, plural) for a in args)
    if origin is Literal:
        return ("values from " if plural else "one of ") + ", ".join(str(a) for a in args)
    if origin is list:
        return "lists" if plural else f"a list of {_describe(args[0], plural=True)}"
    if origin is dict:
        mapping = f"{_describe(args[0], plural=True)} to {_describe(args[1], plural=True)}"
        return "mappings" if plural else f"a mapping from {mapping}"
    if _is_model(annotation):
        return "sections" if plural else "a section (a mapping of keys)"
    singular, many = _TYPE_NAMES.get(annotation, (str(annotation), str(annotation)))
    return many if plural else singular


def _dotted(loc: Loc) -> str:
    if not loc:
        return "(top level)"
    return ".".join(
        str(p) if isinstance(p, int) or _PLAIN_KEY.fullmatch(p) else repr(p) for p in loc
    )


# --- writing -------------------------------------------------------------------------------


class _RecipeDumper(yaml.SafeDumper):
    """The safe dumper, plus paths written as strings and strings that round-trip."""

    def represent_str(self, data: str) -> yaml.ScalarNode:
        # Line breaks (\n, \x85, \u2028) written raw come back folded into spaces; only
        # the double-quoted style escapes every one of them.
        style = None if data.isprintable() else '"'
        return self.represent_scalar("tag:yaml.org,2002:str", data, style=style)


_RecipeDumper.add_representer(str, _RecipeDumper.represent_str)
_RecipeDumper.add_multi_representer(PurePath, lambda dumper, path: dumper.represent_str(str(path)))


def _section_model(annotation: Any) -> type[BaseModel] | None:
    """The section model behind a field (``model: ModelConfig``, ``tasks: list[TaskConfig]``)."""
    if get_origin(annotation) is list:
        annotation = get_args(annotation)[0]
    return annotation if _is_model(annotation) else None


def _reference_rows(model: type[BaseModel], prefix: str) -> list[str]:
    rows = []
    for name, field in model.model_fields.items():
        section = _section_model(field.annotation)
        if section is None:
            rows.append(_reference_row(prefix + name, field))
        else:
            index = "N." if get_origin(field.annotation) is list else ""
            rows += _reference_rows(section, f"{prefix}{name}.{index}")
    return rows


def _reference_row(key: str, field: FieldInfo) -> str:
    kind = _cell(_describe(field.annotation) + _bounds(field))
    name = key.removeprefix("adapter.")
    if key.startswith("adapter.") and name in KIND_FIELDS:
        # Kind-specific: absent for the other kinds, so its default is the kinds' default.
        kinds, value = KIND_FIELDS[name]
        default = f"{_flow(value)} ({', '.join(kinds)} only)"
    else:
        default = _default_text(field)
    return f"| `{key}` | {kind} | {default} | {_cell(field.description)} |"


def _bounds(field: FieldInfo) -> str:
    """Numeric limits from ``Field(ge=..., le=...)`` as text, e.g. ' (>= 1, <= 1024)'."""
    symbols = {"gt": ">", "ge": ">=", "lt": "<", "le": "<="}
    limits = [
        f"{symbol} {getattr(item, name)}"
        for item in field.metadata
        for name, symbol in symbols.items()
        if getattr(item, name, None) is not None
    ]
    return f" ({', '.join(limits)})" if limits else ""


def _default_text(field: FieldInfo) -> str:
    if field.is_required():
        return "required"
    return _flow(field.default_factory() if field.default_factory else field.default)


def _flow(value: Any) -> str:
    flow = yaml.dump(value, Dumper=_RecipeDumper, default_flow_style=True)
    return f"`{flow.removesuffix(_DOCUMENT_END).strip()}`"


def _table(rows: list[str]) -> str:
    return "\n".join(["| key | type | default | description |", "|---|---|---|---|", *rows]) + "\n"


def _cell(text: str | None) -> str:
    return _one_line(text or "").replace("|", "\\|")
