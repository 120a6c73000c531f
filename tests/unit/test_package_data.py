"""A built wheel carries the device specs, and a plain (non-editable) install finds them."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from tandem.partitioner.devices import DEVICES_DIR, known_devices
from tests.layout import build_wheel

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A wheel built (no deps, no isolation) from a copy of the package sources."""
    return build_wheel(tmp_path_factory.mktemp("src"), tmp_path_factory.mktemp("wheel"))


def test_the_specs_live_in_the_package() -> None:
    assert DEVICES_DIR == ROOT / "partitioner" / "device_specs"
    assert "orin_nano_8gb" in known_devices()


def test_the_wheel_holds_every_device_spec(wheel: Path) -> None:
    names = set(zipfile.ZipFile(wheel).namelist())
    shipped = {f"tandem/partitioner/device_specs/{path.name}" for path in DEVICES_DIR.glob("*.yaml")}
    assert shipped, "no device specs found in the source tree"
    assert shipped <= names, f"missing from {wheel.name}: {sorted(shipped - names)}"


def test_the_wheel_holds_the_imagenet_class_names(wheel: Path) -> None:
    """tandem.models.efficientnet_lite reads them at run time to name what the model saw."""
    assert "tandem/models/imagenet_classes.txt" in zipfile.ZipFile(wheel).namelist()


def test_an_unpacked_wheel_loads_the_default_edge_spec(wheel: Path, tmp_path: Path) -> None:
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    code = "from tandem.partitioner.devices import DEVICES_DIR, load_device_spec; print(DEVICES_DIR); "
    code += "print(load_device_spec('orin_nano_8gb').title)"
    env = {**os.environ, "PYTHONPATH": str(site)}
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    where, title = result.stdout.splitlines()
    assert Path(where).is_relative_to(site)
    assert "Orin Nano" in title
