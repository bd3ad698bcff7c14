"""The agent's side of history sync: what it tells the coordinator about its own past.

Every agent, blind or not, answers a coordinator's ``GATHER`` from its ring (the observed flags,
its real observations and its actions of the asked steps), and while a coordinator holds a
subscription it streams each new step to it unasked, before acting, so that consecutive rounds
need no ``GATHER`` round trip. PROTOCOL.md ("Reconstruction round", "Streaming while loss goes on")
describes both.
"""

from __future__ import annotations

from rmio.coordinator.host import AgentHost
from rmio.runtime import timeline
from rmio.runtime.wire import Message


class HistorySync:
    """Pending GATHERs and the current stream subscription of one agent."""

    def __init__(self, agent: AgentHost) -> None:
        self.agent = agent
        self.pending: list[Message] = []
        """GATHERs for a step whose STEP has not reached us yet: answered when it does."""
        self.stream: tuple[str, int, tuple[int, int], int] | None = None
        """(coordinator, epoch, after (ep, t), until seq): stream our steps after ``after`` to
        it."""

    def push(self, ep: int, t: int) -> bool:
        """Stream step t (our observation or its absence, and a_{t-1}) to the coordinator we are
        subscribed to, if the subscription still holds; True when sent."""
        if self.stream is None:
            return False
        agent = self.agent
        leader, epoch, after, until = self.stream
        if (
            agent.seq > until
            or epoch != agent.view.epoch
            or leader != f"a{agent.view.leader}"
            or not agent.live.alive(leader, agent.clock())
        ):
            self.stream = None
            return False
        if (ep, t) <= after:
            return False
        seen, known, obs, act = agent.ring.serve_step(t)
        if not agent.send(
            leader,
            "HISTORY",
            {"obs": obs, "act": act},
            ep=ep,
            step=t,
            epoch=epoch,
            obs_from=t,
            act_from=max(0, t - 1),
            seen=seen,
            known=known,
            push=True,
        ):
            return False
        agent.counts["pushes"] += 1
        if timeline.ENABLED:
            timeline.mark("pushed", agent.seq)
        return True

    def on_stream(self, msg: Message) -> None:
        """A coordinator renews (``until`` = a later step) or ends (``until`` < 0) our
        subscription."""
        if msg["until"] < 0:
            self.stream = None
        elif (
            self.stream is not None and self.stream[0] == msg.src and self.stream[1] == msg["epoch"]
        ):
            self.stream = (msg.src, msg["epoch"], self.stream[2], msg["until"])
        else:
            # a renewal for a subscription we do not hold (we restarted): start from our next step
            self.stream = (msg.src, msg["epoch"], (self.agent.ep, self.agent.t), msg["until"])

    def on_gather(self, msg: Message) -> None:
        """A coordinator asks for steps obs_from/act_from..t (checked against our window), and may
        subscribe us to stream the steps after t."""
        agent = self.agent
        t, lo = msg["step"], min(msg["obs_from"], msg["act_from"])
        if not agent.near(msg["ep"], t) or t - lo > agent.l + 1 or lo > t:
            agent.node.count_drop("bad_range", f"gather {msg['ep']}/{lo}..{t}")
            return
        self.pending.append(msg)
        if msg["stream"] >= 0:  # stream the steps after this one; GATHER answers cover up to it
            self.stream = (msg.src, msg["epoch"], (msg["ep"], t), msg["stream"])
        elif self.stream is not None and self.stream[0] == msg.src:
            self.stream = None
        self.answer()

    def answer(self) -> None:
        """Answer every pending GATHER whose step we have received (up to exactly that step)."""
        agent = self.agent
        keep = []
        for msg in self.pending:
            ep, t = msg["ep"], msg["step"]
            if (ep, t) > (agent.ep, agent.t):
                if ep == agent.ep or ep == agent.ep + 1:
                    keep.append(msg)  # our step t has not arrived yet: answer when it does
                continue
            if ep != agent.ep:
                continue
            seen, known, obs, act = agent.ring.serve(msg["obs_from"], msg["act_from"], t)
            agent.send(
                msg.src,
                "HISTORY",
                {"obs": obs, "act": act},
                ep=ep,
                step=t,
                epoch=msg["epoch"],
                obs_from=msg["obs_from"],
                act_from=msg["act_from"],
                seen=seen,
                known=known,
                push=False,
            )
        self.pending = keep[-8:]
