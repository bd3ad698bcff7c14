"""UDP transport: the same :class:`~rmio.runtime.transport.Node` interface without ZeroMQ's I/O
threads.

A ZeroMQ message wakes three threads (the sender's I/O thread, the receiver's I/O thread, then the
receiver's event loop); a datagram wakes only the receiver's loop, because the sending process
writes it to the kernel itself. On a small shared machine where being woken is most of the cost of
a message (``bench/cold_calls.py``) that is the difference between the two transports' rounds
(runtime/PROTOCOL.md, "Transports").

Every message is one datagram: ``u8 frame count, u32 length per frame (little-endian), frames``,
the frames being exactly what :func:`~rmio.runtime.wire.encode` makes. UDP is unreliable and
unordered on a real network; the protocol already treats every message as one that may never come
(every wait has a deadline). What ZeroMQ did for the protocol is done here as follows:

* death notice: ``IP_RECVERR`` queues the ICMP "port unreachable" that a send to a dead process
  brings back; the socket then polls ``POLLERR`` and the error names the destination, which becomes
  a ``(peer, False)`` link event, as a dropped ZeroMQ connection does;
* a (re)started peer: :meth:`DatagramNode.connect` to a new endpoint is a ``(peer, True)`` link
  event;
* greetings: a sent datagram proves nothing (the peer may not be up yet, as when the roles of a
  roster start in any order), so ``confirms_delivery`` is False and a role repeats its ``HELLO``
  until the peer answers (the env host answers every new incarnation's ``HELLO``);
* high-water mark: the kernel's socket buffers; a full one fails the send (counted as ``hwm``);
* message size: one datagram carries at most :data:`MAX_DATAGRAM` bytes; a larger message fails its
  send (``too_big``). The launcher refuses the transport when the bundle's largest message (a
  whole-window world-model request) would not fit.

A datagram's sender is the name in its header, validated against the roster and, in a swarm with a
key, authenticated by the message's tag (``runtime/auth.py``).
"""

from __future__ import annotations

import errno
import logging
import select
import socket
import struct
from collections.abc import Callable, Sequence

import numpy as np

from rmio.errors import ConfigError
from rmio.runtime import timeline
from rmio.runtime.auth import TRAILER_BYTES
from rmio.runtime.bundle import Manifest
from rmio.runtime.history import ActionCodec
from rmio.runtime.node import NodeBase
from rmio.runtime.wire import MAX_COUNTER, MAX_FRAMES, MAX_INC, Message, encode

log = logging.getLogger(__name__)

MAX_DATAGRAM = 65_507
"""The largest UDP payload over IPv4."""
IP_RECVERR = getattr(socket, "IP_RECVERR", 11)
BUFFER_BYTES = 4 << 20
"""Requested socket buffers (the kernel caps them at net.core.[rw]mem_max)."""
_LENGTH = struct.Struct("<I")


def parse_endpoint(endpoint: str) -> tuple[str, int]:
    """``udp://host:port`` -> (host, port); port 0 or ``*`` binds a free one."""
    if not endpoint.startswith("udp://"):
        raise ValueError(f"not a udp endpoint: '{endpoint}'")
    host, sep, port = endpoint[len("udp://") :].rpartition(":")
    if not sep or not host:
        raise ValueError(f"a udp endpoint is udp://host:port, got '{endpoint}'")
    if port == "*":
        return host, 0
    try:
        value = int(port)
    except ValueError:
        raise ValueError(f"bad port in '{endpoint}'") from None
    if not 0 <= value < 65536:
        raise ValueError(f"bad port in '{endpoint}'")
    return host, value


def pack(frames: Sequence[bytes | memoryview]) -> bytes:
    """One datagram for one message's frames."""
    lengths = b"".join(_LENGTH.pack(len(f)) for f in frames)
    return b"".join((bytes((len(frames),)), lengths, *frames))


def unpack(data: bytes) -> list[memoryview] | None:
    """The frames of one datagram (views into it), or None when its layout does not add up."""
    if not data:
        return None
    count = data[0]
    body = 1 + 4 * count
    if not 1 <= count <= MAX_FRAMES + 2 or len(data) < body:  # header, arrays, auth trailer
        return None
    view = memoryview(data)
    frames, at = [], body
    for k in range(count):
        (length,) = _LENGTH.unpack_from(data, 1 + 4 * k)
        frames.append(view[at : at + length])
        at += length
    return frames if at == len(data) else None


def largest_message_bytes(manifest: Manifest) -> int:
    """The datagram of the swarm's largest message: a world-model request over a whole window, with
    state."""
    spec, codec = manifest.spec, ActionCodec.of(manifest.spec)
    n, steps = spec.n_agents, manifest.history_window + 1
    arrays = {
        "obs": np.zeros((steps, n, spec.obs_dim), np.float32),
        "act": np.zeros((steps, n, *codec.shape), codec.dtype),
        "mask": np.zeros((steps, n), np.float32),
        "h": np.zeros((n, manifest.deter), np.float32),
        "z": np.zeros((n, manifest.stoch), np.float32),
    }
    big = MAX_COUNTER - 1  # the widest integers the header can carry
    frames = encode(
        "WM_REQ", "a9999", arrays, inc=MAX_INC, to=MAX_INC, ep=big, step=big, rid=big, cont=True
    )
    return len(pack([*frames, bytes(TRAILER_BYTES)]))  # sealed, as every message of a keyed swarm


def check_fits(manifest: Manifest) -> None:
    """Refuse the UDP transport up front for a bundle whose window would not fit in one datagram."""
    size = largest_message_bytes(manifest)
    if size > MAX_DATAGRAM:
        spec = manifest.spec
        raise ConfigError(
            f"the udp transport carries messages up to {MAX_DATAGRAM} bytes, but this bundle's "
            f"world-model window ({manifest.history_window + 1} steps x {spec.n_agents} agents x "
            f"{spec.obs_dim} observation values) takes {size}: use tcp or ipc"
        )


class DatagramNode(NodeBase):
    """One process's UDP socket. Not thread-safe: a role runs one event loop around :meth:`poll`."""

    confirms_delivery = False

    def __init__(self, name: str, bind: str, known: Callable[[str], bool]) -> None:
        super().__init__(name, known)
        host, port = parse_endpoint(bind)
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            for option in (socket.SO_SNDBUF, socket.SO_RCVBUF):
                self.sock.setsockopt(socket.SOL_SOCKET, option, BUFFER_BYTES)
            self.sock.setsockopt(socket.IPPROTO_IP, IP_RECVERR, 1)
            self.sock.bind((host, port))
        except OSError:
            self.sock.close()
            raise
        self.sock.setblocking(False)
        bound_host, bound_port = self.sock.getsockname()[:2]
        self.endpoint = f"udp://{bound_host}:{bound_port}"
        self.poller = select.poll()
        self.poller.register(self.sock, select.POLLIN | select.POLLERR)
        self._address: dict[str, tuple[str, int]] = {}
        self._by_address: dict[tuple[str, int], str] = {}

    def connect(self, name: str, endpoint: str) -> None:
        """Route messages for ``name`` to ``endpoint``; a new endpoint counts as the peer coming
        up."""
        if self.peers.get(name) == endpoint:
            return
        host, port = parse_endpoint(endpoint)
        address = (socket.gethostbyname(host), port)
        old = self._address.pop(name, None)
        if old is not None:
            self._by_address.pop(old, None)
        self.peers[name] = endpoint
        self._address[name] = address
        self._by_address[address] = name
        self.link_events.append((name, True))

    def send_frames(self, to: str, msg_type: str, frames: Sequence[bytes | memoryview]) -> bool:
        address = self._address.get(to)
        if address is None:
            self.fail("unreachable")
            return False
        frames = self.seal(to, frames)
        data = pack(frames)
        if len(data) > MAX_DATAGRAM:
            self.fail("too_big")
            log.warning(
                "%s: a %s of %d bytes does not fit in a datagram", self.name, msg_type, len(data)
            )
            return False
        for attempt in range(2):
            try:
                self.sock.sendto(data, address)
                break
            except ConnectionRefusedError:
                # an earlier datagram's ICMP error, reported on this call: note whose, then send
                # again
                self._drain_errors()
                if attempt:
                    self.fail("unreachable")
                    return False
            except BlockingIOError:
                self.fail("hwm")
                return False
            except OSError as exc:
                # EPERM (a firewall of this host) and the like say nothing about the peer
                self.fail(
                    "unreachable"
                    if exc.errno in (errno.EHOSTUNREACH, errno.ENETUNREACH)
                    else "error"
                )
                return False
        self.count_sent(msg_type, frames)
        return True

    def poll(self, timeout_ms: float) -> list[Message]:
        """Wait up to ``timeout_ms`` for traffic, then return every valid message that is queued."""
        events = self.poller.poll(timeout_ms if timeout_ms > 0 else 0)
        if events and events[0][1] & select.POLLERR:
            self._drain_errors()
        out: list[Message] = []
        if events and events[0][1] & select.POLLIN:
            recv = self.sock.recv
            for _ in range(10_000):  # bounded drain so a flood cannot starve the caller's timers
                try:
                    data = recv(MAX_DATAGRAM)
                except BlockingIOError:
                    break
                except ConnectionRefusedError:
                    self._drain_errors()
                    continue
                frames = unpack(data)
                if frames is None:
                    self.stats.dropped["malformed"] += 1
                    continue
                msg = self.decode(frames, sender=None)
                if msg is not None:
                    out.append(msg)
        if timeline.ENABLED:
            timeline.mark("wake", len(out))
        return out

    def _drain_errors(self) -> None:
        """Turn queued ICMP errors into link-down events for the peers they name."""
        for _ in range(1000):
            try:
                _data, _anc, _flags, address = self.sock.recvmsg(1, 1024, socket.MSG_ERRQUEUE)
            except OSError:
                return
            peer = self._by_address.get(tuple(address[:2])) if address else None
            if peer is not None:
                self.link_events.append((peer, False))

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self.sock.close()
