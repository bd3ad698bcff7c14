"""The agent's view of which peers are alive: greeting them at start, link events from the
transport, heartbeats to peers not otherwise written to, and what a peer's death or restart means
for the round (runtime/PROTOCOL.md, "Liveness"). Mixed into :class:`rmio.agents.agent.Agent`."""

from __future__ import annotations

import logging
import time

from rmio.runtime.stop import Stop
from rmio.runtime.wire import Message, encode

log = logging.getLogger(__name__)


class LivenessMixin:
    def _greet(self) -> None:
        """Say hello to the env host (from then on it waits for our actions) and to every peer,
        retrying while connections come up; a peer still unreachable after 3 s is greeted when its
        link comes up."""
        start = resend = time.monotonic()
        todo = {"env", *self.peers} | ({"wm"} if "wm" in self.node.peers else set())
        confirmed = self.node.confirms_delivery  # else a greeting counts once the peer answered
        while "env" in todo or (todo and time.monotonic() < start + 3.0):
            if not confirmed:
                todo -= self.live.last_heard.keys()
            if time.monotonic() >= resend:
                for peer in sorted(todo):
                    if (
                        self.send(
                            peer,
                            "HELLO",
                            role="agent",
                            epoch=self.view.epoch,
                            leader=self.view.leader,
                        )
                        and confirmed
                    ):
                        todo.discard(peer)
                resend = time.monotonic() + (0.0 if confirmed else 0.05)
            if "env" in todo and time.monotonic() > start + self.settings.startup_timeout_s:
                raise Stop("env host unreachable")
            self._pump(0.01)
            # rounds are polled after messages are handled, here as in run()
            if self.coord is not None:
                self.coord.poll(self.clock())
        log.info(
            "%s: greeted in %.3f s%s",
            self.name,
            time.monotonic() - start,
            f", not {sorted(todo)}" if todo else "",
        )

    def _links(self, now: float) -> None:
        events, self.node.link_events = self.node.link_events, []
        for peer, up in events:
            if peer == "wm":  # a dropped link to the world-model node: stop asking it at once
                if up:
                    self.wm_health.heard()
                else:
                    self.wm_health.failed(now)
            if not peer.startswith("a"):
                continue
            if not up:
                self._peer_down(peer)
            elif peer not in self.live.last_heard or peer in self.live.down:  # a (re)started peer
                self.node.send(
                    peer,
                    "HELLO",
                    role="agent",
                    epoch=self.view.epoch,
                    leader=self.view.leader,
                )

    def _peer_down(self, peer: str) -> None:
        if peer in self.live.down or peer not in self.live.last_heard:
            return
        self.live.mark_dead(peer)
        if self.coord is not None:
            self.coord.forget(int(peer[1:]))
        if peer == f"a{self.view.leader}":
            self.counts["leader_lost"] += 1
            log.info("%s: coordinator %s is gone", self.name, peer)
            # our round died with it: ask everyone, which elects a new one
            if self.awaiting is not None:
                self._report_loss(*self.awaiting, force_broadcast=True)
            self._maybe_claim(self.ep, self.t)

    def _liveness(self, now: float) -> None:
        for peer in self.live.expired(now):
            if peer.startswith("a"):
                self._peer_down(peer)
        due = self.live.heartbeat_due(self.peers, now)
        frames = (
            encode(
                "HB", self.name, inc=self.node.inc, epoch=self.view.epoch, leader=self.view.leader
            )
            if due
            else []
        )
        for peer in due:
            # a peer we think dead is still beaten to, at the slow rate: after a partition heals
            # (no connection event over udp) this is how the two sides hear each other again
            if self.node.send_frames(peer, "HB", frames):
                self.live.sent(peer, now)
            elif self.node.last_fail == "unreachable":
                self.live.sent(peer, now)
                self._peer_down(peer)

    def _on_liveness(self, msg: Message, now: float) -> None:
        if msg.type == "HELLO":
            old = self.peer_inc.get(msg.src)
            if old != msg.inc:
                self.peer_inc[msg.src] = msg.inc
                # a restarted peer; what we cached of its predecessor is still true
                if old is not None:
                    self.counts["peer_rejoined"] += 1
                    if self.coord is not None:
                        self.coord.forget(int(msg.src[1:]))
                self.send(
                    msg.src,
                    "HELLO",
                    role="agent",
                    epoch=self.view.epoch,
                    leader=self.view.leader,
                )
        self._gossip(msg, now)
