"""ZeroMQ channels: a ROUTER server (the hub) and DEALER clients (edge boxes).

Wire format: a client sends ``encode(envelope)`` as one multipart message; the
ROUTER prepends the client's routing id, which the server reports as
``envelope.sender`` and routes replies by (``send(reply, to=sender)``).

Threading. ZeroMQ sockets are not thread-safe, but libzmq allows a socket to
move between threads when a full memory barrier separates the uses. So instead
of an I/O thread (two thread hops per message: a prototype measured 10-25 %
slower on a 1 MiB round trip), every socket call here is made under one
short-held lock, in the calling thread:

- ``send`` encodes outside the lock, then does a non-blocking
  ``send_multipart(copy=False)`` under it; libzmq's own I/O thread does the
  TCP writes. Errors are raised to the caller, synchronously.
- ``recv`` (one caller at a time) checks ``ZMQ_EVENTS`` under the lock and
  receives if a message is waiting; otherwise it releases the lock and sleeps in
  ``poll`` on the socket's notification fd plus a private wake-up socket.
  That fd is edge-triggered and any socket call may consume its edge, so a
  ``send`` made while a receiver sleeps asks ``ZMQ_EVENTS`` afterwards (which
  re-arms the fd) and pokes the wake-up socket when a message is waiting; the
  receiver re-checks ``ZMQ_EVENTS`` after every wake-up. ``close`` pokes it too.
- Decoding (:func:`~tandem.transport.envelope.decode` with the channel's limits)
  happens in ``recv``'s caller, outside the lock.

The wait uses ``select.poll``, so these channels run on Linux and macOS, not Windows.

Zero copy: tensor frames of 64 KiB or more are handed to libzmq without a
copy, so **do not modify an array after sending it**; received raw tensors are
views of the received frames.

Delivery rules:

- The client sets ``ZMQ_IMMEDIATE``: nothing is queued for a server that is not
  connected; ``send`` raises :class:`~tandem.transport.errors.ConnectError` instead
  (also when ``send_hwm`` messages are already queued). Heartbeats (1 s, 3 s
  timeout) notice a vanished server.
- The server sets ``ZMQ_ROUTER_MANDATORY``: ``send`` to a client that is not
  connected raises :class:`~tandem.transport.errors.ConnectError` (it is not dropped
  silently), as does a client whose send queue is full.
- A frame longer than ``max_message_bytes + max_header_bytes`` makes libzmq drop
  the connection (the peer reconnects); anything smaller is checked by
  ``decode``, which raises a :class:`~tandem.transport.errors.ProtocolError`.

CURVE (optional): key files come from :func:`generate_keypair` (``tandem keys``).
The server loads its secret key; with ``authorized_clients_dir`` a ZAP
authenticator admits only the public keys in that folder, without it any
client that knows the server's public key gets in.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import logging
import math
import operator
import os
import secrets
import select
import socket
import threading
import time
from abc import abstractmethod
from pathlib import Path
from typing import Any, cast

import zmq
import zmq.auth
from zmq.auth.thread import ThreadAuthenticator
from zmq.utils.monitor import recv_monitor_message

from tandem.transport.channel import Channel
from tandem.transport.config import CurveConfig, ZmqConfig
from tandem.transport.envelope import Buffer, Envelope, Limits, decode, encode
from tandem.transport.errors import ChannelClosed, ChannelError, ChannelTimeout, ConnectError, ProtocolError

__all__ = ["SERVER_SENDER", "ZmqClient", "ZmqServer", "generate_keypair"]

logger = logging.getLogger("tandem.transport.zmq")

SERVER_SENDER = "server"
"""The ``sender`` a client reports for everything it receives."""

# pyzmq's constants are enum.Flag members, whose | and & run in Python; the hot paths use ints.
_EVENTS = int(zmq.EVENTS)
_POLLIN = int(zmq.POLLIN)
_NOBLOCK = int(zmq.NOBLOCK)
_SNDMORE_NOBLOCK = int(zmq.SNDMORE | zmq.NOBLOCK)

_HEARTBEAT_IVL_MS = 1000
_HEARTBEAT_TIMEOUT_MS = 3000
_MAX_ROUTING_ID_BYTES = 200
_HANDSHAKE_FAILURES: dict[int, str] = {
    zmq.EVENT_HANDSHAKE_FAILED_AUTH: "the server rejected this client's CURVE key",
    zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL: "the security handshake failed (do both ends agree on CURVE and its keys?)",
    zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL: "the security handshake failed",
}


def generate_keypair(directory: str | Path, name: str, *, overwrite: bool = False) -> tuple[Path, Path]:
    """Write a CURVE key pair as ``<name>.key`` (public) and ``<name>.key_secret``; return both paths.

    The secret file is made readable by its owner only. Existing files are kept
    (``FileExistsError``) unless ``overwrite`` is true.
    """
    if not name or Path(name).name != name:
        raise ValueError(f"key name {name!r} must be a plain file name")
    folder = Path(directory)
    folder.mkdir(parents=True, exist_ok=True)
    public, secret = folder / f"{name}.key", folder / f"{name}.key_secret"
    if not overwrite:
        for path in (public, secret):
            if path.exists():
                raise FileExistsError(f"{path} already exists; pass overwrite=True to replace the key pair")
    public_file, secret_file = zmq.auth.create_certificates(folder, name)
    os.chmod(secret_file, 0o600)
    logger.info("wrote CURVE key pair %s (public) and %s (secret)", public_file, secret_file)
    return Path(public_file), Path(secret_file)


def _load_key_pair(path: Path, setting: str) -> tuple[bytes, bytes]:
    public, secret = _load_certificate(path, setting)
    if secret is None:
        raise ConnectError(f"{setting}: {path} holds no secret key (expected a .key_secret file)")
    return public, secret


def _load_certificate(path: Path, setting: str) -> tuple[bytes, bytes | None]:
    if not path.is_file():  # pyzmq says "Invalid certificate file" for a missing one
        raise ConnectError(f"{setting}: CURVE key file {path} not found (make one with `tandem keys`)")
    try:
        return zmq.auth.load_certificate(path)
    except (OSError, ValueError) as exc:
        raise ConnectError(f"{setting}: cannot load CURVE key file {path}: {exc}") from exc


class _ZmqChannel(Channel):
    """The socket, its lock, the receive wait, and close; subclasses add addressing."""

    def __init__(self, context: zmq.Context, sock: zmq.Socket, address: str, limits: Limits) -> None:
        self._ctx = context
        self._sock = sock
        self._address = address
        self._limits = limits
        self._sock_lock = threading.Lock()  # held for every call on _sock
        self._recv_lock = threading.Lock()  # one receiver sleeps at a time
        self._close_lock = threading.Lock()
        self._closed = False
        self._receiver_waiting = False
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._wake_fd = self._wake_r.fileno()
        self._poller = select.poll()  # not zmq.Poller: that would touch the socket outside the lock
        self._poller.register(cast(int, sock.getsockopt(zmq.FD)), select.POLLIN)
        self._poller.register(self._wake_fd, select.POLLIN)
        self._authenticator: ThreadAuthenticator | None = None

    @property
    def address(self) -> str:
        """The endpoint this channel is bound or connected to (a ``*`` port resolved)."""
        return self._address

    def recv(self, timeout: float | None = None) -> Envelope:
        """The next envelope, with ``sender`` set; ``ChannelTimeout`` after ``timeout`` s."""
        self._check_open()
        deadline = None if timeout is None else time.monotonic() + max(timeout, 0.0)
        if not self._recv_lock.acquire(timeout=-1 if deadline is None else max(timeout or 0.0, 0.0)):
            raise ChannelTimeout(f"nothing received in {timeout} s")
        try:
            frames = self._wait_for_message(deadline, timeout)
        finally:
            self._recv_lock.release()
        sender, body = self._split(frames)
        try:
            envelope = decode(body, self._limits)
        except ProtocolError as exc:
            exc.sender = sender
            raise
        envelope.sender = sender
        return envelope

    def close(self) -> None:
        """Close the socket (pending messages are dropped), the authenticator and the context; idempotent."""
        with self._close_lock:
            if self._closed:
                return
            self._closed = True
        self._wake()
        with self._recv_lock, self._sock_lock:
            self._sock.close(linger=0)
            if self._authenticator is not None:
                self._authenticator.stop()
            self._ctx.term()
            self._wake_r.close()
            self._wake_w.close()
        logger.info("%s %s closed", type(self).__name__, self._address)

    def _send_frames(self, frames: list[Buffer], to: str | None) -> None:
        # pyzmq's send_multipart combines its flags as Python enums, which costs
        # more than the send itself; plain ints and one loop avoid that.
        parts = [_as_zmq_frame(frame) for frame in frames]
        last = parts.pop()
        send = self._sock.send
        with self._sock_lock:
            self._check_open()
            try:
                for part in parts:
                    send(part, _SNDMORE_NOBLOCK, copy=False)
                send(last, _NOBLOCK, copy=False)
            except zmq.ZMQError as exc:
                raise self._send_error(exc, to) from exc
            finally:
                if self._receiver_waiting:
                    self._wake_if_readable()

    def waiting(self) -> bool:
        """Whether a message waits to be received now (the hub runs a request in its receive thread only if not)."""
        with self._sock_lock:
            self._check_open()
            try:
                readable = bool(cast(int, self._sock.getsockopt(_EVENTS)) & _POLLIN)
            except zmq.ZMQError:
                return True  # let the receiver find out what is wrong
            if readable and self._receiver_waiting:
                self._wake()  # asking may have consumed the notification fd's edge
            return readable

    def _wake_if_readable(self) -> None:
        """After a socket call made while the receiver sleeps: wake it if a message is waiting.

        That call may have consumed the notification fd's edge. Asking
        ``ZMQ_EVENTS`` re-arms the fd when nothing is waiting, so the receiver
        needs waking only when something is (called under the socket lock).
        """
        try:
            readable = cast(int, self._sock.getsockopt(_EVENTS)) & _POLLIN
        except zmq.ZMQError:
            readable = True  # let the receiver find out what is wrong
        if readable:
            self._wake()

    def _wait_for_message(self, deadline: float | None, timeout: float | None) -> list[zmq.Frame]:
        sock, lock, poll, wake_fd = self._sock, self._sock_lock, self._poller.poll, self._wake_fd
        while True:
            with lock:
                self._check_open()
                try:
                    if cast(int, sock.getsockopt(_EVENTS)) & _POLLIN:
                        self._receiver_waiting = False
                        # Frame.more instead of pyzmq's recv_multipart, which asks getsockopt(RCVMORE) per part
                        frames = [sock.recv(_NOBLOCK, copy=False)]
                        while frames[-1].more:
                            frames.append(sock.recv(_NOBLOCK, copy=False))
                        return frames
                except zmq.Again:
                    pass
                except zmq.ZMQError as exc:
                    raise ChannelError(f"receiving on {self._address} failed: {exc}") from exc
                self._receiver_waiting = True
            if deadline is None:
                ready = poll()
            else:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    self._receiver_waiting = False
                    raise ChannelTimeout(f"nothing received in {timeout} s")
                ready = poll(remaining * 1000)
            for fd, _ in ready:
                if fd == wake_fd:
                    self._drain_wake()

    def _wake(self) -> None:
        # A full buffer already holds a wake-up; a closed one means we are shutting down.
        with contextlib.suppress(OSError):
            self._wake_w.send(b"\0")

    def _drain_wake(self) -> None:
        with contextlib.suppress(OSError):
            while self._wake_r.recv(4096):
                pass

    def _check_open(self) -> None:
        if self._closed:
            raise ChannelClosed(f"{type(self).__name__} {self._address} is closed")

    @abstractmethod
    def _split(self, frames: list[zmq.Frame]) -> tuple[str, list[Buffer]]:
        """(sender, tensor frames) of a received multipart message."""

    @abstractmethod
    def _send_error(self, exc: zmq.ZMQError, to: str | None) -> ChannelError:
        """The Tandem error for a failed send to ``to``."""


class _RefusalsAsWarnings(logging.LoggerAdapter):  # not subscripted: Python 3.10 cannot
    """pyzmq's authenticator logs a refused CURVE client at DEBUG; a hub operator needs to see it.

    Each refused key is logged as a warning once a minute (a refused client
    retries every few hundred milliseconds); the rest stays at DEBUG.
    """

    _REPEAT_S = 60.0
    _MAX_KEYS = 1024

    def __init__(self, logger: logging.Logger) -> None:
        super().__init__(logger, {})
        self._warned: dict[str, float] = {}

    def debug(self, msg: object, *args: Any, **kwargs: Any) -> None:
        """Log a ``DENIED`` line as a warning, the rest as debug."""
        if not (args and args[0] == "DENIED") and not str(msg).startswith("DENIED"):
            super().debug(msg, *args, **kwargs)
            return
        line = str(msg) % args if args else str(msg)
        now = time.monotonic()
        if now - self._warned.get(line, -math.inf) < self._REPEAT_S:
            return
        if len(self._warned) >= self._MAX_KEYS:
            self._warned.clear()
        self._warned[line] = now
        self.warning("refused a client: %s (its public key is not in curve.authorized_clients_dir)", line)


def _as_zmq_frame(frame: Buffer) -> Buffer | zmq.Frame:
    """A received frame forwarded as is goes back as its ``zmq.Frame``.

    libzmq then shares the buffer by reference count. Re-wrapping the memoryview
    would make pyzmq track it for zero-copy, which costs a hop through its
    garbage-collector thread when libzmq lets go of it.
    """
    if isinstance(frame, memoryview) and isinstance(frame.obj, zmq.Frame) and frame.nbytes == len(frame.obj):
        return frame.obj
    return frame


def _new_socket(context: zmq.Context, kind: int, *, send_hwm: int, recv_hwm: int, limits: Limits) -> zmq.Socket:
    sock = context.socket(kind)
    try:
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.SNDHWM, send_hwm)
        sock.setsockopt(zmq.RCVHWM, recv_hwm)
        sock.setsockopt(zmq.MAXMSGSIZE, limits.max_message_bytes + limits.max_header_bytes)
    except zmq.ZMQError:
        sock.close(linger=0)  # an open socket would make context.term() wait forever
        raise
    return sock


def _fail_setup(
    context: zmq.Context, sock: zmq.Socket | None, authenticator: ThreadAuthenticator | None = None
) -> None:
    if sock is not None:
        sock.close(linger=0)
    if authenticator is not None:
        authenticator.stop()
    context.term()


class ZmqServer(_ZmqChannel):
    """The hub's end: a ROUTER bound to ``address``, hearing many clients.

    ``recv`` reports each client's routing id as ``sender``; ``send(reply,
    to=sender)`` answers that client and raises ``ConnectError`` when it is not
    connected or its queue is full. Bind ``tcp://host:*`` for a free port and
    read the chosen one from :attr:`address`.
    """

    def __init__(
        self,
        *,
        address: str,
        limits: Limits = Limits(),
        send_hwm: int = 1000,
        recv_hwm: int = 1000,
        curve: CurveConfig | None = None,
    ) -> None:
        context = zmq.Context(io_threads=1)
        sock: zmq.Socket | None = None
        authenticator: ThreadAuthenticator | None = None
        try:
            sock = _new_socket(context, zmq.ROUTER, send_hwm=send_hwm, recv_hwm=recv_hwm, limits=limits)
            sock.setsockopt(zmq.ROUTER_MANDATORY, 1)
            sock.setsockopt(zmq.HEARTBEAT_IVL, _HEARTBEAT_IVL_MS)
            sock.setsockopt(zmq.HEARTBEAT_TIMEOUT, _HEARTBEAT_TIMEOUT_MS)
            if curve is not None:
                authenticator = self._setup_curve(context, sock, curve)
            bound = self._bind(sock, address)
            super().__init__(context, sock, bound, limits)
        except zmq.ZMQError as exc:
            _fail_setup(context, sock, authenticator)
            raise ConnectError(f"cannot set up a ZeroMQ server on {address}: {exc}") from exc
        except BaseException:
            _fail_setup(context, sock, authenticator)
            raise
        self._authenticator = authenticator
        self._send_hwm = send_hwm
        logger.info("ZeroMQ server listening on %s%s", bound, " (CURVE)" if curve else "")

    @classmethod
    def from_config(cls, config: ZmqConfig, *, device_id: str | None = None, limits: Limits = Limits()) -> ZmqServer:
        """A server bound to ``config.address``; ``device_id`` is unused (servers have none)."""
        return cls(
            address=config.address,
            limits=limits,
            send_hwm=config.send_hwm,
            recv_hwm=config.recv_hwm,
            curve=config.curve,
        )

    def send(self, envelope: Envelope, *, to: str | None = None) -> None:
        """Queue ``envelope`` for the client ``to`` (a ``sender`` this server reported)."""
        self._check_open()
        if not to:
            raise ConnectError("ZmqServer.send needs to=<the sender of a received envelope>")
        routing_id = to.encode("utf-8", "surrogateescape")
        self._send_frames([routing_id, *encode(envelope)], to)

    @staticmethod
    def _setup_curve(context: zmq.Context, sock: zmq.Socket, curve: CurveConfig) -> ThreadAuthenticator | None:
        public, secret = _load_key_pair(curve.secret_key_file, "curve.secret_key_file")
        sock.setsockopt(zmq.CURVE_SECRETKEY, secret)
        sock.setsockopt(zmq.CURVE_PUBLICKEY, public)
        sock.setsockopt(zmq.CURVE_SERVER, 1)
        folder = curve.authorized_clients_dir
        if folder is None:
            return None
        if not folder.is_dir():
            raise ConnectError(f"curve.authorized_clients_dir: {folder} is not a directory")
        keys = sorted(folder.glob("*.key"))
        if not keys:
            logger.warning("curve.authorized_clients_dir %s holds no *.key files: every client is refused", folder)
        auth_log = _RefusalsAsWarnings(logging.getLogger("tandem.transport.zmq.auth"))
        authenticator = ThreadAuthenticator(context, log=auth_log)
        authenticator.start()
        try:
            authenticator.configure_curve(domain="*", location=str(folder))
        except BaseException:
            authenticator.stop()
            raise
        logger.info("CURVE: admitting %d client key(s) from %s", len(keys), folder)
        return authenticator

    @staticmethod
    def _bind(sock: zmq.Socket, address: str) -> str:
        try:
            sock.bind(address)
        except zmq.ZMQError as exc:
            reason = "address already in use" if exc.errno == errno.EADDRINUSE else str(exc)
            raise ConnectError(f"cannot bind ZeroMQ server to {address}: {reason}") from exc
        return sock.getsockopt_string(zmq.LAST_ENDPOINT)

    def _split(self, frames: list[zmq.Frame]) -> tuple[str, list[Buffer]]:
        sender = frames[0].bytes.decode("utf-8", "surrogateescape")
        return sender, [frame.buffer for frame in frames[1:]]

    def _send_error(self, exc: zmq.ZMQError, to: str | None) -> ChannelError:
        if exc.errno == errno.EHOSTUNREACH:
            return ConnectError(f"no connected client {to!r}")
        if isinstance(exc, zmq.Again):
            return ConnectError(f"send queue to client {to!r} is full ({self._send_hwm} messages)")
        return ChannelError(f"sending to {to!r} failed: {exc}")


class ZmqClient(_ZmqChannel):
    """An edge box's end: a DEALER connected to the hub at ``address``.

    Its routing id is ``<device_id>#<6 hex digits>``, unique per instance, so a
    restarted client never collides with its stale predecessor. The constructor
    waits up to ``connect_timeout_s`` for the handshake with the server (``None``
    or ``0``: do not wait) and raises ``ConnectError`` if it does not complete.
    Everything received reports ``sender == "server"``.
    """

    def __init__(
        self,
        *,
        address: str,
        device_id: str,
        limits: Limits = Limits(),
        send_hwm: int = 1000,
        recv_hwm: int = 1000,
        curve: CurveConfig | None = None,
        connect_timeout_s: float | None = 10.0,
    ) -> None:
        routing_id = f"{device_id}#{secrets.token_hex(3)}"
        if not device_id or device_id.startswith("\0") or len(routing_id.encode()) > _MAX_ROUTING_ID_BYTES:
            raise ValueError(f"device_id {device_id!r} must be 1 to {_MAX_ROUTING_ID_BYTES - 7} bytes, not NUL-led")
        context = zmq.Context(io_threads=1)
        sock: zmq.Socket | None = None
        try:
            sock = _new_socket(context, zmq.DEALER, send_hwm=send_hwm, recv_hwm=recv_hwm, limits=limits)
            sock.setsockopt(zmq.IMMEDIATE, 1)
            sock.setsockopt(zmq.ROUTING_ID, routing_id.encode())
            sock.setsockopt(zmq.HEARTBEAT_IVL, _HEARTBEAT_IVL_MS)
            sock.setsockopt(zmq.HEARTBEAT_TIMEOUT, _HEARTBEAT_TIMEOUT_MS)
            if curve is not None:
                self._setup_curve(sock, curve)
            try:
                sock.connect(address)
            except zmq.ZMQError as exc:
                raise ConnectError(f"cannot connect ZeroMQ client to {address}: {exc}") from exc
            if connect_timeout_s:
                self._await_connection(sock, address, connect_timeout_s)
            super().__init__(context, sock, address, limits)
        except zmq.ZMQError as exc:
            _fail_setup(context, sock)
            raise ConnectError(f"cannot set up a ZeroMQ client for {address}: {exc}") from exc
        except BaseException:
            _fail_setup(context, sock)
            raise
        self.device_id = device_id
        self.routing_id = routing_id
        self._send_hwm = send_hwm
        state = "connected to" if connect_timeout_s else "connecting to"
        logger.info("ZeroMQ client %s %s %s%s", routing_id, state, address, " (CURVE)" if curve else "")

    @classmethod
    def from_config(
        cls,
        config: ZmqConfig,
        *,
        device_id: str | None = None,
        limits: Limits = Limits(),
        connect_timeout_s: float | None = 10.0,
    ) -> ZmqClient:
        """A client connected to ``config.address``; ``device_id`` defaults to the host name."""
        return cls(
            address=config.address,
            device_id=device_id or socket.gethostname(),
            limits=limits,
            send_hwm=config.send_hwm,
            recv_hwm=config.recv_hwm,
            curve=config.curve,
            connect_timeout_s=connect_timeout_s,
        )

    def send(self, envelope: Envelope, *, to: str | None = None) -> None:
        """Queue ``envelope`` for the server (``to`` is ignored: a client has one peer)."""
        self._check_open()
        self._send_frames(encode(envelope), to)

    @staticmethod
    def _setup_curve(sock: zmq.Socket, curve: CurveConfig) -> None:
        if curve.server_public_key_file is None:
            raise ConnectError("curve.server_public_key_file: a client needs the server's public key file")
        public, secret = _load_key_pair(curve.secret_key_file, "curve.secret_key_file")
        server_public, _ = _load_certificate(curve.server_public_key_file, "curve.server_public_key_file")
        sock.setsockopt(zmq.CURVE_SECRETKEY, secret)
        sock.setsockopt(zmq.CURVE_PUBLICKEY, public)
        sock.setsockopt(zmq.CURVE_SERVERKEY, server_public)

    @staticmethod
    def _await_connection(sock: zmq.Socket, address: str, timeout: float) -> None:
        """Wait until the DEALER can send (a completed connection) or a handshake fails for good."""
        # A failure before the monitor is attached is seen again on the next automatic reconnect.
        monitor = sock.get_monitor_socket(functools.reduce(operator.or_, _HANDSHAKE_FAILURES))
        poller = zmq.Poller()
        poller.register(sock, zmq.POLLOUT)
        poller.register(monitor, zmq.POLLIN)
        deadline = time.monotonic() + timeout
        problem = "no server answered"
        try:
            while (remaining := deadline - time.monotonic()) > 0:
                events = dict(poller.poll(math.ceil(remaining * 1000)))
                if sock in events:
                    return
                if monitor in events:
                    event = recv_monitor_message(monitor)["event"]
                    problem = _HANDSHAKE_FAILURES.get(event, problem)
                    if event == zmq.EVENT_HANDSHAKE_FAILED_AUTH:
                        break
            raise ConnectError(f"cannot connect to ZeroMQ server at {address} within {timeout} s: {problem}")
        finally:
            sock.disable_monitor()
            monitor.close(linger=0)

    def _split(self, frames: list[zmq.Frame]) -> tuple[str, list[Buffer]]:
        return SERVER_SENDER, [frame.buffer for frame in frames]

    def _send_error(self, exc: zmq.ZMQError, to: str | None) -> ChannelError:
        if isinstance(exc, zmq.Again):
            return ConnectError(
                f"cannot send to the server at {self._address}: not connected, "
                f"or {self._send_hwm} messages already queued"
            )
        return ChannelError(f"sending to the server at {self._address} failed: {exc}")
