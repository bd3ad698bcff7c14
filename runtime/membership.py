"""Liveness (Paranoid Pirate heartbeats) and the coordinator election rules (deterministic rank +
epochs).

Any message from a peer proves it alive; a process sends an explicit heartbeat to a peer only when
it has sent that peer nothing for one interval. A peer is dead after ``liveness`` intervals of
silence, or at once when its connection drops (the transport's monitor) or a send to it fails.

Election (see PROTOCOL.md): the coordinator is sticky. While a live coordinator is known nobody
elects; when none is known and an agent loses its observation at step t, the agents that observe
at t elect the lowest-ranked of them (rank = agent id among live agents): agent i claims when
every live agent below it announced a loss at t; when nobody observes, the lowest live agent
claims once every other live agent announced its loss. A claim carries a new epoch: the smallest
above the highest ever seen that names the claimant (epoch e belongs to agent (e - 1) mod n), so no
two claimants ever share an epoch; a view (epoch, leader) replaces another when its epoch is
higher, so two concurrent claimers converge on one; messages of an older epoch are stale and
dropped.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field


@dataclass
class Liveness:
    """Heartbeat bookkeeping. Links on the critical path (to and from the coordinator) beat every
    ``interval_s``; the others every ``slow_factor`` intervals, because a crashed process is noticed
    from its dropped connection anyway and n (n - 1) fast heartbeats cost real CPU on a small
    machine."""

    interval_s: float
    liveness: int
    slow_factor: int = 5
    send_fast: set[str] = field(default_factory=set)
    """Peers we beat to at the fast rate (our coordinator, or everyone while we coordinate)."""
    expect_fast: set[str] = field(default_factory=set)
    """Peers expected to beat to us at the fast rate (our coordinator)."""
    last_heard: dict[str, float] = field(default_factory=dict)
    last_sent: dict[str, float] = field(default_factory=dict)
    down: set[str] = field(default_factory=set)

    @property
    def expiry_s(self) -> float:
        return self.interval_s * self.liveness

    def expiry(self, peer: str) -> float:
        return self.expiry_s * (1 if peer in self.expect_fast else self.slow_factor)

    def interval(self, peer: str) -> float:
        return self.interval_s * (1 if peer in self.send_fast else self.slow_factor)

    def heard(self, peer: str, now: float) -> bool:
        """Record traffic from a peer; True when it was considered dead before (it came back)."""
        back = peer in self.down or peer not in self.last_heard
        self.last_heard[peer] = now
        self.down.discard(peer)
        return back

    def sent(self, peer: str, now: float) -> None:
        self.last_sent[peer] = now

    def mark_dead(self, peer: str) -> None:
        self.down.add(peer)

    def alive(self, peer: str, now: float) -> bool:
        if peer in self.down:
            return False
        seen = self.last_heard.get(peer)
        return seen is not None and now - seen <= self.expiry(peer)

    def expired(self, now: float) -> list[str]:
        """Peers not yet marked dead that have been silent for longer than their expiry."""
        return [
            p
            for p, seen in self.last_heard.items()
            if p not in self.down and now - seen > self.expiry(p)
        ]

    def heartbeat_due(self, peers: Iterable[str], now: float) -> list[str]:
        """Peers due a heartbeat; when any is, those due within half an interval go along (fewer
        wake-ups)."""
        peers = list(peers)
        if not any(now - self.last_sent.get(p, -1e18) >= self.interval(p) for p in peers):
            return []
        return [
            p
            for p in peers
            if now - self.last_sent.get(p, -1e18) >= self.interval(p) - 0.5 * self.interval_s
        ]

    def next_deadline(self, peers: Iterable[str], now: float) -> float:
        """Seconds until the next heartbeat to one of ``peers`` is due or one of them could expire
        (an expiry already past is the caller's to handle, and must not make it spin)."""
        times = []
        for p in peers:
            times.append(self.last_sent.get(p, now) + self.interval(p))
            seen = self.last_heard.get(p)
            if seen is not None and p not in self.down and seen + self.expiry(p) > now:
                times.append(seen + self.expiry(p))
        return max(0.0, min(times, default=now + self.interval_s) - now)


@dataclass
class ServerHealth:
    """Whether a server without heartbeats (the world-model node) is worth asking: after a timeout
    or a dropped link it is skipped at once, and tried again after a backoff that doubles while it
    stays silent (0.25 s to 5 s); any message from it makes it usable again. So a dead node costs
    one round its deadline, not every round."""

    down_until: float = 0.0
    backoff: float = 0.0

    def usable(self, now: float) -> bool:
        return now >= self.down_until

    def failed(self, now: float) -> None:
        self.backoff = min(5.0, max(0.25, 2 * self.backoff))
        self.down_until = now + self.backoff

    def heard(self) -> None:
        self.backoff = self.down_until = 0.0


def leader_of(epoch: int, n_agents: int) -> int:
    """The only agent that may claim ``epoch``: epochs name their claimant (epoch 0: nobody)."""
    return (epoch - 1) % n_agents if epoch > 0 else -1


def next_epoch(above: int, me: int, n_agents: int) -> int:
    """The smallest epoch above ``above`` that agent ``me`` may claim. Epoch e belongs to agent
    (e - 1) mod n, so two claimants never share an epoch, whatever they know (PROTOCOL.md)."""
    k = max(0, above) // n_agents
    epoch = k * n_agents + me + 1
    return epoch if epoch > above else epoch + n_agents


_NOBODY = -(1 << 30)


@dataclass(frozen=True, order=True)
class View:
    """Who coordinates: ordered so that ``a > b`` means a supersedes b. The default is "nobody,
    epoch 0"."""

    epoch: int = 0
    rank: int = _NOBODY
    """``-leader`` so that, at equal epochs, the lower agent id wins; nobody ranks below
    everyone."""

    @classmethod
    def of(cls, epoch: int, leader: int) -> View:
        return cls(epoch, -leader if leader >= 0 else _NOBODY)

    @property
    def leader(self) -> int:
        return -self.rank if self.rank > _NOBODY else -1


def should_claim(
    me: int, i_observe: bool, lost_reports: set[int], live_agents: Iterable[int]
) -> bool:
    """Agent ``me`` takes over at step t (no live coordinator known): see the module docstring."""
    others = [j for j in live_agents if j != me]
    if i_observe:
        return all(j in lost_reports for j in others if j < me)
    return all(j in lost_reports for j in others) and all(me < j for j in others)
