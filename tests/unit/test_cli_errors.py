"""``tandem`` ends on the project's own errors with one line, not a traceback; bugs keep theirs."""

from __future__ import annotations

import argparse
import importlib.util
import re
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

import tandem.cli
from tandem.cli import main
from tandem.cloud_hub.metrics import HubMetrics, MetricsError
from tandem.contracts.plan import ArtifactError, PlanError
from tandem.edge_agent.outbox import OutboxError
from tandem.executors import ExecutorError
from tandem.transport.errors import ConnectError

REPO = Path(__file__).resolve().parents[2]


def _with_command(monkeypatch: pytest.MonkeyPatch, exc: BaseException) -> None:
    """Make ``tandem boom`` a command that raises ``exc``."""

    def build() -> tuple[argparse.ArgumentParser, dict[str, str]]:
        parser = argparse.ArgumentParser(prog="tandem")
        parser.add_argument("-v", "--verbose", action="store_true")
        sub = parser.add_subparsers(dest="command")

        def boom(args: argparse.Namespace) -> int:
            raise exc

        sub.add_parser("boom").set_defaults(func=boom)
        return parser, {}

    monkeypatch.setattr(tandem.cli, "build_parser", build)


@pytest.mark.parametrize(
    "exc",
    [
        ExecutorError("unknown executor 'foo'; known: auto, onnxruntime, tensorrt"),
        ConnectError("cannot bind ZeroMQ server to tcp://999.1.1.1:5555: No such device"),
        PlanError("/nowhere: plan folder not found"),
        ArtifactError("plan/model.onnx: sha256 differs from the plan's"),
        OutboxError("outbox.sqlite: cannot be opened"),
        MetricsError("metrics.port 9464: cannot listen on 127.0.0.1:9464: Address already in use"),
    ],
    ids=lambda exc: type(exc).__name__,
)
def test_own_errors_end_in_one_line_and_exit_1(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], exc: Exception
) -> None:
    _with_command(monkeypatch, exc)
    assert main(["boom"]) == 1
    err = capsys.readouterr().err
    assert err == f"tandem boom: error: {exc}\n"


def test_verbose_keeps_the_traceback(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    _with_command(monkeypatch, PlanError("/nowhere: plan folder not found"))
    assert main(["-v", "boom"]) == 1
    err = capsys.readouterr().err
    assert "Traceback (most recent call last)" in err
    assert err.endswith("tandem boom: error: /nowhere: plan folder not found\n")


def test_unexpected_errors_are_not_hidden(monkeypatch: pytest.MonkeyPatch) -> None:
    _with_command(monkeypatch, RuntimeError("a bug"))
    with pytest.raises(RuntimeError, match="a bug"):
        main(["boom"])
    _with_command(monkeypatch, ValueError("also a bug"))
    with pytest.raises(ValueError, match="also a bug"):
        main(["boom"])


def test_every_error_family_has_the_one_root() -> None:
    """A library user catches TandemError; the CLI prints any of them as one line."""
    import importlib

    import tandem.errors as tandem_errors
    from tandem.errors import TandemError

    families = {
        "tandem.config": "ConfigError",
        "tandem.transport.errors": "TransportError",
        "tandem.executors.base": "ExecutorError",
        "tandem.partitioner.errors": "PartitionError",
        "tandem.edge_agent.outbox": "OutboxError",
        "tandem.contracts.plan": "PlanError",
        "tandem.contracts.manifest": "ArtifactRejected",
        "tandem.cloud_hub.store": "StoreError",
        "tandem.cloud_hub.metrics": "MetricsError",
        "tandem.commands.demo": "DemoError",
    }
    for module, name in families.items():
        family = getattr(importlib.import_module(module), name)
        assert issubclass(family, TandemError), f"{module}.{name}"
        assert re.search(rf"[├└]── {name} ", tandem_errors.__doc__ or ""), f"{name} is not drawn in the tree"


@pytest.fixture
def busy_port() -> Iterator[int]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield int(sock.getsockname()[1])


def test_metrics_port_in_use_names_the_key_and_the_port(busy_port: int) -> None:
    with pytest.raises(MetricsError) as info:
        HubMetrics().serve("127.0.0.1", busy_port)
    assert str(info.value) == (
        f"metrics.port {busy_port}: cannot listen on 127.0.0.1:{busy_port}: Address already in use; "
        "choose another metrics.port (0 picks a free one) or set it to null to turn metrics off"
    )


def test_keys_twice_needs_overwrite_and_name_must_be_plain(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["keys", "hub", "--out", str(tmp_path)]) == 0
    secret = (tmp_path / "hub.key_secret").read_text()
    capsys.readouterr()
    assert main(["keys", "hub", "--out", str(tmp_path)]) == 1
    assert capsys.readouterr().err == (
        f"tandem keys: error: {tmp_path / 'hub.key'} already exists; pass --overwrite to replace the pair, "
        "or choose another NAME\n"
    )
    assert main(["keys", "hub", "--out", str(tmp_path), "--overwrite"]) == 0
    assert (tmp_path / "hub.key_secret").read_text() != secret
    capsys.readouterr()
    assert main(["keys", "../evil", "--out", str(tmp_path)]) == 2
    assert capsys.readouterr().err == (
        "tandem keys: error: NAME '../evil' must be a plain file name such as hub or cam-01 "
        "(use --out for the folder)\n"
    )
    assert not (tmp_path.parent / "evil.key").exists()
    (tmp_path / "file").write_text("")
    assert main(["keys", "hub", "--out", str(tmp_path / "file")]) == 1
    assert "--out " + str(tmp_path / "file") + " is a file; expected a folder" in capsys.readouterr().err


def test_fleet_with_a_hub_config_without_sync_says_what_it_needs(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    hub = tmp_path / "hub.yaml"
    hub.write_text("plans: [plan]\n")
    assert main(["fleet", "--config", str(hub)]) == 2
    assert capsys.readouterr().err == (
        f"tandem fleet: config error:\n{hub}: sync: required key is missing: tandem fleet needs a hub config with a "
        "`sync:` section (it reads sync.store.path), or pass --store DIR\n"
    )


@pytest.mark.parametrize("command", [c for commands, _, _ in tandem.cli.COMMAND_MODULES.values() for c in commands])
def test_every_command_has_a_description(command: str) -> None:
    parser, _missing = tandem.cli.build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    assert sub.choices[command].description


def test_check_config_kind_lists_its_choices(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["check-config", "--help"])
    assert "--kind {demo,edge,hub,loopback,partition}" in capsys.readouterr().out


def test_a_command_whose_extra_is_not_installed_is_left_out_and_says_what_to_install(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """An edge box installs tandem-inference[edge]: no torch, onnx or matplotlib there."""
    find_spec = importlib.util.find_spec
    absent = {"torch", "torchvision", "onnx", "networkx", "matplotlib", "sklearn"}
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name in absent else find_spec(name, *a))
    parser, missing = tandem.cli.build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    assert {"edge", "keys", "check-config", "fleet", "build-engine"} <= set(sub.choices)
    assert set(missing) == {"demo", "partition", "profile", "loopback", "hub"}  # the hub rewrites models with onnx
    assert missing["hub"] == "needs onnx: pip install 'tandem-inference[cloud]'"
    assert missing["partition"] == "needs onnx, networkx, matplotlib: pip install 'tandem-inference[partition]'"
    assert main(["partition", "model.onnx", "--out", "plan"]) == 2
    assert capsys.readouterr().err == (
        "tandem partition: not available in this install; it needs onnx, networkx, matplotlib: "
        "pip install 'tandem-inference[partition]'\n"
    )
    with pytest.raises(SystemExit):
        main(["--help"])
    assert "not available in this install: demo (needs" in " ".join(capsys.readouterr().out.split())


def test_a_plan_version_listed_twice_in_a_hub_config_is_a_config_error(tmp_path: Path) -> None:
    from types import SimpleNamespace

    from tandem.cloud_hub.config import HubConfig
    from tandem.cloud_hub.runtime import load_plans as _load_plans
    from tandem.config import ConfigError

    holds = {"a": ("resnet", 1), "b": ("resnet", 2), "c": ("resnet", 1)}  # folder c is a copy of a

    def load_tails(plan_dir: Path, executor: object) -> list[SimpleNamespace]:
        plan_id, version = holds[plan_dir.name]
        return [SimpleNamespace(plan_id=plan_id, plan_version=version, split_id=s) for s in ("cut-1", "cut-2")]

    source = tmp_path / "hub.yaml"
    assert len(_load_plans(source, HubConfig(plans=[tmp_path / "a", tmp_path / "b"]), load_tails)) == 4
    with pytest.raises(ConfigError) as caught:
        _load_plans(source, HubConfig(plans=[tmp_path / n for n in "abc"]), load_tails)
    assert str(caught.value) == f"{source}: plans.2: {tmp_path / 'c'} holds plan resnet v1, already loaded from plans.0"


def test_a_reader_that_stops_early_gets_no_traceback() -> None:
    """`tandem check-config configs/hub.yaml | head -1`, with the reader gone before anything is written."""
    import subprocess
    import sys

    process = subprocess.Popen(
        [sys.executable, "-m", "tandem.cli", "check-config", str(REPO / "configs" / "hub.yaml")],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd=REPO,
    )
    assert process.stdout is not None
    process.stdout.close()  # the child is still importing: its first write meets a closed pipe
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 0, stderr.decode()
    assert b"Traceback" not in stderr and b"BrokenPipeError" not in stderr


def test_a_published_plan_the_hub_does_not_serve_is_a_config_error(tmp_path: Path) -> None:
    from types import SimpleNamespace

    from tandem.cloud_hub.config import HubConfig
    from tandem.cloud_hub.runtime import check_published as _check_published
    from tandem.config import ConfigError

    def plan(name: str, version: int, *, cloud: bool = True) -> Path:
        folder = tmp_path / name
        folder.mkdir()
        split = "{id: cut-1, cloud_model: splits/cut-1/cloud.onnx}" if cloud else "{id: edge-only, cloud_model: null}"
        text = f"plan_id: mnv2\nversion: {version}\nmodel: {{name: mobilenet_v2}}\nsplits: [{split}]\n"
        (folder / "plan.yaml").write_text(text)
        return folder

    v1, v4, local = plan("v1", 1), plan("v4", 4), plan("local", 9, cloud=False)
    tails = [SimpleNamespace(plan_id="mnv2", plan_version=1, split_id="cut-1")]

    def hub(publish: list[dict[str, object]]) -> HubConfig:
        return HubConfig.model_validate({"plans": [str(v1)], "sync": {"mqtt": {}, "publish": publish}})

    _check_published(tmp_path / "hub.yaml", hub([{"plan": str(v1), "device": "cam-1"}]), tails)
    _check_published(tmp_path / "hub.yaml", hub([{"plan": str(local), "group": "line-3"}]), tails)  # edge-only
    with pytest.raises(ConfigError) as caught:
        _check_published(
            tmp_path / "hub.yaml",
            hub([{"plan": str(v1), "device": "cam-1"}, {"plan": str(v4), "device": "cam-1"}]),
            tails,
        )
    assert str(caught.value) == (
        f"{tmp_path / 'hub.yaml'}: sync.publish.1: plan mnv2 v4 ({v4}) is not among the plans this hub serves "
        "(mnv2 v1): edges that install it would get unknown_plan_version on every request; add its folder to plans "
        "(or publish a version listed there)"
    )
    with pytest.raises(ConfigError, match=r"sync\.publish\.0: plan mnv2 v7 "):
        _check_published(tmp_path / "hub.yaml", hub([{"plan": str(v1), "version": 7, "device": "cam-1"}]), tails)
