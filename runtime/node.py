"""What every swarm transport shares, apart from any one transport: counted traffic, validated
decoding, link events, the clock, and where a process of this machine binds.

``transport.Node`` (ZeroMQ) and ``datagram.DatagramNode`` (UDP) both derive from :class:`NodeBase`,
so the roles (env host, agents, world-model node) are written against this module only.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from rmio.runtime.auth import TRAILER_BYTES, Auth
from rmio.runtime.wire import Message, WireError, decode, encode

log = logging.getLogger(__name__)

CATEGORIES = {
    "HB": "liveness",
    "HELLO": "liveness",
    "STEP": "env",
    "ACTION": "env",
    "LOST": "protocol",
    "COORD": "protocol",
    "GATHER": "protocol",
    "STREAM": "protocol",
    "HISTORY": "protocol",
    "RECON": "protocol",
    "WM_REQ": "protocol",
    "WM_REP": "protocol",
}
"""Report grouping: protocol = what loss handling costs; env = sensor/actuator traffic; the rest is
control."""


def category(msg_type: str) -> str:
    return CATEGORIES.get(msg_type, "control")


@dataclass
class TrafficStats:
    """What one process sent and received, per message type; drops per reason."""

    tx_msgs: Counter = field(default_factory=Counter)
    tx_bytes: Counter = field(default_factory=Counter)
    tx_payload: Counter = field(default_factory=Counter)
    rx_msgs: Counter = field(default_factory=Counter)
    rx_bytes: Counter = field(default_factory=Counter)
    dropped: Counter = field(default_factory=Counter)
    send_fail: Counter = field(default_factory=Counter)

    def flat(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for name in (
            "tx_msgs",
            "tx_bytes",
            "tx_payload",
            "rx_msgs",
            "rx_bytes",
            "dropped",
            "send_fail",
        ):
            for key, value in getattr(self, name).items():
                out[f"{name}.{key}"] = int(value)
        return out


def local_endpoint(transport: str, name: str, ipc_dir: str | Path | None = None) -> str:
    """Where a process of this machine binds: a random loopback port, or a socket file in
    ``ipc_dir``."""
    if transport == "tcp":
        return "tcp://127.0.0.1:*"
    if transport == "udp":
        return "udp://127.0.0.1:0"
    if transport == "ipc":
        if ipc_dir is None:
            raise ValueError("ipc transport needs a directory for its socket files")
        return f"ipc://{Path(ipc_dir) / name}.sock"
    raise ValueError(f"unknown transport '{transport}' (tcp, ipc or udp)")


class NodeBase:
    """What every transport shares: counted traffic, validated decoding, link events."""

    endpoint: str
    confirms_delivery = True
    """A successful send means a live connection to the peer (ZeroMQ with ROUTER_MANDATORY). Without
    it (datagrams) a greeting counts only once the peer has answered."""

    inc = 0
    """This process's incarnation (set by whoever runs the role): every message carries it, and a
    message addressed to another incarnation of this name is dropped (``stale_incarnation``)."""

    auth: Auth | None = None
    """The swarm's message authentication (set by whoever runs the role; None: an insecure swarm
    that trusts its network). With it every transmission is sealed (:meth:`seal`) and every
    message whose tag does not match (``bad_auth``) or that was accepted before (``replayed``) is
    dropped."""

    def __init__(self, name: str, known: Callable[[str], bool]) -> None:
        self.name = name
        self.known = known
        self.stats = TrafficStats()
        self.peers: dict[str, str] = {}
        self.link_events: list[tuple[str, bool]] = []
        """(peer, up) for peers that came up or dropped since the caller last cleared it."""
        self.closed = False
        self.peer_inc: dict[str, int] = {}
        """The newest incarnation heard from each peer: what a send addresses, and below which a
        peer's messages come from a dead process (dropped as ``stale_incarnation``)."""
        self.last_fail = ""
        """Why the last failed send failed: ``unreachable`` (the peer is gone), ``hwm``, ``error``
        (a local error, e.g. a firewall's EPERM: the peer may well be alive), ``encode``."""

    def connect(self, name: str, endpoint: str) -> None:
        raise NotImplementedError

    def send_frames(self, to: str, msg_type: str, frames: Sequence[bytes | memoryview]) -> bool:
        raise NotImplementedError

    def poll(self, timeout_ms: float) -> list[Message]:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError

    def send(
        self,
        to: str,
        msg_type: str,
        arrays: Mapping[str, np.ndarray] | None = None,
        **fields: object,
    ) -> bool:
        """Send without ever blocking; False when the peer is unreachable, its queue is full or the
        message cannot be encoded (counted, never raised: no send error may kill a process)."""
        try:
            frames = encode(
                msg_type, self.name, arrays, inc=self.inc, to=self.peer_inc.get(to, 0), **fields
            )
        except (WireError, ValueError, TypeError) as exc:
            self.fail("encode")
            log.warning("%s: cannot encode a %s for %s: %s", self.name, msg_type, to, exc)
            return False
        try:
            return self.send_frames(to, msg_type, frames)
        except Exception as exc:  # a transport surprise is a failed send, never a crash
            self.fail("error")
            log.warning("%s: sending a %s to %s failed: %s", self.name, msg_type, to, exc)
            return False

    def encode_for(
        self, to: str, msg_type: str, arrays: Mapping[str, np.ndarray] | None = None, **fields: Any
    ) -> list[bytes]:
        """Frames addressed to ``to``'s current incarnation (for callers that encode first and send
        later with :meth:`send_frames`); ``to=""`` addresses whichever incarnation is there."""
        return encode(
            msg_type, self.name, arrays, inc=self.inc, to=self.peer_inc.get(to, 0), **fields
        )

    def fail(self, reason: str) -> None:
        """Count a failed send by reason and remember it (``last_fail``)."""
        self.last_fail = reason
        self.stats.send_fail[reason] += 1

    def seal(self, to: str, frames: Sequence[bytes | memoryview]) -> Sequence[bytes | memoryview]:
        """What one transmission of ``frames`` to ``to`` carries: with authentication, the frames
        and their trailer (a resend is a new transmission with its own sequence number)."""
        return frames if self.auth is None else self.auth.seal(to, frames)

    def count_sent(self, msg_type: str, frames: Sequence[bytes | memoryview]) -> None:
        """Count one transmission (``frames`` as sealed: the trailer is bytes, not payload)."""
        size = sum(len(f) for f in frames)
        self.stats.tx_msgs[msg_type] += 1
        self.stats.tx_bytes[msg_type] += size
        trailer = len(frames[-1]) if self.auth is not None else 0
        self.stats.tx_payload[msg_type] += size - len(frames[0]) - trailer

    def decode(self, frames: Sequence[bytes | memoryview], sender: str | None) -> Message | None:
        """A valid message, or None with the drop counted by reason."""
        seq = 0
        if self.auth is not None:
            opened = self.auth.open(self.name, frames)
            if opened is None:
                self.stats.dropped["bad_auth"] += 1
                return None
            frames, seq = opened
        try:
            msg = decode(frames, sender=sender, known=self.known)
        except WireError as exc:
            self.stats.dropped[exc.reason] += 1
            log.debug("%s dropped a message from %r: %s", self.name, (sender or "?")[:16], exc)
            return None
        known = self.peer_inc.get(msg.src, 0)
        if (msg.to and self.inc and msg.to != self.inc) or msg.inc < known:
            # meant for a dead predecessor of ours, or sent by a dead predecessor of the sender
            self.stats.dropped["stale_incarnation"] += 1
            return None
        if self.auth is not None:
            if not self.auth.fresh(msg.src, msg.inc, seq):
                self.stats.dropped["replayed"] += 1
                return None
            msg.nbytes += TRAILER_BYTES
        if msg.inc > known:
            self.peer_inc[msg.src] = msg.inc
        self.stats.rx_msgs[msg.type] += 1
        self.stats.rx_bytes[msg.type] += msg.nbytes
        return msg

    def count_drop(self, reason: str, detail: str = "") -> None:
        """For roles: a message that decoded but makes no sense here (wrong shape, stale
        epoch...)."""
        self.stats.dropped[reason] += 1
        if detail:
            log.debug("%s dropped: %s %s", self.name, reason, detail)


def now_ns() -> int:
    """System-wide monotonic clock: comparable between processes of one machine (one-way
    latencies)."""
    return time.monotonic_ns()
