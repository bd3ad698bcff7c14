"""Issue 18's protocol defects, driven step by step in memory (``test_protocol_memory.Swarm``):
lost messages recovered within the step, a silent world-model node noticed within one round, a
restarted agent that learns the view before it may claim, and a forged epoch at the top of its
range that crashes nobody. Each of these failed before the fix.
"""

from __future__ import annotations

from pathlib import Path

import msgpack
import numpy as np
import pytest
from test_protocol_memory import Swarm

from rmio.agents.agent import Agent
from rmio.runtime import wire
from rmio.runtime.membership import View
from rmio.runtime.memory import Envelope, where

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def swarm_factory(bundle: Path, tmp_path: Path):
    made: list[Swarm] = []

    def make(**kw: object) -> Swarm:
        made.append(Swarm(bundle, tmp_path / f"run{len(made)}", **kw))
        return made[-1]

    yield make
    for s in made:
        s.close()


def test_lost_step_action_and_recon_are_resent_within_the_step(swarm_factory) -> None:
    """A lost STEP, a lost ACTION and a lost RECON: the env host sends the step again, the agent
    that had acted answers with its action again, the blind agent repeats its loss report and the
    coordinator answers it from the finished round. No step waits for its deadline, and every
    action and reconstruction is still the in-process reference's."""
    sw: Swarm = swarm_factory(resend_ms=25.0)
    sw.step(blind=[2])  # elects a0
    # a STEP lost on its way to a3
    sw.begin()
    assert sw.net.drop(where(type="STEP", dst="a3")) == 1
    sw.settle()
    assert sw.env.waiting == {3}
    sw.env.resend()
    sw.settle()
    assert not sw.env.waiting
    sw.end()
    # an ACTION lost on its way from a4: the repeated STEP is answered with the same action
    sw.begin()
    sw.settle(match=lambda e: not (e.type == "ACTION" and e.src == "a4"))
    assert sw.net.drop(where(type="ACTION", src="a4")) == 1 and sw.env.waiting == {4}
    sw.env.resend()
    sw.settle()
    assert not sw.env.waiting and sw.agents[4].counts["action_resends"] == 1
    sw.end()
    # a RECON lost on its way to the blind a5: its repeated loss report gets it again
    sw.begin(blind=[5])
    sw.settle(match=lambda e: e.type != "RECON")
    assert sw.net.drop(where(type="RECON", dst="a5")) == 1 and sw.env.waiting == {5}
    sw.advance(sw.settings.resend_s())
    assert not sw.env.waiting
    assert sw.agents[5].counts["lost_resends"] == 1 and sw.agents[0].counts["recon_resent"] == 1
    sw.end()
    assert sw.check_reference() == 2


def test_a_silent_world_model_node_costs_one_round(swarm_factory) -> None:
    """The node stops answering while sends to it still succeed (ZeroMQ queueing for a dead peer,
    a datagram into the void): the first round waits the world-model deadline and replays
    locally; the rounds after it replay locally at once instead of each waiting again."""
    sw: Swarm = swarm_factory(wm_node=True)
    sw.step(blind=[1])
    assert sw.wm.counts["requests"] == 1
    silent = where(type="WM_REQ")
    sw.begin(blind=[1])
    sw.settle(before=lambda net: net.drop(silent))
    assert sw.env.waiting == {1}
    sw.advance(sw.settings.deadline_s("wm") + 1e-6, before=lambda net: net.drop(silent))
    assert not sw.env.waiting
    sw.end()
    for _ in range(4):  # no clock moves: each of these rounds must finish at once
        sw.step(blind=[1], before=lambda net: net.drop(silent))
    a0 = sw.agents[0]
    assert a0.counts["wm_node_timeout"] == 1 and a0.counts["wm_node_skipped"] == 4
    assert sw.check_reference() == 6


def test_a_restarted_agent_learns_the_view_before_it_claims(swarm_factory) -> None:
    """The coordinator (a0, epoch 1) is killed; the survivors elect a1 (epoch 2). a0 restarts and
    its first STEP finds it blind before it has heard anyone: before the fix it claimed epoch 1
    again on its own. Now it waits until it has heard its peers, then follows epoch 2; no epoch is
    ever claimed twice."""
    sw: Swarm = swarm_factory()
    sw.step(blind=[3])
    assert sw.views() == {View.of(1, 0)}
    sw.net.kill("a0")
    sw.dead.add(0)
    sw.settle()
    sw.step(blind=[3])
    assert sw.views() == {View.of(2, 1)}
    node = sw.net.restart("a0")
    sw.agents[0] = Agent(0, sw.settings, node, clock=sw.clock)
    sw.dead.discard(0)
    a0 = sw.agents[0]
    with_env = lambda e: {e.src, e.dst} == {"a0", "env"}  # noqa: E731
    _hello(a0, "env")  # it greets the env host first
    sw.settle(match=with_env)
    sw.begin(blind=[0, 3])
    sw.settle(match=with_env)  # its STEP gets through, nothing from its peers yet
    assert a0.counts["claims"] == 0 and a0.counts["claims_deferred"] >= 1
    for peer in a0.peers:  # its greeting (Agent._greet), and everything else, now arrives
        _hello(a0, peer)
    sw.settle()
    sw.end()
    assert sw.views() == {View.of(2, 1)} and a0.counts["claims"] == 0
    from rmio.runtime.journal import claim_summary, read_claims

    summary = claim_summary(sw.settings.out_dir)
    assert [c[0] for c in read_claims(sw.settings.out_dir)] == [1, 2]
    assert summary["reused_epochs"] == 0 and summary["two_coordinator_epochs"] == 0


def _hello(agent: Agent, peer: str) -> None:
    """What Agent._greet sends (protocol 2 carried the incarnation as a HELLO field)."""
    old = {"inc": agent.inc} if wire.PROTOCOL_VERSION < 3 else {}
    agent.send(peer, "HELLO", role="agent", epoch=agent.view.epoch, leader=agent.view.leader, **old)


def _forged_coord(sender: str, inc: int, epoch: int, leader: int) -> list[bytes]:
    """A COORD as the running protocol version would carry it, with a field no encoder makes."""
    header = {"v": wire.PROTOCOL_VERSION, "t": "COORD", "src": sender}
    if wire.PROTOCOL_VERSION >= 3:
        header.update(inc=inc, to=0)
    header.update(epoch=epoch, leader=leader, arr=[])
    return [msgpack.packb(header)]


@pytest.mark.parametrize("epoch", [(1 << 53) - 1, "top"])
def test_an_epoch_at_the_top_of_its_range_crashes_nobody(swarm_factory, epoch: object) -> None:
    """A COORD at epoch 2^53 - 1 (the encoder's limit) used to pass validation; when its sender
    died, each agent that took over computed 2^53, the encoder refused it and the error killed the
    agent. Now such an epoch is refused on arrival; the highest valid one is adopted, and the
    claim that would leave the range is refused and counted, never raised."""
    sw: Swarm = swarm_factory()
    sw.step()
    top = wire.MAX_COUNTER - 1 if hasattr(wire, "MAX_COUNTER") else (1 << 53) - 1
    forged = (1 << 53) - 1 if epoch != "top" else top - (top - 6) % 6  # an epoch of agent 5
    a5 = sw.agents[5].node
    for i in range(5):
        frames = _forged_coord("a5", getattr(a5, "inc", 0), forged, 5)
        sw.net.in_flight.append(Envelope("a5", f"a{i}", "COORD", frames))
    sw.settle()
    sw.net.kill("a5")
    sw.dead.add(5)
    sw.settle()
    sw.begin(blind=[2])
    sw.settle()
    sw.advance(sw.settings.deadline_s("recon") + 1e-6)
    assert not sw.env.waiting
    sw.end()
    for a in sw.agents[:5]:
        assert a.counts.get("internal_errors", 0) == 0
    if epoch == "top":  # adopted; the successor's claim is the last one the range allows
        from rmio.runtime.membership import next_epoch

        assert len(sw.views()) == 1 and forged < min(sw.views()).epoch < wire.MAX_COUNTER
        assert next_epoch(min(sw.views()).epoch, 0, 6) >= wire.MAX_COUNTER
    else:  # refused on arrival: the swarm elects as usual
        assert sum(a.node.stats.dropped["bad_field"] for a in sw.agents[:5]) == 5
        assert sw.views() == {View.of(1, 0)}
    assert np.isfinite(sw.env.records[-1]["actions"]).all()


def test_a_local_send_error_does_not_kill_a_live_coordinator(swarm_factory) -> None:
    """Agent 3's host refuses its sends for a while (a firewall's EPERM): its loss report cannot
    leave, but that says nothing about the coordinator, which stays alive in its view (before, a
    failed send marked the peer dead, which started a needless election). It acts on hold-last at
    its reconstruction deadline, and follows the same coordinator once its sends go through."""
    sw: Swarm = swarm_factory()
    sw.step(blind=[1])
    assert sw.views() == {View.of(1, 0)}
    sw.net.firewalled.add("a3")
    sw.begin(blind=[3])
    sw.settle()
    a3 = sw.agents[3]
    assert a3.node.stats.send_fail["error"] >= 1 and "a0" not in a3.live.down
    assert a3.counts["leader_lost"] == 0 and a3.counts["lost_broadcast"] == 0
    sw.advance(sw.settings.deadline_s("recon") + 1e-6)
    sw.end()
    assert sw.kinds(3)[1] == "fallback"
    sw.net.firewalled.discard("a3")
    sw.step(blind=[3])
    assert sw.kinds(3)[2] == "world-model" and sw.views() == {View.of(1, 0)}
    assert sum(a.counts["claims"] for a in sw.agents) == 1
