"""ZeroMQ transport shared by every swarm process: one inbox, one outbox, counted traffic, fast
death notice.

Each process binds one ROUTER *inbox* and connects one ROUTER *outbox* to every peer's inbox with
``CONNECT_ROUTING_ID`` set to the peer's name, so a send names its destination and the receiving
inbox sees the sender's name (plus a random suffix) as the routing id (checked against the message's
``src``; with the swarm's key the ``src`` is authenticated by the message's tag). The outbox
is ``ROUTER_MANDATORY``: a send to a peer without a live connection fails at once (EHOSTUNREACH)
instead of queueing into the void, and a socket monitor reports a dropped connection within
milliseconds, which is how a SIGKILLed coordinator is noticed inside the step it died in. Every
socket has LINGER 0 and bounded high-water marks; every receive goes through a poller with a
timeout.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import secrets
from collections.abc import Callable, Sequence
from pathlib import Path

import zmq
from zmq.utils.monitor import recv_monitor_message

from rmio.errors import RmioError
from rmio.runtime import curve, timeline
from rmio.runtime.bundle import load_manifest
from rmio.runtime.datagram import DatagramNode, check_fits
from rmio.runtime.node import NodeBase
from rmio.runtime.wire import MAX_MESSAGE_BYTES, Message

log = logging.getLogger(__name__)

_MORE, _LAST = int(zmq.SNDMORE | zmq.NOBLOCK), int(zmq.NOBLOCK)
_EVENTS, _POLLIN = int(zmq.EVENTS), int(zmq.POLLIN)


def make_node(
    name: str, bind: str, known: Callable[[str], bool], keys: curve.CurveKeys | None = None
) -> NodeBase:
    """The node for an endpoint's scheme: ZeroMQ for ``tcp://`` and ``ipc://`` (with CURVE when
    given ``keys``), datagrams for ``udp://``."""
    try:
        if bind.startswith("udp://"):
            if keys is not None:
                raise RmioError(f"{name}: CURVE is ZeroMQ's (tcp, ipc), not udp's")
            return DatagramNode(name, bind, known)
        return Node(name, bind, known, keys=keys)
    except (zmq.ZMQError, OSError) as exc:  # a port in use, a host not of this machine
        raise RmioError(f"{name} cannot bind {bind}: {exc}") from None


def check_bundle_fits(transport: str, bundle: str | Path) -> None:
    """Refuse, before anything starts, a bundle whose largest message the transport cannot carry."""
    if transport == "udp":
        check_fits(load_manifest(bundle))


class Node(NodeBase):
    """One process's ZeroMQ sockets. Not thread-safe: a role runs one event loop around
    :meth:`poll`."""

    def __init__(
        self,
        name: str,
        bind: str,
        known: Callable[[str], bool],
        *,
        hwm: int = 1000,
        reconnect_ms: int = 20,
        keys: curve.CurveKeys | None = None,
    ) -> None:
        super().__init__(name, known)
        self.ctx = zmq.Context()
        self.inbox = self.ctx.socket(zmq.ROUTER)
        self.out = self.ctx.socket(zmq.ROUTER)
        for sock in (self.inbox, self.out):
            sock.setsockopt(zmq.LINGER, 0)
            sock.setsockopt(zmq.SNDHWM, hwm)
            sock.setsockopt(zmq.RCVHWM, hwm)
        # no handover: a second connection under a routing id in use is ignored instead of taking
        # the first one's messages over (one connection with the id "a2" used to cut a2 off for
        # good); each outbox's id is its name plus a random suffix, so no two processes share
        # one, not even a restarted process and its predecessor's lingering connection. Frames
        # over 4x the limit cost a disconnect.
        self.inbox.setsockopt(zmq.ROUTER_HANDOVER, 0)
        self.inbox.setsockopt(zmq.MAXMSGSIZE, 4 * MAX_MESSAGE_BYTES)
        self.out.setsockopt(zmq.ROUTER_MANDATORY, 1)
        self.out.setsockopt(zmq.ROUTING_ID, f"{name}:{secrets.token_hex(4)}".encode())
        self.out.setsockopt(zmq.RECONNECT_IVL, reconnect_ms)
        self.out.setsockopt(zmq.RECONNECT_IVL_MAX, 20 * reconnect_ms)
        self.keys = keys
        """CURVE: every connection encrypted and its peer's key bound to a role's name."""
        self.zap = curve.secure(self.ctx, self.inbox, self.out, keys) if keys else None
        if bind.startswith("ipc://"):
            path = Path(bind[len("ipc://") :])
            path.parent.mkdir(parents=True, exist_ok=True)
            with contextlib.suppress(FileNotFoundError):
                path.unlink()  # a stale file of a killed predecessor
        self.inbox.bind(bind)
        self.endpoint = self.inbox.getsockopt(zmq.LAST_ENDPOINT).decode()
        self.monitor = self.out.get_monitor_socket(
            zmq.EVENT_DISCONNECTED | zmq.EVENT_HANDSHAKE_SUCCEEDED
        )
        self.poller = zmq.Poller()
        self.poller.register(self.inbox, zmq.POLLIN)
        self.poller.register(self.monitor, zmq.POLLIN)
        self._by_endpoint: dict[str, str] = {}
        self._route: dict[str, bytes] = {}
        """Peer name -> the outbox routing id of its current connection."""
        self._moves = 0

    # -- connections ------------------------------------------------------------------------

    def connect(self, name: str, endpoint: str) -> None:
        """Route messages for ``name`` to ``endpoint`` (re-routing if it moved).

        A moved peer gets a connection under a fresh routing id (``name#k``): the old connection's
        pipe outlives ``disconnect`` for a while, and a second connection under the same routing id
        trips libzmq's ``!has_out_pipe`` assertion (SIGABRT)."""
        old = self.peers.get(name)
        if old == endpoint:
            return
        route = name.encode()
        if old is not None:
            with contextlib.suppress(zmq.ZMQError):
                self.out.disconnect(old)
            self._by_endpoint.pop(old, None)
            self._moves += 1
            route = f"{name}#{self._moves}".encode()
        # (ZMQ_IMMEDIATE would also refuse sends to a peer not connected yet, but with it libzmq
        # ignores CONNECT_ROUTING_ID, so the outbox could no longer name its peers)
        self.out.setsockopt(zmq.CONNECT_ROUTING_ID, route)
        if self.keys is not None:
            curve.server_key(self.out, self.keys, name)
        self.out.connect(endpoint)
        self.peers[name] = endpoint
        self._route[name] = route
        self._by_endpoint[endpoint] = name

    # -- sending ----------------------------------------------------------------------------

    def send_frames(self, to: str, msg_type: str, frames: Sequence[bytes | memoryview]) -> bool:
        frames = self.seal(to, frames)
        try:
            # frame by frame with plain int flags: send_multipart's flag arithmetic builds enum
            # objects
            self.out.send(self._route.get(to) or to.encode(), _MORE)
            for frame in frames[:-1]:
                self.out.send(frame, _MORE)
            self.out.send(frames[-1], _LAST)
        except zmq.ZMQError as exc:
            reason = (
                "unreachable"
                if exc.errno == zmq.EHOSTUNREACH
                else "hwm"
                if exc.errno == zmq.EAGAIN
                else "error"
            )
            self.fail(reason)
            return False
        self.count_sent(msg_type, frames)
        return True

    # -- receiving --------------------------------------------------------------------------

    def poll(self, timeout_ms: float) -> list[Message]:
        """Wait up to ``timeout_ms`` for traffic, then return every valid message that is queued.

        Bad messages are counted in ``stats.dropped`` by reason and never returned; connection
        changes are appended to ``link_events``.
        """
        # zmq_poll counts whole milliseconds: round up, or a wait under 1 ms turns into a busy loop
        events = dict(self.poller.poll(math.ceil(timeout_ms) if timeout_ms > 0 else 0))
        if self.monitor in events:
            self._drain_monitor()
        if self.zap is not None and self.zap.refused:  # counted by the handler's thread
            self.stats.dropped["curve_refused"] = self.zap.refused
        if self.inbox not in events:
            if timeline.ENABLED:
                timeline.mark("wake", 0)
            return []
        out = []
        for k in range(10_000):  # bounded drain so a flood cannot starve the caller's timers
            # the poller said the first one is there; then asking is cheaper than an empty recv's
            # exception
            if k and not self.inbox.getsockopt(_EVENTS) & _POLLIN:
                break
            try:
                if self.keys is None:
                    frames = self.inbox.recv_multipart(flags=zmq.NOBLOCK)
                else:
                    frames = self._recv_authenticated()
            except zmq.Again:
                break
            msg = self._decode(frames)
            if msg is not None:
                out.append(msg)
        if timeline.ENABLED:
            timeline.mark("wake", len(out))
        return out

    def _recv_authenticated(self) -> list[bytes]:
        """One message whose routing id names the role its CURVE key belongs to (the ZAP
        handler's user id); another name is dropped (``wrong_key``): the routing id's name is
        then checked against ``src`` as always."""
        while True:
            route = self.inbox.recv(flags=zmq.NOBLOCK, copy=False)
            rest = self.inbox.recv_multipart(flags=zmq.NOBLOCK)
            name = route.bytes.partition(b":")[0]
            if name == route.get("User-Id").encode():
                return [route.bytes, *rest]
            self.stats.dropped["wrong_key"] += 1

    def _decode(self, frames: list[bytes]) -> Message | None:
        try:  # the routing id is NAME:SUFFIX (a process of this swarm) or whatever a stranger set
            sender = frames[0].decode("ascii").partition(":")[0]
        except UnicodeDecodeError:
            self.stats.dropped["unknown_sender"] += 1
            return None
        return self.decode(frames[1:], sender)

    def _drain_monitor(self) -> None:
        while True:
            try:
                event = recv_monitor_message(self.monitor, flags=zmq.NOBLOCK)
            except zmq.Again:
                return
            except Exception:  # a truncated monitor message: ignore, liveness still catches deaths
                return
            endpoint = event.get("endpoint", b"")
            endpoint = endpoint.decode() if isinstance(endpoint, bytes) else str(endpoint)
            peer = self._by_endpoint.get(endpoint)
            if peer is not None:
                up = event["event"] == zmq.EVENT_HANDSHAKE_SUCCEEDED
                self.link_events.append((peer, up))
                if not up:
                    self._fresh_connection(peer)

    def _fresh_connection(self, peer: str) -> None:
        """The connection to ``peer`` broke (it died): replace it, under a fresh routing id, so
        that what was queued for the dead process is discarded with the old pipe instead of being
        handed to whichever process binds the endpoint next. What is sent until the successor has
        said hello still names the dead incarnation and is dropped on arrival (``to``)."""
        endpoint = self.peers.get(peer)
        if endpoint is None:
            return
        with contextlib.suppress(zmq.ZMQError):
            self.out.disconnect(endpoint)
        self._moves += 1
        route = f"{peer}#{self._moves}".encode()
        self.out.setsockopt(zmq.CONNECT_ROUTING_ID, route)
        if self.keys is not None:
            curve.server_key(self.out, self.keys, peer)
        self.out.connect(endpoint)
        self._route[peer] = route

    def close(self) -> None:
        """Close the sockets and really terminate the context (LINGER 0, so this never hangs)."""
        if self.closed:
            return
        self.closed = True
        with contextlib.suppress(zmq.ZMQError):
            self.out.disable_monitor()
        for sock in (self.monitor, self.inbox, self.out):
            sock.close(linger=0)
        self.ctx.term()
        if self.endpoint.startswith("ipc://"):
            with contextlib.suppress(OSError):
                os.unlink(self.endpoint[len("ipc://") :])
