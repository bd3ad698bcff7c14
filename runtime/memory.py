"""An in-memory transport for deterministic protocol tests: every node lives in one process, no
threads, no clock.

:class:`MemoryNetwork` holds every message that was sent and not yet delivered (``in_flight``, in
send order) and one inbox per node. A send encodes the message exactly as on a real transport
(``wire.encode``, frames copied to bytes) and a poll decodes it with :meth:`NodeBase.decode`, so
validation, drop reasons and traffic counters are the real ones. Nothing moves by itself:

* ``net.deliver(match)`` moves the in-flight messages (all, or those ``match`` accepts) to their
  destinations' inboxes, in order; :meth:`MemoryNode.poll` returns what is in its inbox now and
  never sleeps, whatever its timeout;
* ``net.drop(match)``, ``net.duplicate(match)`` and ``net.reorder(match)`` (reverse the matching
  messages among themselves) change what is in flight; ``net.find(match)`` lists it;
* ``net.firewalled.add(name)`` makes every send of that node fail locally (``send_fail.error``,
  as a host firewall's EPERM does), while its peers stay reachable;
* ``net.kill(name)`` is a SIGKILL: the node's in-flight messages and inbox are lost, a send to it
  fails at once (as ``ROUTER_MANDATORY`` does for a dead peer, counted as ``send_fail.unreachable``)
  and every node connected to it gets a ``(name, False)`` link event (the socket monitor's
  "disconnected"); ``net.partition(name)`` / ``net.heal(name)`` cut and restore a live node's links
  both ways with the same link events; ``net.restart(name)`` gives the name a fresh node (a new
  incarnation's sockets) and its peers a ``(name, True)`` link event.

A message is an :class:`Envelope` (src, dst, type, frames); ``match`` is a predicate on envelopes,
and :func:`where` builds the usual one (``where(type="GATHER", dst="a3")``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from rmio.runtime.node import NodeBase
from rmio.runtime.wire import Message


@dataclass
class Envelope:
    src: str
    dst: str
    type: str
    frames: list[bytes]


Match = Callable[[Envelope], bool]


def where(type: str | None = None, src: str | None = None, dst: str | None = None) -> Match:
    """A predicate accepting the envelopes whose given attributes all equal these (None: any)."""

    def match(e: Envelope) -> bool:
        return (
            (type is None or e.type == type)
            and (src is None or e.src == src)
            and (dst is None or e.dst == dst)
        )

    return match


def _any(e: Envelope) -> bool:
    return True


class MemoryNode(NodeBase):
    """One role's end of a :class:`MemoryNetwork`; made by :meth:`MemoryNetwork.node`."""

    def __init__(self, name: str, known: Callable[[str], bool], net: MemoryNetwork) -> None:
        super().__init__(name, known)
        self.net = net
        self.endpoint = f"mem://{name}"
        self.inbox: list[Envelope] = []

    def connect(self, name: str, endpoint: str) -> None:
        self.peers[name] = endpoint

    def send_frames(self, to: str, msg_type: str, frames: Sequence[bytes | memoryview]) -> bool:
        if self.name in self.net.firewalled:
            self.fail("error")  # refused by this host itself (EPERM): says nothing about the peer
            return False
        if self.closed or not self.net.reachable(self.name, to) or to not in self.peers:
            self.fail("unreachable")
            return False
        frames = self.seal(to, frames)
        self.net.in_flight.append(Envelope(self.name, to, msg_type, [bytes(f) for f in frames]))
        self.count_sent(msg_type, frames)
        return True

    def poll(self, timeout_ms: float) -> list[Message]:
        """Every valid message delivered to this node so far (never waits)."""
        todo, self.inbox = self.inbox, []
        out = []
        for e in todo:
            msg = self.decode(e.frames, e.src)
            if msg is not None:
                out.append(msg)
        return out

    def close(self) -> None:
        self.closed = True


class MemoryNetwork:
    """The nodes of one in-process swarm and the messages between them."""

    def __init__(self, known: Callable[[str], bool]) -> None:
        self.known = known
        self.nodes: dict[str, MemoryNode] = {}
        self.in_flight: list[Envelope] = []
        self.dead: set[str] = set()
        self.firewalled: set[str] = set()
        """Nodes whose every send fails locally (a host firewall's EPERM), not as unreachable."""
        self.incarnations = 0
        """The last incarnation given to a node (each new node gets the next one)."""
        self.cut: set[str] = set()
        """Partitioned nodes: alive, but no message goes to or from them."""

    def node(self, name: str) -> MemoryNode:
        """A new node for ``name`` (replacing any earlier one of that name), with a new
        incarnation."""
        node = MemoryNode(name, self.known, self)
        self.incarnations += 1
        node.inc = self.incarnations
        self.nodes[name] = node
        self.dead.discard(name)
        return node

    def connect_all(self) -> None:
        """Connect every node to every other (what the launcher's roster does)."""
        for a in self.nodes.values():
            for b in self.nodes.values():
                if a is not b:
                    a.connect(b.name, b.endpoint)

    def reachable(self, src: str, dst: str) -> bool:
        return dst in self.nodes and not {src, dst} & (self.dead | self.cut)

    # -- what is in flight ----------------------------------------------------------------------

    def find(self, match: Match = _any) -> list[Envelope]:
        return [e for e in self.in_flight if match(e)]

    def deliver(self, match: Match = _any) -> int:
        """Move the matching in-flight messages to their destinations' inboxes (in send order); the
        others stay in flight. Returns how many were delivered."""
        keep, n = [], 0
        for e in self.in_flight:
            if not match(e):
                keep.append(e)
            elif self.reachable(e.src, e.dst):
                self.nodes[e.dst].inbox.append(e)
                n += 1
        self.in_flight = keep
        return n

    def drop(self, match: Match) -> int:
        before = len(self.in_flight)
        self.in_flight = [e for e in self.in_flight if not match(e)]
        return before - len(self.in_flight)

    def duplicate(self, match: Match) -> int:
        """Send each matching message twice (the copy right behind the original)."""
        out: list[Envelope] = []
        n = 0
        for e in self.in_flight:
            out.append(e)
            if match(e):
                out.append(Envelope(e.src, e.dst, e.type, list(e.frames)))
                n += 1
        self.in_flight = out
        return n

    def reorder(self, match: Match) -> int:
        """Reverse the order of the matching messages among themselves (the others keep their
        places)."""
        picked = [e for e in self.in_flight if match(e)]
        it = iter(reversed(picked))
        self.in_flight = [next(it) if match(e) else e for e in self.in_flight]
        return len(picked)

    # -- faults ---------------------------------------------------------------------------------

    def _links(self, name: str, up: bool) -> None:
        for other in self.nodes.values():
            if other.name != name and name in other.peers and other.name not in self.dead:
                other.link_events.append((name, up))
        node = self.nodes.get(name)
        if node is not None and name not in self.dead:
            node.link_events.extend((peer, up) for peer in node.peers if peer not in self.dead)

    def kill(self, name: str) -> None:
        """SIGKILL: its messages in flight and in its inbox are gone, and its peers see the link
        drop."""
        self.in_flight = [e for e in self.in_flight if name not in (e.src, e.dst)]
        node = self.nodes[name]
        node.inbox.clear()
        node.closed = True
        self.dead.add(name)
        self._links(name, False)

    def partition(self, name: str) -> None:
        """Cut a live node off from everyone (both ways); what was in flight to or from it is
        lost."""
        self.in_flight = [e for e in self.in_flight if name not in (e.src, e.dst)]
        self.cut.add(name)
        self._links(name, False)

    def heal(self, name: str) -> None:
        self.cut.discard(name)
        self._links(name, True)

    def restart(self, name: str) -> MemoryNode:
        """A fresh node for a killed name, connected like its predecessor; its peers see the link
        come up."""
        old = self.nodes[name]
        node = self.node(name)
        for peer, endpoint in old.peers.items():
            node.connect(peer, endpoint)
        node.link_events.clear()
        self._links(name, True)
        node.link_events.clear()  # the new process connects; its own view of the links starts empty
        return node
