"""The README's "Use it from Python" block, run as it stands: a hub and an edge with sync, built in one process."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tandem.cloud_hub.store import SqliteStore
from tests.fixtures.broker import Mosquitto, free_port
from tests.integration.sync_support import wait_until

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.broker


def readme_example() -> str:
    """The Python block after the ``facade-example`` marker in README.md."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    found = re.search(r"<!-- facade-example -->\n```python\n(.*?)```", text, re.S)
    assert found, "README.md has no facade example"
    return found.group(1)


@pytest.fixture(scope="module")
def digits_plan(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("plan") / "digits"
    command = [sys.executable, "-m", "tandem.cli", "partition", "digits_cnn", "--out", str(out), "--no-progress"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return out


def test_the_readme_builds_a_hub_and_an_edge_with_sync_from_python(
    digits_plan: Path, mosquitto: Mosquitto, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tandem.models.digits import test_set

    code = readme_example().replace("1883", str(mosquitto.port)).replace("5555", str(free_port()))
    code = code.replace(
        "        print(result", "        wait_until(stored, 20, 'the record stored by the hub')\n        print(result"
    )
    monkeypatch.chdir(tmp_path)
    images, _ = test_set()

    def stored() -> bool:
        store = SqliteStore(tmp_path / "hub-store", synchronous="normal")
        try:
            return store.count(kind="record") >= 1
        finally:
            store.close()

    namespace = {"plan_dir": str(digits_plan), "image": images[:1], "wait_until": wait_until, "stored": stored}
    exec(compile(code, "README.md (facade example)", "exec"), namespace)

    result = namespace["result"]
    # The split is the agent's choice for this tiny model on loopback; the answer is never a degraded one.
    assert result.source in ("hub", "edge") and not result.degraded, (result.source, result.reason)
    assert "hub" in namespace and namespace["hub"].addresses[0].startswith("tcp://127.0.0.1:")
    full = __import__("onnxruntime").InferenceSession(str(digits_plan / "model.onnx"))
    (expected,) = full.run(None, {"input": images[:1]})
    np.testing.assert_allclose(result.outputs["logits"], expected, rtol=1e-2, atol=1e-2)
    assert (tmp_path / "outbox.sqlite").exists()  # the edge's record went through its outbox, over MQTT, to the store
