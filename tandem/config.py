"""Strict YAML config loading shared by every component.

Each component describes its config as pydantic models deriving from
:class:`StrictModel`, which rejects unknown keys. :func:`load_config` reads a
YAML file and turns any problem into one :class:`ConfigError` whose message
names the file, the key path, the bad value and what was expected::

    configs/hub.yaml: batching.max_batch_sise: unknown key; did you mean 'max_batch_size'?
"""

from __future__ import annotations

import difflib
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

__all__ = ["ConfigError", "StrictModel", "load_config", "parse_config"]

M = TypeVar("M", bound=BaseModel)


class StrictModel(BaseModel):
    """Base for config sections: unknown keys are errors, values are immutable."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class ConfigError(ValueError):
    """A config file could not be read or did not validate; the message says where."""

    def __init__(self, source: str, problems: Sequence[str]) -> None:
        self.source = source
        self.problems = list(problems)
        super().__init__("\n".join(f"{source}: {p}" for p in self.problems))


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
        data = yaml.safe_load(text)
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
        raise ConfigError(source, [_describe(error, model) for error in exc.errors()]) from None


def _describe(error: Any, model: type[BaseModel]) -> str:
    loc, allowed = _resolve(model, tuple(error["loc"]))
    key = ".".join(str(part) for part in loc) or "(top level)"
    if error["type"] == "extra_forbidden":
        guess = difflib.get_close_matches(str(loc[-1]), allowed, n=1)
        hint = f"did you mean {guess[0]!r}?" if guess else f"allowed keys here: {', '.join(sorted(allowed))}"
        return f"{key}: unknown key; {hint}"
    if error["type"] == "missing":
        return f"{key}: required key is missing"
    if error["type"] == "union_tag_invalid":
        ctx = error["ctx"]
        tag_key = ctx["discriminator"].strip("'")
        return f"{key}.{tag_key}: value {ctx['tag']!r} is not valid: expected one of {ctx['expected_tags']}"
    message = error["msg"].removeprefix("Value error, ")
    message = message[0].lower() + message[1:]
    return f"{key}: value {error.get('input')!r} is not valid: {message}"


def _resolve(model: type[BaseModel], loc: tuple[Any, ...]) -> tuple[tuple[Any, ...], list[str]]:
    """The user-facing key path (union tags dropped) and the keys allowed beside its last part."""
    path: list[Any] = []
    current: Any = model
    parent: Any = None
    for i, part in enumerate(loc):
        if part == "[key]":
            continue
        if i == len(loc) - 1:
            parent = current
        fields = getattr(current, "model_fields", None)
        if fields is not None and part in fields:
            path.append(part)
            if i < len(loc) - 1:
                current = _unwrap_optional(fields[part].annotation)
            continue
        member = _union_member(current, part)
        if member is not None:
            current = member
            continue
        path.append(part)
        current = None
    fields = getattr(parent, "model_fields", None)
    return tuple(path), list(fields) if fields else []


def _unwrap_optional(annotation: Any) -> Any:
    """``Model | None`` -> ``Model``; anything else unchanged."""
    members = [arg for arg in _union_args(annotation) if arg is not type(None)]
    return members[0] if len(members) == 1 and getattr(members[0], "model_fields", None) is not None else annotation


def _union_member(annotation: Any, tag: Any) -> Any:
    """The model in a tagged union whose ``type`` field defaults to ``tag``."""
    for arg in _union_args(annotation):
        fields = getattr(arg, "model_fields", None)
        if fields and "type" in fields and fields["type"].default == tag:
            return arg
    return None


def _union_args(annotation: Any) -> list[Any]:
    args = list(getattr(annotation, "__args__", ()))
    out: list[Any] = []
    for arg in args:
        out.extend(_union_args(arg) if getattr(arg, "__args__", None) else [arg])
    return out
