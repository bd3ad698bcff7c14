"""The swarm protocol driven step by step in one process: no sockets, no processes, no wall clock.

The env host, six agents (and their coordinator) and optionally the world-model node talk through
``rmio.runtime.memory``: messages are encoded and validated as on a real transport, but a test says
when they are delivered, drops, duplicates or reorders them, kills or partitions a node, and moves
the agents' clock by hand. Reconstructions are compared exactly with the in-process reference
(``ReferencePolicy``) or with ``WorldModelRunner.replay`` over the window the coordinator could
know, as ``test_swarm.check_reconstructions`` does for real runs.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np
import pytest
from swarm_helpers import swarm_settings

from rmio.agents.agent import Agent
from rmio.coordinator.wmnode import WorldModelNode
from rmio.envs.registry import make_env
from rmio.evaluation.reference import ReferencePolicy
from rmio.runtime.envhost import EnvHost
from rmio.runtime.membership import View
from rmio.runtime.memory import Envelope, MemoryNetwork, where
from rmio.runtime.models import WorldModelRunner
from rmio.runtime.wire import encode

pytestmark = pytest.mark.timeout(120)

N = 6


class Clock:
    """The agents' monotonic clock, moved only by the test."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class Swarm:
    """One episode of a 6-agent HalfCheetah swarm in memory; the test chooses who is blind at each
    step."""

    def __init__(self, bundle: Path, out: Path, *, wm_node: bool = False, **kw: object) -> None:
        kw.setdefault("loss", {"model": "none"})
        self.settings = s = swarm_settings(
            bundle,
            out,
            steps=60,
            record=True,
            step_deadline_ms=100.0,
            world_model="node" if wm_node else "on-agent",
            **kw,
        )
        self.clock = Clock()
        self.net = MemoryNetwork(s.known)
        nodes = {
            name: self.net.node(name)
            for name in ["env", *s.agent_names(), *(["wm"] if wm_node else [])]
        }
        self.net.connect_all()
        self.env = EnvHost(s, nodes["env"])
        self.agents = [Agent(i, s, nodes[f"a{i}"], clock=self.clock) for i in range(N)]
        self.wm = WorldModelNode(s, nodes["wm"], device="cpu") if wm_node else None
        self.dead: set[int] = set()
        self.l = self.agents[0].l
        self.ref = ReferencePolicy(bundle, "world-model", s.wm_mode)
        self.ref_actions: list[np.ndarray] = []
        self.sim = make_env(s.env_config())
        self.ts = self.sim.reset(seed=s.seed)
        self.t = 0
        self.defaulted = np.zeros(N, bool)
        self.cur = None
        for a in self.agents:  # what Agent._greet sends
            for peer in ["env", *a.peers]:
                a.send(peer, "HELLO", role="agent", epoch=a.view.epoch, leader=a.view.leader)
        if self.wm is not None:
            self.wm.node.send("env", "HELLO", role="wm", epoch=0, leader=-1)
        self.settle()
        assert self.env.reachable == {*s.agent_names(), *(["wm"] if wm_node else [])}

    def close(self) -> None:
        self.sim.close()

    # -- driving ------------------------------------------------------------------------------

    def wake(self) -> None:
        """Every live role handles what was delivered to it, then runs its timers (as its event loop
        would)."""
        now = self.clock.now
        for a in self.agents:
            if a.i not in self.dead:
                a.receive(a.node.poll(0), now)
                a.tick(now)
        self.env.receive(self.env.node.poll(0))
        if self.wm is not None:
            self.wm.receive(self.wm.node.poll(0))

    def settle(
        self,
        match: Callable[[Envelope], bool] = lambda e: True,
        before: Callable[[MemoryNetwork], None] | None = None,
    ) -> None:
        """Deliver (the matching) messages and wake everyone until nothing (matching) is in
        flight."""
        for _ in range(200):
            if before is not None:
                before(self.net)
            moved = self.net.deliver(match)
            self.wake()
            if not moved and not self.net.find(match):
                return
        raise AssertionError("the swarm never went quiet")

    def advance(self, seconds: float, **kw: object) -> None:
        self.clock.now += seconds
        self.settle(**kw)

    def begin(self, blind: Iterable[int] = ()) -> None:
        observed = np.ones(N, bool)
        observed[list(blind)] = False
        ts = self.ts
        self.cur = dataclasses.replace(
            ts, obs=ts.obs * observed[:, None].astype(ts.obs.dtype), observed=observed
        )
        self.env.begin_step(0, self.t, self.t, self.cur, self.defaulted)

    def end(self) -> np.ndarray:
        actions, self.defaulted = self.env.end_step()
        cur = self.cur
        self.ref_actions.append(self.ref.act(cur.obs, cur.observed, cur.avail_actions))
        self.ts = self.sim.step(actions)
        self.t += 1
        return actions

    def step(self, blind: Iterable[int] = (), **kw: object) -> np.ndarray:
        """One env step with everything delivered at once: nobody is ever late."""
        self.begin(blind)
        self.settle(**kw)
        assert not self.env.waiting, f"step {self.t}: no action from {sorted(self.env.waiting)}"
        return self.end()

    # -- what to compare --------------------------------------------------------------------

    def recons(self, j: int) -> dict[int, np.ndarray]:
        """Step -> the reconstruction agent j acted on."""
        return {r[1]: r[3] for r in self.agents[j].records if r[2] == "recon"}

    def kinds(self, j: int) -> dict[int, str]:
        return {r[1]: r[2] for r in self.agents[j].records if r[2] != "recon"}

    def replay(self, t: int, hide: Iterable[tuple[int, int]] = ()) -> np.ndarray:
        """Every agent's row of ``WorldModelRunner.replay`` over step t's window of the env host's
        records (what a coordinator that holds everything sees), with each (agent, step) of ``hide``
        never received: its observation counts as lost and its action as the default, as the
        coordinator's window fills them."""
        rec = self.env.records
        start = max(0, t - self.l)
        obs = np.stack([rec[h]["obs"] for h in range(start, t + 1)])
        masks = np.stack([rec[h]["observed"] for h in range(start, t + 1)]).astype(np.float32)
        prev = np.stack(
            [
                rec[h]["actions"] if h >= 0 else np.zeros_like(rec[0]["actions"])
                for h in range(start - 1, t)
            ]
        )
        for j, h in hide:
            if start <= h <= t:
                masks[h - start, j] = 0.0
            if start <= h + 1 <= t:
                prev[h + 1 - start, j] = 0.0
        _, recon = WorldModelRunner(self.settings.bundle).replay(obs, prev, masks)
        return recon[-1]

    def check_round(self, coordinator: int, t: int, hide: Iterable[tuple[int, int]] = ()) -> None:
        """The coordinator's whole reconstruction of step t (every agent's row, not only the blind
        ones' that travel) is the replay of what it could know; when something was hidden from it,
        that replay differs from the full window's, so the comparison tells the two apart."""
        hide = list(hide)
        got = self.agents[coordinator].coord.rounds[(0, t)].recon
        assert got is not None and np.array_equal(got, self.replay(t, hide))
        assert np.array_equal(got, self.replay(t)) == (not hide)

    def check_reference(self) -> int:
        """Every step's joint action is the reference's, and every blind agent (only those) acted on
        exactly the reference's reconstruction. Returns how many reconstructions were compared."""
        for t, rec in enumerate(self.env.records):
            assert not rec["defaulted"].any(), f"step {t}"
            assert np.array_equal(rec["actions"], self.ref_actions[t]), f"step {t}"
        checked = 0
        for j in range(N):
            got = self.recons(j)
            lost = {t for t, rec in enumerate(self.env.records) if not rec["observed"][j]}
            assert set(got) == lost, f"agent {j}"
            for t, row in got.items():
                assert np.array_equal(row, self.ref.recons[t][j]), f"agent {j} step {t}"
                checked += 1
        return checked

    def views(self) -> set[View]:
        return {a.view for a in self.agents if a.i not in self.dead}


@pytest.fixture
def swarm_factory(bundle: Path, tmp_path: Path):
    made: list[Swarm] = []

    def make(**kw: object) -> Swarm:
        made.append(Swarm(bundle, tmp_path / f"run{len(made)}", **kw))
        return made[-1]

    yield make
    for s in made:
        s.close()


def test_memory_network_delivers_validates_and_injects_faults() -> None:
    known = {"env", "a0", "a1", "a2"}.__contains__
    net = MemoryNetwork(known)
    a0, a1, a2 = (net.node(n) for n in ("a0", "a1", "a2"))
    net.connect_all()
    for k in range(3):
        assert a0.send("a1", "HB", epoch=k, leader=-1)
    assert a1.poll(1000) == []  # nothing moves until delivered; poll never waits
    assert net.duplicate(where(type="HB", dst="a1")) == 3
    assert net.reorder(where(dst="a1")) == 6
    assert net.drop(lambda e: e is net.in_flight[0]) == 1
    assert net.deliver() == 5
    assert [m["epoch"] for m in a1.poll(0)] == [2, 1, 1, 0, 0]
    assert a1.stats.rx_msgs["HB"] == 5 and a0.stats.tx_msgs["HB"] == 3
    # frames are validated on receipt, as on a socket: a forged sender is dropped and counted
    net.in_flight.append(
        Envelope("a0", "a1", "HB", [bytes(f) for f in encode("HB", "a2", epoch=0, leader=-1)])
    )
    net.deliver()
    assert a1.poll(0) == [] and a1.stats.dropped["unknown_sender"] == 1
    # a killed node: its messages are lost, sends to it fail at once, its peers see the link drop
    a0.send("a2", "HB", epoch=9, leader=-1)
    net.kill("a2")
    assert net.find() == [] and not a0.send("a2", "HB", epoch=0, leader=-1)
    assert a0.stats.send_fail["unreachable"] == 1
    assert a0.link_events == [("a2", False)] and a1.link_events == [("a2", False)]
    a2 = net.restart("a2")
    assert a0.link_events[-1] == ("a2", True) and a2.link_events == []
    assert (
        a0.send("a2", "HB", epoch=1, leader=-1)
        and net.deliver() == 1
        and a2.poll(0)[0]["epoch"] == 1
    )
    # a partition cuts both ways until healed
    net.partition("a1")
    assert not a0.send("a1", "HB", epoch=0, leader=-1) and not a1.send(
        "a0", "HB", epoch=0, leader=-1
    )
    assert a1.link_events[-2:] == [("a0", False), ("a2", False)]
    net.heal("a1")
    assert a1.send("a0", "HB", epoch=0, leader=-1)


def test_streamed_rounds_equal_the_reference_and_renew_their_subscriptions(swarm_factory) -> None:
    """The first loss elects the lowest observing agent, whose first round GATHERs; from then on
    every agent streams its steps, rounds need no GATHER, subscriptions are renewed at half-life,
    and every reconstruction and action equals the in-process reference."""
    sw = swarm_factory()
    sw.step()
    sw.step(blind=[2])
    a0 = sw.agents[0]
    assert sw.views() == {View.of(1, 0)} and a0.coord is not None
    assert a0.node.stats.tx_msgs["GATHER"] == N - 1
    until = [a.sync.stream[3] for a in sw.agents[1:]]
    for t in range(2, 16):  # agent 2 blind throughout, others now and then
        sw.step(blind=[2] + ([t % N] if t % 3 == 0 and t % N != 0 else []))
    assert a0.node.stats.tx_msgs["GATHER"] == N - 1  # no GATHER after the first round
    assert a0.counts["rounds"] == 15 and a0.counts["rounds_without_gather"] == 14
    pushes = sum(a.counts["pushes"] for a in sw.agents)
    assert pushes == a0.counts["pushes_received"] == 14 * (N - 1)
    assert a0.node.stats.tx_msgs["STREAM"] >= 2 * (N - 1)
    assert all(
        a.sync.stream[0] == "a0" and a.sync.stream[3] > u + 8
        for a, u in zip(sw.agents[1:], until, strict=True)
    )
    assert (
        sum(a.counts["lost_broadcast"] for a in sw.agents) == 1
    )  # only the first loss, before anyone led
    assert sw.check_reference() == 15 + 3
    assert (
        a0.node.stats.tx_msgs.get("LOST", 0) == 0
        and sw.agents[2].node.stats.tx_msgs["LOST"] == N - 1
    )


def test_election_stale_epochs_and_a_deposed_coordinator(swarm_factory) -> None:
    """Agents 0 and 1 blind: the lowest observing agent (2) claims epoch 3, the first that names
    it (epoch e belongs to agent (e - 1) mod 6). Cut off, it is replaced by the lowest observing
    live agent (1) in epoch 8, the first above 3 that names agent 1; its epoch-3 COORD, delivered
    late, is dropped as stale, and once healed it learns the newer view, steps down and tells the
    others so."""
    sw = swarm_factory()
    stale: list[Envelope] = []
    sw.begin(blind=[0, 1])
    sw.settle(before=lambda net: stale.extend(net.find(where(type="COORD", src="a2", dst="a3"))))
    sw.end()
    assert sw.views() == {View.of(3, 2)} and sum(a.counts["claims"] for a in sw.agents) == 1
    assert sw.agents[2].coord is not None and len(stale) == 1
    sw.step()
    assert sw.check_reference() == 2  # rows for agents 0 and 1 at step 0
    sw.net.partition("a2")
    sw.settle()
    sw.begin(blind=[0])
    sw.settle()
    assert (
        not sw.env.waiting and 2 not in sw.env.reachable
    )  # its STEP could not be sent; nobody is late
    actions = sw.end()
    others = [a for a in sw.agents if a.i != 2]
    assert {a.view for a in others} == {View.of(8, 1)} and sw.agents[1].counts["claims"] == 1
    # the new coordinator's cache is empty and agent 2 is unreachable: its column is missing from
    # the window
    row = sw.recons(0)[2]
    assert np.array_equal(row, sw.replay(2, hide=[(2, 0), (2, 1), (2, 2)])[0])
    sw.check_round(1, 2, hide=[(2, 0), (2, 1), (2, 2)])
    assert np.array_equal(actions[0], sw.agents[0].actor.act(row, 0))
    # the old claim arrives now: stale, dropped, and its sender is told the newer view
    sw.net.heal("a2")
    a3 = sw.agents[3]
    sw.net.in_flight.append(stale[0])
    sw.settle()
    assert a3.counts["stale_epoch"] == 1 and a3.node.stats.dropped["stale_epoch"] == 1
    assert sw.views() == {View.of(8, 1)}
    a2 = sw.agents[2]
    assert a2.coord is None and a2.counts["stepped_down"] == 1
    assert a2.counts["step_down_notices"] == 1
    # the swarm goes on under the new coordinator, agent 2 included (it never got step 2)
    sw.step(blind=[4])
    assert np.array_equal(sw.recons(4)[3], sw.replay(3, hide=[(2, 2)])[4])
    sw.check_round(1, 3, hide=[(2, 2)])
    assert sw.agents[1].coord.rounds_started == 2


def test_coordinator_lost_mid_round(swarm_factory) -> None:
    """The coordinator dies while its round waits for a streamed step: the blind agent broadcasts
    its loss, the lowest observing live agent claims the next epoch and reconstructs without the
    dead one; and a blind agent whose RECON never comes acts on hold-last at its deadline."""
    sw = swarm_factory()
    sw.step(blind=[1])
    assert sw.views() == {View.of(1, 0)}
    sw.begin(blind=[3])
    late = where(type="HISTORY", src="a4", dst="a0")
    sw.settle(match=lambda e: not late(e))
    a0 = sw.agents[0]
    assert [r.state for r in a0.coord.rounds.values()] == ["done", "gather"]
    assert 3 in sw.env.waiting and sw.agents[3].awaiting == (0, 1)
    sw.net.kill("a0")
    sw.dead.add(0)
    sw.settle()
    assert not sw.env.waiting
    sw.end()
    assert sw.views() == {View.of(2, 1)}
    a1, a3 = sw.agents[1], sw.agents[3]
    assert (
        a3.counts["leader_lost"] == 1
        and a3.counts["lost_broadcast"] == 1
        and a1.counts["claims"] == 1
    )
    assert sw.kinds(3)[1] == "world-model"
    assert np.array_equal(sw.recons(3)[1], sw.replay(1, hide=[(0, 0), (0, 1)])[3])
    sw.check_round(1, 1, hide=[(0, 0), (0, 1)])
    # the next blind agent's RECON is lost: it waits until its deadline, then acts on hold-last
    sw.begin(blind=[5])
    sw.settle(match=lambda e: e.type != "RECON")
    assert sw.net.drop(where(type="RECON", dst="a5")) == 1
    a5 = sw.agents[5]
    assert sw.env.waiting == {5} and a5.awaiting == (0, 2)
    sw.advance(0.5 * sw.settings.deadline_s("recon"))
    assert sw.env.waiting == {5}
    sw.advance(0.5 * sw.settings.deadline_s("recon") + 1e-6)
    assert not sw.env.waiting and a5.counts["recon_miss"] == 1 and sw.kinds(5)[2] == "fallback"
    actions = sw.end()
    assert np.array_equal(actions[5], a5.actor.act(sw.env.records[1]["obs"][5], 5))


def test_partial_gather_reconstructs_at_the_deadline(swarm_factory) -> None:
    """One agent never answers the GATHER (its HISTORY is held): the coordinator reconstructs with
    the others' at the gather deadline, counts the answer that comes afterwards as late, and asks
    that agent again in the next round, which then equals the reference."""
    sw = swarm_factory(stream_steps=0)
    sw.step()
    sw.begin(blind=[2])
    held = where(type="HISTORY", src="a4")
    sw.settle(match=lambda e: not held(e))
    a0, a2 = sw.agents[0], sw.agents[2]
    assert a0.coord is not None and len(sw.net.find(held)) == 1
    assert sw.env.waiting == {2} and not sw.recons(2)
    sw.advance(0.99 * sw.settings.deadline_s("gather"), match=lambda e: not held(e))
    assert sw.env.waiting == {2}  # not before the deadline
    sw.advance(0.02 * sw.settings.deadline_s("gather"), match=lambda e: not held(e))
    assert (
        not sw.env.waiting and a0.counts["rounds_partial"] == 1 and a2.counts["recon_received"] == 1
    )
    sw.settle()  # the held answer arrives after the round
    assert a0.counts["history_late"] == 1
    sw.end()
    assert np.array_equal(sw.recons(2)[1], sw.replay(1, hide=[(4, 0), (4, 1)])[2])
    sw.check_round(0, 1, hide=[(4, 0), (4, 1)])
    sw.step(blind=[2])
    assert a0.coord.rounds[(0, 2)].asked[4] == (
        0,
        0,
    )  # its whole window again: nothing of it was cached
    assert np.array_equal(sw.recons(2)[2], sw.replay(2)[2])
    sw.check_round(0, 2)
    assert a0.node.stats.tx_msgs["GATHER"] == 2 * (N - 1)


def test_duplicated_and_reordered_messages_change_nothing(swarm_factory) -> None:
    """Every HISTORY, RECON, ACTION and LOST is duplicated, and each batch of them reversed, at
    every delivery: the duplicates are counted and dropped, and the actions and reconstructions are
    the reference's, as without them."""
    sw = swarm_factory()
    dups = {"HISTORY": 0, "RECON": 0, "ACTION": 0, "LOST": 0}

    def chaos(net: MemoryNetwork) -> None:
        for kind in dups:
            dups[kind] += net.duplicate(where(type=kind))
        net.reorder(lambda e: e.type in dups)

    for t, blind in enumerate([[], [3], [3, 5], [0], [], [1, 2, 4], [4]]):
        sw.step(blind=blind, before=chaos)
        assert sw.kinds(3)[t] == ("world-model" if 3 in blind else "obs")
    assert all(v > 0 for v in dups.values()), dups
    assert sw.check_reference() == 1 + 2 + 1 + 3 + 1
    a_c = next(a for a in sw.agents if a.coord is not None)
    assert sum(a.counts["recon_late"] for a in sw.agents) == dups["RECON"]
    assert sw.env.counts["late_actions"] == dups["ACTION"]
    assert a_c.counts["history_late"] + a_c.counts["pushes_received"] > 0
    assert sum(a.counts["act_world-model"] for a in sw.agents) == 8


def test_world_model_node_serves_the_rounds(swarm_factory) -> None:
    """With the world model on its own node, the coordinator's windows go there and come back as the
    reference."""
    sw = swarm_factory(wm_node=True)
    for blind in ([], [1], [1, 4], [5]):
        sw.step(blind=blind)
    assert sw.wm.counts["requests"] == 3
    assert sw.agents[0].counts.get("wm_node_timeout", 0) == 0
    assert sw.check_reference() == 4
