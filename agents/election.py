"""The agent's part in electing the temporary coordinator: loss reports, claims of a new epoch,
adopting a newer view from any peer, and becoming or ceasing to be the coordinator
(runtime/PROTOCOL.md, "Election"). Mixed into :class:`rmio.agents.agent.Agent`, whose state it reads
and writes."""

from __future__ import annotations

import logging

from rmio.coordinator.service import Coordinator
from rmio.runtime.journal import journal_claim
from rmio.runtime.membership import View, leader_of, next_epoch, should_claim
from rmio.runtime.wire import MAX_COUNTER, Message

log = logging.getLogger(__name__)


class ElectionMixin:
    def _leader_alive(self) -> bool:
        leader = self.view.leader
        return leader == self.i or (leader >= 0 and self.live.alive(f"a{leader}", self.clock()))

    def _report_loss(
        self, ep: int, t: int, force_broadcast: bool = False, retry: bool = False
    ) -> None:
        self.lost_reports.setdefault((ep, t), set()).add(self.i)
        if not force_broadcast and self._leader_alive():
            if self.view.leader == self.i:
                assert self.coord is not None
                self.coord.on_loss(ep, t, self.i, self.clock())
                return
            if self.send(
                f"a{self.view.leader}",
                "LOST",
                ep=ep,
                step=t,
                epoch=self.view.epoch,
                leader=self.view.leader,
                bcast=False,
                retry=retry,
            ) or self.awaiting == (ep, t):
                # sent; or the coordinator is unreachable and _peer_down already told everyone
                return
        self.counts["lost_broadcast"] += 1
        for peer in self.peers:
            if peer not in self.live.down:
                self.send(
                    peer,
                    "LOST",
                    ep=ep,
                    step=t,
                    epoch=self.view.epoch,
                    leader=self.view.leader,
                    bcast=True,
                    retry=retry,
                )
        self._maybe_claim(ep, t)

    def _on_lost(self, msg: Message, now: float) -> None:
        ep, t, j = msg["ep"], msg["step"], int(msg.src[1:])
        if not self.near(ep, t):
            self.node.count_drop("stale_step")
            return
        self.lost_reports.setdefault((ep, t), set()).add(j)
        leader = self.view.leader
        if msg["bcast"] and 0 <= leader != self.i and msg.src != f"a{leader}":
            # the sender knows no live coordinator: ask ours, whose death (over udp an ICMP error
            # to this very probe) we may not have noticed yet, instead of timing it out
            self.send(f"a{leader}", "HB", epoch=self.view.epoch, leader=leader)
            self.counts["leader_probes"] += 1
        self._gossip(msg, now)
        if self.view.leader == self.i and self.coord is not None:
            if msg["epoch"] < self.view.epoch:  # it does not know us yet
                self.send(msg.src, "COORD", epoch=self.view.epoch, leader=self.i)
            self.coord.on_loss(ep, t, j, now, retry=msg["retry"])
        else:
            self._maybe_claim(ep, t)

    def _maybe_claim(self, ep: int, t: int) -> None:
        if (
            self.settings.recon != "world-model"
            or (ep, t) != (self.ep, self.t)
            or self._leader_alive()
        ):
            return
        reports = self.lost_reports.get((ep, t), set())
        if not reports:
            return
        now = self.clock()
        live = [self.i] + [
            j for j in range(self.spec.n_agents) if j != self.i and self.live.alive(f"a{j}", now)
        ]
        if not should_claim(self.i, self.seen, reports, live):
            return
        if not self._view_learned(now):
            self.counts["claims_deferred"] += 1  # a new incarnation first learns the view
            return
        self._claim(ep, t, now)

    def _claim(self, ep: int, t: int, now: float) -> None:
        """Take a new epoch that names us, announce it, and open the rounds of step t's reports."""
        epoch = next_epoch(self.max_epoch, self.i, self.spec.n_agents)
        if epoch >= MAX_COUNTER:  # only a forged view gets here; refusing beats crashing
            self.counts["epochs_exhausted"] += 1
            return
        self.counts["claims"] += 1
        log.info("%s: claims coordination, epoch %d", self.name, epoch)
        journal_claim(self.settings.out_dir, self.name, self.inc, epoch)
        self._become(View.of(epoch, self.i))
        for peer in self.peers:
            if peer not in self.live.down:
                self.send(peer, "COORD", epoch=self.view.epoch, leader=self.i)
        assert self.coord is not None
        if (ep, t) == (self.ep, self.t):
            for j in sorted(self.lost_reports.get((ep, t), set())):
                self.coord.on_loss(ep, t, j, now)

    def _named_but_not_leading(self, epoch: int, now: float) -> None:
        """A peer's view names us as coordinator, but this incarnation leads nothing: we were
        restarted, and the peers still follow our dead predecessor (they hear us, so they do not
        time it out). Claiming a fresh epoch at once hands them a live coordinator again."""
        if (
            self.coord is None
            and epoch >= self.view.epoch
            and self.settings.recon == "world-model"
            and self._view_learned(now)
        ):
            self.counts["reclaims"] += 1
            self._claim(self.ep, self.t, now)

    def _view_learned(self, now: float) -> bool:
        """Whether this incarnation may claim: it heard from (hence learned the view of) every
        peer that is not known to be down, or a liveness expiry passed since it started."""
        if self._learned:
            return True
        heard, down = self.live.last_heard, self.live.down
        self._learned = now - self.started >= self.live.expiry_s or all(
            p in heard or p in down for p in self.peers
        )
        return self._learned

    def _valid_view(self, epoch: int, leader: int) -> bool:
        """A view names its epoch's claimant; any other pairing is forged or corrupt."""
        if leader_of(epoch, self.spec.n_agents) == leader:
            return True
        self.node.count_drop("bad_view", f"epoch {epoch} leader {leader}")
        return False

    def _become(self, view: View) -> None:
        if view.leader != self.view.leader and self.view.leader >= 0:
            self.counts["coordinator_changes"] += 1
        self.view = view
        self.max_epoch = max(self.max_epoch, view.epoch)
        leader = f"a{view.leader}"
        self.live.send_fast = set(self.peers) if view.leader == self.i else {leader}
        self.live.expect_fast = {leader} if view.leader != self.i else set()
        self._live_due = 0.0  # faster links now: their deadlines are sooner
        if view.leader == self.i and self.coord is None:
            self.coord = Coordinator(self, self.manifest)
        elif view.leader != self.i and self.coord is not None:
            self.counts["stepped_down"] += int(self.coord.rounds_started > 0)
            self.coord.close()
            self.coord = None
            # tell our followers, or one of them may time the new coordinator out and claim
            for peer in self.peers:
                if peer != leader and peer not in self.live.down:
                    self.send(peer, "COORD", epoch=view.epoch, leader=view.leader)
            self.counts["step_down_notices"] += 1

    def _gossip(self, msg: Message, now: float) -> None:
        """Learn a newer coordinator from any peer's view, if that coordinator is alive (or is the
        sender)."""
        epoch, leader = msg["epoch"], msg["leader"]
        if epoch and not self._valid_view(epoch, leader):
            return
        self.max_epoch = max(self.max_epoch, epoch)
        if leader == self.i and epoch:
            self._named_but_not_leading(epoch, now)
            return
        # our own coordinator naming its successor is a step-down notice: believed at once
        if (
            0 <= leader < self.spec.n_agents
            and leader != self.i
            and View.of(epoch, leader) > self.view
            and (
                msg.src in (f"a{leader}", f"a{self.view.leader}")
                or self.live.alive(f"a{leader}", now)
            )
        ):
            self._become(View.of(epoch, leader))

    def _from_coordinator(self, msg: Message) -> bool:
        """Epoch check of a message that only a coordinator sends: stale ones are counted and
        dropped."""
        view = View.of(msg["epoch"], int(msg.src[1:]))
        if not self._valid_view(msg["epoch"], view.leader):
            return False
        if view < self.view:
            self.counts["stale_epoch"] += 1
            self.node.count_drop("stale_epoch")
            return False
        self.max_epoch = max(self.max_epoch, msg["epoch"])
        if view > self.view:
            self._become(view)
        return True

    def _on_coord(self, msg: Message, now: float) -> None:
        if msg["leader"] != int(msg.src[1:]):  # a correction: "you are behind, this is the view"
            self._gossip(msg, now)
        elif self._from_coordinator(msg):
            return
        if View.of(msg["epoch"], msg["leader"]) < self.view:  # tell the stale claimer what we know
            self.send(msg.src, "COORD", epoch=self.view.epoch, leader=self.view.leader)
