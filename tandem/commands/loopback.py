"""``tandem loopback``: real activations through a real channel and an emulated link.

A server thread answers every activation with a small result, as the hub will;
the client sends ResNet-18 feature maps encoded with each configured codec over
the configured channel, wrapped in the link emulator (for example a 5 Mbit/s,
40 ms LTE-like uplink), and prints what each codec costs on that link: bytes on
the wire, round trip, and the error it introduces.
"""

from __future__ import annotations

import argparse
import statistics
import threading
import time
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import Field, field_validator

from tandem.config import StrictModel, load_config
from tandem.transport.channel import Channel
from tandem.transport.codec import CodecSpec
from tandem.transport.config import ChannelConfig, LinkConfig, ZmqConfig
from tandem.transport.envelope import Envelope, Kind
from tandem.transport.errors import ChannelTimeout

__all__ = ["LoopbackConfig", "register", "run"]


class LoopbackConfig(StrictModel):
    """``configs/loopback.yaml``: which channel, which link, which codecs."""

    channel: ChannelConfig = Field(default_factory=lambda: ZmqConfig(address="tcp://127.0.0.1:*"))
    link: LinkConfig = Field(default_factory=lambda: LinkConfig(bandwidth_mbps=5.0, rtt_ms=40.0))
    codecs: list[str] = Field(default_factory=lambda: ["raw", "fp16+lz4", "int8@1+zstd"])
    layer: Literal["layer1", "layer2", "layer3"] = Field(
        "layer2", description="which ResNet-18 feature map to send: layer1, layer2 or layer3"
    )
    messages_per_codec: int = Field(5, gt=0)
    timeout_s: float = Field(30.0, gt=0)

    @field_validator("codecs")
    @classmethod
    def _known_codecs(cls, value: list[str]) -> list[str]:
        for text in value:
            if CodecSpec.parse(text).static:
                raise ValueError(f"{text!r}: loopback has no calibration set for static scales; use int8")
        return value


def register(subparsers: Any) -> None:
    """Add the ``loopback`` command."""
    parser = subparsers.add_parser(
        "loopback",
        help="send real activations through a channel and an emulated link",
        description="Send a real ResNet-18 feature map through one channel behind an emulated link, once per "
        "codec, and print per codec: bytes on the wire, ratio, expected and measured round trip, max error.",
    )
    parser.add_argument("--config", type=Path, help="loopback.yaml (default: built-in 5 Mbit/s, 40 ms over ZeroMQ)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Start the echo server and the client, send, print the table."""
    config = load_config(args.config, LoopbackConfig) if args.config else LoopbackConfig()
    features = _activation(config.layer)
    print(f"activation: ResNet-18 {config.layer} post-ReLU, shape {list(features.shape)}, {features.nbytes} bytes")
    server, client = _open(config)
    stop = threading.Event()
    echo = threading.Thread(target=_serve, args=(server, stop), name="loopback-server", daemon=True)
    echo.start()
    try:
        rows = [_measure(client, features, codec, config) for codec in config.codecs]
    finally:
        stop.set()
        echo.join(timeout=5)
        client.close()
        server.close()
    _print_table(rows, config.link)
    return 0


def _activation(layer: str) -> np.ndarray:
    from tandem.models.activations import conv_activations

    return conv_activations()[layer]


def _open(config: LoopbackConfig) -> tuple[Channel, Channel]:
    from tandem.transport.factory import open_client, open_server
    from tandem.transport.link import EmulatedLink

    server = open_server(config.channel)
    print(f"server: {type(server).__name__} on {getattr(server, 'address', config.channel.type)}")
    client = open_client(config.channel, device_id="loopback-edge", server=server)
    link = config.link
    print(
        f"link: uplink {link.bandwidth_mbps or 'unlimited'} Mbit/s, downlink {link.downlink_mbps or 'unlimited'}"
        f" Mbit/s, RTT {link.rtt_ms} ms (emulated)"
    )
    return server, EmulatedLink.from_config(client, link)


def _serve(server: Channel, stop: threading.Event) -> None:
    while not stop.is_set():
        try:
            request = server.recv(timeout=0.1)
        except ChannelTimeout:
            continue
        arrays = request.arrays()
        summary = {name: a.reshape(a.shape[0], a.shape[1], -1).mean(axis=-1) for name, a in arrays.items()}
        server.send(Envelope.with_arrays(Kind.RESULT, summary, **_ids(request)), to=request.sender)


def _ids(request: Envelope) -> dict[str, Any]:
    return {"request_id": request.request_id, "device_id": request.device_id, "plan_id": request.plan_id}


def _measure(client: Channel, features: np.ndarray, codec: str, config: LoopbackConfig) -> dict[str, Any]:
    spec = CodecSpec.parse(codec)
    expected = features.reshape(1, features.shape[1], -1).mean(axis=-1)
    times, error, wire = [], 0.0, 0
    for _ in range(config.messages_per_codec):
        request = Envelope.with_arrays(Kind.ACTIVATION, {"features": features}, spec, device_id="loopback-edge")
        wire = request.wire_bytes
        started = time.perf_counter()
        client.send(request)
        reply = client.recv(timeout=config.timeout_s)
        times.append(time.perf_counter() - started)
        if reply.request_id != request.request_id:
            raise RuntimeError(f"reply {reply.request_id} does not answer request {request.request_id}")
        error = max(error, float(np.abs(reply.arrays()["features"] - expected).max()))
    print(f"  {codec:12s} {wire:9d} B  round trip {1000 * statistics.median(times):8.1f} ms")
    return {"codec": codec, "wire_bytes": wire, "ratio": features.nbytes / wire, "rtt_s": times, "error": error}


def _print_table(rows: list[dict[str, Any]], link: LinkConfig) -> None:
    print()
    print(f"{'codec':12s} {'wire KB':>9s} {'ratio':>6s} {'link ms':>8s} {'measured ms':>12s} {'max |err|':>10s}")
    for row in rows:
        on_link = row["wire_bytes"] * 8 / (link.bandwidth_mbps * 1e3) if link.bandwidth_mbps else 0.0
        print(
            f"{row['codec']:12s} {row['wire_bytes'] / 1e3:9.1f} {row['ratio']:6.2f} {on_link + link.rtt_ms:8.1f}"
            f" {1000 * statistics.median(row['rtt_s']):12.1f} {row['error']:10.2e}"
        )
    print("link ms = bytes / uplink bandwidth + RTT (what the emulator should impose); max |err| on the result.")
