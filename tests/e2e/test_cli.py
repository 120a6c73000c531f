"""The `tandem` command as users run it: a real subprocess of the installed console script."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import tandem

REPO = Path(__file__).resolve().parents[2]
TANDEM = [sys.executable, "-m", "tandem.cli"]


def tandem_run(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*TANDEM, *args], capture_output=True, text=True, timeout=timeout, cwd=REPO)


def test_version() -> None:
    result = tandem_run("--version")
    assert result.returncode == 0
    assert result.stdout.strip() == f"tandem {tandem.__version__}"


def test_help_lists_only_built_commands() -> None:
    result = tandem_run("--help")
    assert result.returncode == 0
    for command in ("check-config", "keys", "loopback", "build-engine"):
        assert command in result.stdout


def test_check_config_accepts_the_shipped_example() -> None:
    result = tandem_run("check-config", "configs/loopback.yaml")
    assert result.returncode == 0, result.stderr
    assert "configs/loopback.yaml: valid loopback config" in result.stdout


def test_check_config_names_file_key_value_and_fix(tmp_path: Path) -> None:
    bad = tmp_path / "loopback.yaml"
    bad.write_text("link:\n  bandwith_mbps: 5\ncodecs: [fp16+gzip]\nlayer: layer4\n")
    result = tandem_run("check-config", str(bad))
    assert result.returncode == 2
    assert f"{bad}: link.bandwith_mbps: unknown key; did you mean 'bandwidth_mbps'?" in result.stderr
    assert f"{bad}: codecs: value ['fp16+gzip'] is not valid: unknown compression 'gzip'" in result.stderr
    assert f"{bad}: layer: value 'layer4' is not valid: input should be 'layer1', 'layer2' or 'layer3'" in result.stderr


def test_check_config_unknown_kind(tmp_path: Path) -> None:
    path = tmp_path / "mystery.yaml"
    path.write_text("a: 1\n")
    result = tandem_run("check-config", str(path))
    assert result.returncode == 2
    assert "unknown config kind 'mystery'; pass --kind with one of:" in result.stderr


def test_keys_writes_a_curve_pair(tmp_path: Path) -> None:
    result = tandem_run("keys", "hub", "--out", str(tmp_path))
    assert result.returncode == 0, result.stderr
    public, secret = tmp_path / "hub.key", tmp_path / "hub.key_secret"
    assert public.exists() and secret.exists()
    assert "secret-key = " in secret.read_text() and "secret-key" not in public.read_text()
    again = tandem_run("keys", "hub", "--out", str(tmp_path))
    assert again.returncode != 0


def test_loopback_sends_real_activations_through_an_emulated_link(tmp_path: Path) -> None:
    config = tmp_path / "loopback.yaml"
    config.write_text(
        "channel: {type: zmq, address: 'tcp://127.0.0.1:*'}\n"
        "link: {bandwidth_mbps: 50, rtt_ms: 10}\n"
        "codecs: [raw, int8@1+zstd]\nlayer: layer3\nmessages_per_codec: 2\n"
    )
    result = tandem_run("loopback", "--config", str(config), timeout=180)
    assert result.returncode == 0, result.stderr
    rows = {line.split()[0]: line.split() for line in result.stdout.splitlines() if line.startswith(("raw ", "int8@1"))}
    assert float(rows["raw"][2]) == 1.0 and float(rows["raw"][5]) == 0.0
    assert float(rows["int8@1+zstd"][2]) > 3.0  # compresses real post-ReLU features
    # The emulated link shows: raw at 50 Mbit/s (200 kB = 32 ms + 10 ms RTT) is not faster than that.
    assert float(rows["raw"][4]) >= 0.9 * float(rows["raw"][3])


def test_startup_error_is_one_line_without_a_traceback(tmp_path: Path) -> None:
    hub = tmp_path / "hub.yaml"
    hub.write_text(f"plans: [{tmp_path / 'nowhere'}]\nmetrics: {{port: null}}\n")
    result = tandem_run("hub", "--config", str(hub))
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1] == f"tandem hub: error: {tmp_path / 'nowhere'}: plan folder not found"


def test_check_config_rejects_what_would_fail_at_start(tmp_path: Path) -> None:
    edge = tmp_path / "edge.yaml"
    edge.write_text("plan: p\ndevice_id: cam/01\nexecutor: foo\nemulation: {schedule: [{at_s: 5, rtt_ms: 80}]}\n")
    result = tandem_run("check-config", str(edge))
    assert result.returncode == 2
    assert f"{edge}: device_id: value 'cam/01' is not valid: device id 'cam/01' cannot be used in an MQTT topic" in (
        result.stderr
    )
    assert f"{edge}: executor: value 'foo' is not valid: unknown executor 'foo'; known: auto, onnxruntime" in (
        result.stderr
    )
    assert f"{edge}: emulation.schedule: value [{{'at_s': 5, 'rtt_ms': 80}}] is not valid: a schedule changes" in (
        result.stderr
    )
