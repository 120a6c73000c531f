"""A built wheel carries the device specs, and a plain (non-editable) install finds them."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from partitioner.devices import DEVICES_DIR, known_devices

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("tandem", "transport", "partitioner", "edge_agent", "cloud_hub", "models")


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A wheel built (no deps, no isolation) from a copy of the package sources."""
    src = tmp_path_factory.mktemp("src")
    for name in ("setup.cfg", "pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    for package in PACKAGES:
        shutil.copytree(ROOT / package, src / package, ignore=shutil.ignore_patterns("__pycache__"))
    out = tmp_path_factory.mktemp("wheel")
    command = [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation", str(src)]
    subprocess.run([*command, "-w", str(out)], check=True, cwd=src, capture_output=True, timeout=120)
    return next(out.glob("*.whl"))


def test_the_specs_live_in_the_package() -> None:
    assert DEVICES_DIR == ROOT / "partitioner" / "device_specs"
    assert "orin_nano_8gb" in known_devices()


def test_the_wheel_holds_every_device_spec(wheel: Path) -> None:
    names = set(zipfile.ZipFile(wheel).namelist())
    shipped = {f"partitioner/device_specs/{path.name}" for path in DEVICES_DIR.glob("*.yaml")}
    assert shipped, "no device specs found in the source tree"
    assert shipped <= names, f"missing from {wheel.name}: {sorted(shipped - names)}"


def test_an_unpacked_wheel_loads_the_default_edge_spec(wheel: Path, tmp_path: Path) -> None:
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    code = "from partitioner.devices import DEVICES_DIR, load_device_spec; print(DEVICES_DIR); "
    code += "print(load_device_spec('orin_nano_8gb').title)"
    env = {**os.environ, "PYTHONPATH": str(site)}
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    where, title = result.stdout.splitlines()
    assert Path(where).is_relative_to(site)
    assert "Orin Nano" in title
