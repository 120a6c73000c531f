"""Shared fixtures: real services on free ports, stopped by PID."""

import shutil
import tempfile

import pytest

pytest_plugins = ["tests.fixtures.broker", "tests.fixtures.netns"]


def pytest_report_header(config: pytest.Config) -> str:
    """Free disk where the tests write: the reference-model tests need about 1.5 GB at their peak."""
    where = tempfile.gettempdir()
    return f"free disk under {where}: {shutil.disk_usage(where).free / 1e9:.1f} GB"
