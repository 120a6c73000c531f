"""The ``tandem`` command: one entry point, one module per subcommand.

Each command module exposes ``register(subparsers)``, which adds its parser and
sets ``func`` to a handler returning an exit code. A module whose extra is not
installed (an edge box has no torch or onnx) is left out, so its command does
not exist there rather than failing half-way.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import os
import sys
import traceback
from collections.abc import Callable, Sequence
from typing import Any

from tandem import __version__
from tandem.config import ConfigError
from tandem.errors import TandemError
from tandem.logs import LEVELS
from tandem.logs import configure as configure_logs

__all__ = ["COMMAND_MODULES", "CONFIG_SCHEMAS", "build_parser", "main"]

# module: (its commands, the extra that installs what they import, those packages).
# A command whose packages are missing here is left out, not offered and then failing half-way.
COMMAND_MODULES: dict[str, tuple[tuple[str, ...], str, tuple[str, ...]]] = {
    "tandem.commands.demo": (
        ("demo",),
        "edge,cloud,partition",
        (
            "onnx",
            "onnxruntime",
            "networkx",
            "matplotlib",
            "sklearn",
            "skimage",
            "torch",
            "torchvision",
            "efficientnet_lite_pytorch",
            "prometheus_client",
        ),
    ),
    "tandem.partitioner.cli": (
        ("partition", "profile"),
        "partition",
        ("onnx", "onnxruntime", "networkx", "matplotlib"),
    ),
    "tandem.partitioner.engine": (("build-engine",), "", ()),  # says itself when TensorRT is missing
    "tandem.cloud_hub.cli": (("hub",), "cloud", ("onnx", "onnxruntime", "prometheus_client")),
    "tandem.edge_agent.cli": (("edge",), "edge", ("onnxruntime", "psutil")),
    "tandem.commands.fleet": (("fleet",), "cloud", ("prometheus_client",)),
    "tandem.commands.publish": (("publish",), "cloud", ("prometheus_client",)),
    "tandem.commands.check_config": (("check-config",), "", ()),
    "tandem.commands.keys": (("keys",), "", ()),
    "tandem.commands.loopback": (("loopback",), "partition", ("torch", "torchvision")),
}


def _schema(module: str, name: str) -> Callable[[], Any]:
    return lambda: getattr(importlib.import_module(module), name)


# Config kinds by name (also the stem of the example file in configs/).
CONFIG_SCHEMAS: dict[str, Callable[[], Any]] = {
    "demo": _schema("tandem.commands.demo", "DemoConfig"),
    "edge": _schema("tandem.edge_agent.config", "EdgeConfig"),
    "hub": _schema("tandem.cloud_hub.config", "HubConfig"),
    "loopback": _schema("tandem.commands.loopback", "LoopbackConfig"),
    "partition": _schema("tandem.partitioner.config", "PartitionConfig"),
}


def build_parser() -> tuple[argparse.ArgumentParser, dict[str, str]]:
    """The top-level parser, and the commands left out of this install with why (see :data:`COMMAND_MODULES`)."""
    parser = argparse.ArgumentParser(prog="tandem", description="Edge-cloud split inference.")
    parser.add_argument("--version", action="version", version=f"tandem {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages (--log-level debug)")
    parser.add_argument("--log-level", choices=LEVELS, default="info", help="log this level and above (default info)")
    parser.add_argument(
        "--log-format", choices=("text", "json"), default="text", help="log lines as text or one JSON object each"
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    missing: dict[str, str] = {}
    for name, (commands, extra, packages) in COMMAND_MODULES.items():
        absent = [package for package in packages if importlib.util.find_spec(package) is None]
        if absent:
            why = f"needs {', '.join(absent)}: pip install 'tandem-inference[{extra}]'"
            missing.update(dict.fromkeys(commands, why))
            continue
        importlib.import_module(name).register(subparsers)
    if missing:
        parser.epilog = "not available in this install: " + "; ".join(f"{c} ({why})" for c, why in missing.items())
    return parser, missing


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``tandem`` with ``argv``; returns the process exit code."""
    parser, missing = build_parser()
    given = list(sys.argv[1:] if argv is None else argv)
    command = next((arg for arg in given if not arg.startswith("-")), None)
    if command in missing:
        print(f"tandem {command}: not available in this install; it {missing[command]}", file=sys.stderr)
        return 2
    args = parser.parse_args(given)
    level = "debug" if getattr(args, "verbose", False) else getattr(args, "log_level", "info")
    configure_logs(level, getattr(args, "log_format", "text"))
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args))
    except ConfigError as exc:
        print(f"tandem {args.command}: config error:\n{exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # `tandem check-config x.yaml | head`: the reader has what it wanted
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error when Python flushes
        return 0
    except Exception as exc:
        if not isinstance(exc, TandemError):  # its message says what and where; anything else is a bug
            raise
        if args.verbose:
            traceback.print_exc()
        print(f"tandem {args.command}: error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
