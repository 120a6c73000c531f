"""Open the channel a config names: the one place that maps ``type`` to a class."""

from __future__ import annotations

from tandem.transport.channel import Channel
from tandem.transport.config import ChannelConfig, InProcConfig, MqttConfig, ZmqConfig
from tandem.transport.envelope import Limits

__all__ = ["open_client", "open_server"]


def open_server(config: ChannelConfig, *, limits: Limits = Limits()) -> Channel:
    """The hub's end of the configured channel."""
    if isinstance(config, ZmqConfig):
        from tandem.transport.zmq_channel import ZmqServer

        return ZmqServer.from_config(config, limits=limits)
    if isinstance(config, MqttConfig):
        from tandem.transport.mqtt_channel import MqttServer

        return MqttServer.from_config(config, limits=limits)
    from tandem.transport.inproc import InProcServer

    return InProcServer(limits=limits)


def open_client(
    config: ChannelConfig,
    *,
    device_id: str,
    limits: Limits = Limits(),
    server: Channel | None = None,
    wait: bool = True,
) -> Channel:
    """An edge's end of the configured channel.

    A ZeroMQ server bound to a wildcard port (``tcp://host:*``) is reached at the
    address it reports; an in-process client needs the ``server`` it attaches to.
    With ``wait=False`` the client does not wait for the hub (ZeroMQ) or the
    broker (MQTT) to be up: the edge agent starts, and serves locally, while
    they are down, and connects once they answer.
    """
    if isinstance(config, ZmqConfig):
        from tandem.transport.zmq_channel import ZmqClient

        address = getattr(server, "address", None) or config.address
        return ZmqClient.from_config(
            config.model_copy(update={"address": address}),
            device_id=device_id,
            limits=limits,
            connect_timeout_s=10.0 if wait else None,
        )
    if isinstance(config, MqttConfig):
        from tandem.transport.mqtt_channel import MqttClient

        return MqttClient.from_config(config, device_id=device_id, limits=limits, wait_for_broker=wait)
    if isinstance(config, InProcConfig):
        from tandem.transport.inproc import InProcServer

        if not isinstance(server, InProcServer):
            raise ValueError("an in-process client needs the InProcServer it attaches to (server=...)")
        return server.connect(device_id)
    raise TypeError(f"unknown channel config {type(config).__name__}")
