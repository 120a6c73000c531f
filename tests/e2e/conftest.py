"""Shared e2e fixtures: a reference model partitioned once per session."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import pytest

TANDEM = [sys.executable, "-m", "tandem.cli"]


@pytest.fixture(scope="session")
def mobilenet_plan(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """MobileNetV2 partitioned once for the whole session (about 25 s)."""
    out = tmp_path_factory.mktemp("plan") / "mobilenet_v2"
    result = subprocess.run(
        [*TANDEM, "partition", "mobilenet_v2", "--out", str(out), "--no-progress"],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    return out


def free_port() -> int:
    """A TCP port nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
