"""Relative paths in a config file are relative to that file's folder."""

from __future__ import annotations

from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel

__all__ = ["resolve_relative_paths"]

Model = TypeVar("Model", bound=BaseModel)


def resolve_relative_paths(config: Model, base: Path) -> Model:
    """``config`` with every relative ``Path`` in it, nested models and lists included, made absolute under ``base``.

    A component started as ``tandem hub --config /etc/tandem/hub.yaml`` then
    finds ``certs/ca.pem`` or ``plans/v3`` next to its config file, whatever
    the working directory, as it finds its plans and its store.
    """
    return _resolved(config, base.resolve())


def _resolved(value: Any, base: Path) -> Any:
    if isinstance(value, Path):
        return value if value.is_absolute() else base / value
    if isinstance(value, BaseModel):
        updates = {}
        for name in type(value).model_fields:
            field = getattr(value, name)
            resolved = _resolved(field, base)
            if resolved is not field:
                updates[name] = resolved
        return value.model_copy(update=updates) if updates else value
    if isinstance(value, (list, tuple)):
        items = [_resolved(item, base) for item in value]
        changed = any(new is not old for new, old in zip(items, value, strict=True))
        return type(value)(items) if changed else value
    if isinstance(value, dict):
        entries = {key: _resolved(item, base) for key, item in value.items()}
        return entries if any(entries[key] is not value[key] for key in value) else value
    return value
