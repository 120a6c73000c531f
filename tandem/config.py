"""Strict YAML config loading shared by every component.

Each component describes its config as pydantic models deriving from
:class:`StrictModel`, which rejects unknown keys. :func:`load_config` reads a
YAML file and turns any problem into one :class:`ConfigError` whose message
names the file, the key path, the bad value and what was expected::

    configs/hub.yaml: batching.max_batch_sise: unknown key; did you mean 'max_batch_size'?
"""

from __future__ import annotations

import difflib
import types
import typing
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

from tandem.errors import TandemError

__all__ = ["ConfigError", "StrictModel", "load_config", "parse_config"]

M = TypeVar("M", bound=BaseModel)


class StrictModel(BaseModel):
    """Base for config sections: unknown keys are errors, values are immutable."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class ConfigError(TandemError, ValueError):
    """A config file could not be read or did not validate; the message says where."""

    def __init__(self, source: str, problems: Sequence[str]) -> None:
        self.source = source
        self.problems = list(problems)
        super().__init__("\n".join(f"{source}: {p}" for p in self.problems))


class _StrictLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that rejects a key given twice in one mapping (YAML keeps the last silently)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, int] = {}
        for key_node, _value in node.value:
            key = self.construct_object(key_node, deep=True)
            line = key_node.start_mark.line + 1
            if isinstance(key, typing.Hashable) and key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"key {key!r} given twice (first on line {seen[key]})", key_node.start_mark
                )
            if isinstance(key, typing.Hashable):
                seen[key] = line
        return super().construct_mapping(node, deep=deep)


def load_config(path: str | Path, model: type[M]) -> M:
    """Read ``path`` as YAML and validate it against ``model``."""
    source = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(source, ["file not found"]) from None
    except OSError as exc:
        raise ConfigError(source, [f"cannot be read: {exc.strerror}"]) from exc
    try:
        data = yaml.load(text, Loader=_StrictLoader)  # a SafeLoader: no arbitrary objects
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(source, [f"{where}not valid YAML: {problem}"]) from exc
    return parse_config(data if data is not None else {}, model, source=source)


def parse_config(data: Any, model: type[M], *, source: str = "<config>") -> M:
    """Validate already-parsed data against ``model``; errors name ``source``."""
    if not isinstance(data, dict):
        raise ConfigError(source, [f"expected a mapping of keys at the top level, got {type(data).__name__}"])
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(source, _merge([_describe(error, model) for error in exc.errors()])) from None


def _merge(problems: list[str]) -> list[str]:
    """One line per bad value: the alternatives of an untagged union (``float | 'auto'``) joined with "or"."""
    out: list[str] = []
    for problem in dict.fromkeys(problems):
        subject, sep, why = problem.partition(" is not valid: ")
        if sep and out and out[-1].startswith(subject + sep):
            out[-1] = f"{out[-1]}; or {why}"
        else:
            out.append(problem)
    return out


def _describe(error: Any, model: type[BaseModel]) -> str:
    loc, allowed, at = _resolve(model, tuple(error["loc"]))
    key = ".".join(str(part) for part in loc) or "(top level)"
    if error["type"] == "extra_forbidden":
        guess = difflib.get_close_matches(str(loc[-1]), allowed, n=1)
        if guess:
            return f"{key}: unknown key; did you mean {guess[0]!r}?"
        if not allowed:
            return f"{key}: unknown key"
        return f"{key}: unknown key; allowed keys here: {', '.join(sorted(allowed))}"
    if error["type"] == "missing":
        return f"{key}: required key is missing"
    if error["type"] in ("union_tag_invalid", "union_tag_not_found"):
        ctx = error["ctx"]
        tag_key = ctx["discriminator"].strip("'")
        expected = ctx.get("expected_tags") or ", ".join(repr(tag) for tag in _union_tags(at))
        if error["type"] == "union_tag_not_found":
            return f"{key}.{tag_key}: required key is missing; expected one of {expected}"
        return f"{key}.{tag_key}: value {ctx['tag']!r} is not valid: expected one of {expected}"
    message = error["msg"].removeprefix("Value error, ")
    message = message[0].lower() + message[1:]
    return f"{key}: value {error.get('input')!r} is not valid: {message}"


def _resolve(model: type[BaseModel], loc: tuple[Any, ...]) -> tuple[tuple[Any, ...], list[str], Any]:
    """Follow pydantic's error location through the schema.

    Returns the user-facing key path (list indices kept, union tags and member
    labels dropped), the keys allowed in the mapping that holds its last part,
    and the annotation found at the end of the path.
    """
    path: list[Any] = []
    current: Any = model
    allowed: list[str] = []
    for i, part in enumerate(loc):
        if part == "[key]":
            continue
        current = _strip(current)
        fields = getattr(current, "model_fields", None)
        if fields is not None:
            if i == len(loc) - 1:
                allowed = list(fields)
            path.append(part)
            current = fields[part].annotation if part in fields else None
            continue
        item = _item_type(current)
        if item is not None:
            path.append(part)
            current = item
            continue
        members = _union_args(current)
        if len(members) > 1 and isinstance(part, str):
            current = _union_member(current, part) or _named_member(members, part) or current
            continue
        path.append(part)
        current = None
    return tuple(path), allowed, _strip(current)


def _strip(annotation: Any) -> Any:
    """``Annotated[X, ...]`` -> ``X``; ``X | None`` -> ``X``; anything else unchanged."""
    if typing.get_origin(annotation) is typing.Annotated:
        annotation = typing.get_args(annotation)[0]
    members = [arg for arg in _union_args(annotation) if arg is not type(None)]
    return members[0] if len(members) == 1 and members[0] is not annotation else annotation


def _item_type(annotation: Any) -> Any:
    """The item type of ``list[X]``, ``tuple[X, ...]``, ``set[X]`` or the value type of ``dict[K, X]``."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin in (list, set, frozenset, tuple) and args:
        return args[0]
    if origin is dict and len(args) == 2:
        return args[1]
    return None


def _union_member(annotation: Any, tag: Any) -> Any:
    """The model in a tagged union whose ``type`` field defaults to ``tag``."""
    for arg in _union_args(annotation):
        fields = getattr(arg, "model_fields", None)
        if fields and "type" in fields and fields["type"].default == tag:
            return arg
    return None


def _named_member(members: list[Any], label: str) -> Any:
    """The member of an untagged union that pydantic labels ``label`` (a model's class name)."""
    return next((m for m in members if getattr(m, "model_fields", None) is not None and m.__name__ == label), None)


def _union_tags(annotation: Any) -> list[Any]:
    """The ``type`` values of a tagged union's models."""
    tags = []
    for arg in _union_args(annotation):
        fields = getattr(arg, "model_fields", None)
        if fields and "type" in fields:
            tags.append(fields["type"].default)
    return tags


def _union_args(annotation: Any) -> list[Any]:
    if typing.get_origin(annotation) is typing.Annotated:
        annotation = typing.get_args(annotation)[0]
    if typing.get_origin(annotation) not in (typing.Union, types.UnionType):
        return [annotation]
    out: list[Any] = []
    for arg in typing.get_args(annotation):
        out.extend(_union_args(arg))
    return out
