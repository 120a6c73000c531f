"""``tandem check-config``: validate a config file without starting anything."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from tandem.config import ConfigError, load_config


def register(subparsers: Any) -> None:
    """Add the ``check-config`` command."""
    from tandem.cli import CONFIG_SCHEMAS

    kinds = sorted(CONFIG_SCHEMAS)
    parser = subparsers.add_parser(
        "check-config",
        help="validate a config file and print it with defaults filled in",
        description="Validate a config file without starting anything. Errors name the file, the key path, "
        "the bad value and what was expected; a valid file is printed with every default filled in.",
    )
    parser.add_argument("file", type=Path, help="the YAML file, e.g. configs/hub.yaml")
    parser.add_argument(
        "--kind", choices=kinds, help=f"one of {', '.join(kinds)} (default: the file's stem, e.g. hub for hub.yaml)"
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Validate ``args.file`` against the schema of its kind."""
    from tandem.cli import CONFIG_SCHEMAS

    kind = args.kind or args.file.stem
    if kind not in CONFIG_SCHEMAS:
        known = ", ".join(sorted(CONFIG_SCHEMAS))
        raise ConfigError(str(args.file), [f"unknown config kind {kind!r}; pass --kind with one of: {known}"])
    config = load_config(args.file, CONFIG_SCHEMAS[kind]())
    print(f"{args.file}: valid {kind} config")
    print(config.model_dump_json(indent=2))
    return 0
