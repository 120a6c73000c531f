"""The layers and who may import whom, checked on every module's imports (module level and inside functions).

    cli            tandem.cli, tandem.commands.*          anything; nothing imports it
    edge | hub     tandem.edge_agent.* | tandem.cloud_hub.*   never each other, never the partitioner
    partitioner    tandem.partitioner.*, tandem.models.*
    transport      tandem.transport.*, tandem.executors.*
    contracts      tandem.contracts.*                      plan schema, artifact manifest, sync topics
    ground         tandem, tandem.config, .errors, .hashing, .throttled_log, .config_paths, .logs, .status_http

A layer imports the ground, the layers under it (edge, hub and partitioner sit
side by side on transport) and itself. Imports are read with ``ast`` from the
folders setup.cfg maps into ``tandem``, so a lazy import inside a function counts too.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

from tests.layout import NAMESPACE, ROOT, package_dirs

_GROUND_MODULES = ("config", "errors", "hashing", "throttled_log", "config_paths", "logs", "status_http")
GROUND = {f"{NAMESPACE}.{name}" for name in _GROUND_MODULES}
LAYERS = {  # layer -> module prefixes in it
    "contracts": ("tandem.contracts",),
    "transport": ("tandem.transport", "tandem.executors"),
    "edge": ("tandem.edge_agent",),
    "hub": ("tandem.cloud_hub",),
    "partitioner": ("tandem.partitioner", "tandem.models"),
    "cli": ("tandem.cli", "tandem.commands"),
}
MAY_IMPORT = {
    "ground": {"ground"},
    "contracts": {"ground", "contracts"},
    "transport": {"ground", "contracts", "transport"},
    "edge": {"ground", "contracts", "transport", "edge"},
    "hub": {"ground", "contracts", "transport", "hub"},
    "partitioner": {"ground", "contracts", "transport", "partitioner"},
    "cli": {"ground", "contracts", "transport", "edge", "hub", "partitioner", "cli"},
}


def layer_of(module: str) -> str | None:
    """The layer ``module`` (a ``tandem.*`` name) belongs to, or None when no layer claims it."""
    if module == NAMESPACE or module in GROUND:
        return "ground"
    for layer, prefixes in LAYERS.items():
        if any(module == prefix or module.startswith(prefix + ".") for prefix in prefixes):
            return layer
    return None


def our_modules() -> dict[str, Path]:
    """Every module of the namespace: ``tandem.a.b`` -> its file, walked from the folders setup.cfg maps."""
    mapping = package_dirs()
    modules: dict[str, Path] = {}
    for package, folder in mapping.items():
        base = ROOT / folder
        for path in sorted(base.rglob("*.py")):
            parts = list(path.relative_to(base).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            name = ".".join([package, *parts])
            owner = max((p for p in mapping if name == p or name.startswith(p + ".")), key=len)
            if owner == package:  # a folder mapped on its own (tandem.edge_agent) is walked from its own entry
                modules[name] = path
    return modules


def _imported(node: ast.AST, module: str, is_package: bool, known: set[str]) -> Iterator[str]:
    if isinstance(node, ast.Import):
        yield from (alias.name for alias in node.names)
    elif isinstance(node, ast.ImportFrom):
        if node.level:  # relative: from the module's package, up level - 1 packages
            package = module.split(".") if is_package else module.split(".")[:-1]
            base = ".".join(package[: len(package) - node.level + 1] + ([node.module] if node.module else []))
        else:
            base = node.module or ""
        for alias in node.names:
            submodule = f"{base}.{alias.name}"
            yield submodule if submodule in known else base


def imports_of(module: str, path: Path, known: set[str]) -> set[str]:
    """The ``tandem.*`` modules ``module`` imports anywhere in its file."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    is_package = path.name == "__init__.py"
    found = {name for node in ast.walk(tree) for name in _imported(node, module, is_package, known)}
    return {name for name in found if name == NAMESPACE or name.startswith(NAMESPACE + ".")}


def broken_rules() -> list[str]:
    modules = our_modules()
    problems = []
    for module, path in sorted(modules.items()):
        layer = layer_of(module)
        if layer is None:
            problems.append(f"{module} is in no layer: add it to LAYERS or GROUND in tests/unit/test_layers.py")
            continue
        for target in sorted(imports_of(module, path, set(modules))):
            target_layer = layer_of(target)
            if target_layer is None or target_layer not in MAY_IMPORT[layer]:
                problems.append(f"{module} imports {target}: {layer} may not import {target_layer or 'unknown'}")
    return problems


def test_every_layer_imports_only_what_it_may() -> None:
    problems = broken_rules()
    assert not problems, "layer rules broken:\n" + "\n".join(problems)


def test_the_walk_sees_every_folder_and_lazy_imports() -> None:
    """The check cannot pass by reading nothing: every mapped folder yields modules; imports in functions count."""
    modules = our_modules()
    for package in package_dirs():
        assert any(m == package or m.startswith(package + ".") for m in modules), f"no module found for {package}"
    assert {"tandem.contracts.plan", "tandem.cli", "tandem.errors", "tandem.commands.demo"} <= set(modules)
    # tandem.commands.demo imports the plan reader inside a function only
    assert "tandem.contracts.plan" in imports_of("tandem.commands.demo", modules["tandem.commands.demo"], set(modules))


def test_a_broken_rule_is_named(tmp_path: Path) -> None:
    source = tmp_path / "server.py"
    source.write_text("def f():\n    from tandem.edge_agent import agent\n    from . import store\n", encoding="utf-8")
    known = {"tandem.edge_agent.agent", "tandem.cloud_hub.store"}
    assert imports_of("tandem.cloud_hub.server", source, known) == known
    assert layer_of("tandem.edge_agent.agent") == "edge" not in MAY_IMPORT["hub"]
