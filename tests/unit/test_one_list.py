"""setup.cfg's package_dir is the one list of the package's folders; the Dockerfiles copy exactly those."""

from __future__ import annotations

import re

import pytest

from tests.layout import ROOT, source_folders


@pytest.mark.parametrize("dockerfile", ["Dockerfile.edge", "Dockerfile.cloud"])
def test_each_dockerfile_copies_every_folder_the_package_maps(dockerfile: str) -> None:
    copied = set(re.findall(r"^COPY (\S+) \1$", (ROOT / dockerfile).read_text(), re.M))
    assert copied == set(source_folders()), f"{dockerfile} copies {sorted(copied)}; setup.cfg maps {source_folders()}"


def test_every_folder_with_python_code_is_mapped() -> None:
    """A new top-level package folder must be added to package_dir, or the wheel would leave it out."""
    folders = {p.parent.name for p in ROOT.glob("*/__init__.py")} - {"tests", "benchmarks"}
    assert folders == set(source_folders())
