"""Shipped configs listen on loopback only, and anything beyond loopback without CURVE or TLS is named at start."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from tandem.cloud_hub.config import HubConfig
from tandem.config import load_config
from tandem.edge_agent.config import EdgeConfig
from tandem.transport.config import CurveConfig, MqttConfig, TlsConfig, ZmqConfig, exposure_warning

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


def test_the_shipped_hub_and_edge_configs_expose_nothing_beyond_loopback() -> None:
    hub = load_config(CONFIGS / "hub.yaml", HubConfig)
    assert [exposure_warning(c, listens=True) for c in hub.channels] == [None] * len(hub.channels)
    assert hub.metrics.host.startswith("127.")
    edge = load_config(CONFIGS / "edge.yaml", EdgeConfig)
    assert exposure_warning(edge.channel, listens=False) is None


@pytest.mark.parametrize(
    ("channel", "listens", "expected"),
    [
        (ZmqConfig(address="tcp://0.0.0.0:5555"), True, "ZeroMQ channel tcp://0.0.0.0:5555 listens beyond loopback "
                                                         "without CURVE: anyone who reaches it"),
        (ZmqConfig(address="tcp://hub.example:5555"), False, "ZeroMQ channel to tcp://hub.example:5555 without CURVE"),
        (MqttConfig(host="broker.example"), False, "MQTT to broker.example:1883 without TLS"),
        (ZmqConfig(address="tcp://127.0.0.1:5555"), True, None),
        (ZmqConfig(address="tcp://localhost:5555"), False, None),
        (ZmqConfig(address="ipc:///run/tandem.sock"), True, None),
        (ZmqConfig(address="tcp://0.0.0.0:5555", curve=CurveConfig(secret_key_file=Path("k"))), True, None),
        (MqttConfig(host="broker.example", tls=TlsConfig(ca_file=Path("ca.pem"))), False, None),
        (MqttConfig(host="127.0.0.1"), False, None),
    ],
)
def test_exposure_is_named_with_the_key_that_closes_it(channel: object, listens: bool, expected: str | None) -> None:
    warning = exposure_warning(channel, listens=listens)  # type: ignore[arg-type]
    if expected is None:
        assert warning is None
    else:
        assert warning is not None and warning.startswith(expected), warning
        assert ("set curve" in warning) or ("set tls" in warning)


def test_a_hub_bound_beyond_loopback_without_curve_warns_at_start(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from tandem.cloud_hub.server import Hub

    config = HubConfig(plans=[tmp_path], channels=[ZmqConfig(address="tcp://0.0.0.0:0")], metrics={"port": None})
    with caplog.at_level(logging.WARNING, "tandem.hub"), Hub(config, []):
        pass
    assert "listens beyond loopback without CURVE" in caplog.text
