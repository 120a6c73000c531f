"""One import namespace: a wheel adds the single top-level name ``tandem``, and a user's own ``models`` and
``transport`` packages beside it break nothing (they used to shadow ours: ``No module named 'transport.config'``)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import pytest

from tests.layout import NAMESPACE, ROOT, build_wheel, package_dirs

# Imports whatever the user has beside it, then ours; prints where each came from.
PROBE = textwrap.dedent(
    """
    import json, sys
    import models, transport
    import tandem.cloud_hub.server, tandem.edge_agent.agent, tandem.models.registry, tandem.transport.codec
    mods = ["models", "transport", "tandem", "tandem.edge_agent.agent", "tandem.cloud_hub.server",
            "tandem.transport.codec", "tandem.models.registry"]
    print(json.dumps({name: [getattr(sys.modules[name], "OWNER", "tandem"), sys.modules[name].__file__]
                      for name in mods}))
    """
)


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_wheel(tmp_path_factory.mktemp("src"), tmp_path_factory.mktemp("wheel"))


@pytest.fixture
def user_dir(tmp_path: Path) -> Path:
    """A working folder holding the user's own ``models`` and ``transport`` packages."""
    work = tmp_path / "work"
    for name in ("models", "transport"):
        (work / name).mkdir(parents=True)
        (work / name / "__init__.py").write_text(f'OWNER = "user"\nWHAT = "{name} of my own"\n')
    return work


def _probe(cwd: Path, pythonpath: Path | None) -> dict[str, list[str]]:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    if pythonpath is not None:
        env["PYTHONPATH"] = str(pythonpath)
    result = subprocess.run(
        [sys.executable, "-c", PROBE], cwd=cwd, env=env, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    found: dict[str, list[str]] = json.loads(result.stdout.splitlines()[-1])
    return found


def test_the_wheel_installs_one_top_level_name(wheel: Path) -> None:
    archive = zipfile.ZipFile(wheel)
    tops = {name.split("/")[0] for name in archive.namelist()}
    dist_info = {top for top in tops if top.endswith(".dist-info")}
    assert len(dist_info) == 1, sorted(tops)
    assert tops - dist_info == {NAMESPACE}, f"{wheel.name} installs {sorted(tops - dist_info)}"
    top_level = f"{dist_info.pop()}/top_level.txt"
    if top_level in archive.namelist():
        assert archive.read(top_level).decode().split() == [NAMESPACE]


def test_the_wheel_holds_every_module_where_its_import_name_says(wheel: Path) -> None:
    names = set(zipfile.ZipFile(wheel).namelist())
    expected = {
        f"{package.replace('.', '/')}/{path.relative_to(ROOT / folder).as_posix()}"
        for package, folder in package_dirs().items()
        for path in (ROOT / folder).rglob("*.py")
    }
    assert {"tandem/cli.py", "tandem/edge_agent/agent.py", "tandem/transport/codec.py"} <= expected
    assert expected <= names, f"missing from {wheel.name}: {sorted(expected - names)}"


def test_user_packages_beside_the_unpacked_wheel_break_nothing(wheel: Path, user_dir: Path, tmp_path: Path) -> None:
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    found = _probe(user_dir, site)
    for name in ("models", "transport"):
        owner, where = found[name]
        assert owner == "user" and Path(where).is_relative_to(user_dir), (name, where)
    for name in ("tandem", "tandem.edge_agent.agent", "tandem.cloud_hub.server", "tandem.transport.codec"):
        owner, where = found[name]
        assert owner == "tandem" and Path(where).is_relative_to(site / "tandem"), (name, where)
    assert Path(found["tandem.edge_agent.agent"][1]) == site / "tandem" / "edge_agent" / "agent.py"


def test_user_packages_beside_the_dev_install_break_nothing(user_dir: Path) -> None:
    """The venv's own install (editable in ``make``'s venv), run from a folder outside the repository."""
    found = _probe(user_dir, None)
    assert found["models"][0] == "user" and found["transport"][0] == "user"
    agent = Path(found["tandem.edge_agent.agent"][1])
    assert agent.parts[-2:] == ("edge_agent", "agent.py") and not agent.is_relative_to(user_dir)
    assert Path(found["tandem.models.registry"][1]).parts[-2:] == ("models", "registry.py")


def test_the_command_runs_beside_user_packages(user_dir: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    result = subprocess.run(
        [sys.executable, "-m", "tandem.cli", "--help"], cwd=user_dir, env=env, capture_output=True, text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert all(command in result.stdout for command in ("edge", "hub", "check-config")), result.stdout
