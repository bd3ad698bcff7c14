"""The temporary coordinator's reconstruction rounds (Algorithm 2 lines 29-36, Fig. 6).

A round for step t starts when the coordinator learns that some agent is blind at t. It sends
every other live agent a GATHER naming the first window steps it lacks of that agent (its cache
persists across rounds, so a coordinator that stays in office asks each agent only for what
happened since the last round), waits for the HISTORY answers until the gather deadline, runs the
world-model step graph over the window (or, in incremental mode, continues its latent state from
the previous round when nothing was missed), and sends each blind agent its own reconstructed row.
Agents that did not answer in time count as lost in the window; a round never waits past its
deadline.

A GATHER also subscribes the agent to stream each new step to the coordinator for the next
``stream_steps`` env steps, as soon as it receives it (before it acts). While loss goes on, the
rounds that follow then find every agent's step t already cached or on its way, and need no
GATHER round trip: the critical path shrinks from four hops (LOST, GATHER, HISTORY, RECON) to two
(HISTORY, RECON).
"""

from __future__ import annotations

import logging
import os
import signal
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from rmio.coordinator.host import AgentHost
from rmio.runtime import timeline
from rmio.runtime.bundle import Manifest
from rmio.runtime.history import ActionCodec, WindowCache, replay_plan
from rmio.runtime.metrics import Samples
from rmio.runtime.models import LatentState, WorldModel, carries_state
from rmio.runtime.node import now_ns
from rmio.runtime.wire import MAX_COUNTER, Message, WireError

log = logging.getLogger(__name__)


@dataclass
class Round:
    ep: int
    t: int
    started: float
    started_ns: int
    deadline: float
    asked: dict[int, tuple[int, int]] = field(default_factory=dict)
    """agent -> (obs_from, act_from) requested."""
    waiting: set[int] = field(default_factory=set)
    """Agents whose step-t window the round waits for (asked, or streaming it unasked)."""
    have: set[int] = field(default_factory=set)
    """Those of them whose window is complete in the cache (it stays complete until the round
    ends)."""
    push_deadline: float = 0.0
    """When a streamed step still missing is asked for with a GATHER after all."""
    regather_at: float = float("inf")
    """When the GATHERs still unanswered are sent again (lossy links; ``resend_ms``)."""
    replied: set[int] = field(default_factory=set)
    lost: set[int] = field(default_factory=set)
    observed: set[int] = field(default_factory=set)
    state: str = "gather"
    """gather -> (wm: waiting for the node) -> done."""
    gathered_ns: int = 0
    recon: np.ndarray | None = None
    start: int = 0
    chain_start: int = 0
    rid: int = 0
    wm_deadline: float = 0.0
    request: tuple | None = None


@dataclass
class Chain:
    """Incremental mode: the latent state after step t of episode ep, computed from zeros at step
    start."""

    ep: int
    t: int
    start: int
    state: LatentState


def _claim_fault(out_dir: str, name: str) -> bool:
    """A one-shot fault fires in exactly one process of the run: the first to create its marker
    file."""
    path = Path(out_dir) / "faults" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
    except FileExistsError:
        return False
    return True


class Coordinator:
    def __init__(self, agent: AgentHost, manifest: Manifest) -> None:
        self.agent = agent
        self.settings = agent.settings
        self.manifest = manifest
        self.n = manifest.spec.n_agents
        self.l = manifest.history_window
        self.codec = ActionCodec.of(manifest.spec)
        self.cache = WindowCache(self.n, manifest.spec.obs_dim, self.codec, self.l)
        self.rounds: dict[tuple[int, int], Round] = {}
        self.chain: Chain | None = None
        self.samples = Samples()
        self.counts: Counter = agent.counts
        self.rounds_started = 0
        self._rid = 0
        self.use_node = self.settings.world_model == "node"
        self.stateful = carries_state(manifest)
        """False for a window graph (MARIE's): no latent state, in a WM_REP or between rounds."""
        self.incremental = self.settings.wm_mode == "incremental" and self.stateful
        """Continue the latent state between rounds (never without one: every round of a window
        graph reads its whole window)."""
        steps = self.settings.stream_steps
        self.stream_steps = 0 if self.settings.full_resync else (self.l if steps is None else steps)
        every = self.settings.resend_s()
        self.resend_s = min(every, 0.5 * self.settings.deadline_s("gather")) if every > 0 else 0.0
        """Unanswered GATHERs go again this often within a round (0: never)."""
        self.streaming: dict[int, int] = {}
        """agent -> the last global step (seq) it streams to us; for our current epoch."""
        self.stream_epoch = -1

    @property
    def wm(self) -> WorldModel:
        return self.agent.world_model()

    def close(self) -> None:
        self.rounds.clear()
        self.chain = None
        self.streaming.clear()

    def forget(self, j: int) -> None:
        """Agent j died or restarted: it no longer streams to us."""
        self.streaming.pop(j, None)

    # -- round lifecycle --------------------------------------------------------------------

    def on_loss(self, ep: int, t: int, j: int, now: float, retry: bool = False) -> None:
        r = self.rounds.get((ep, t))
        if r is None:
            r = self._start(ep, t, now)
        if r.state == "done":
            # a late report (its row was computed as lost), or a repeated one: our RECON was lost
            if j not in r.observed and (j not in r.lost or retry):
                r.lost.add(j)
                self.counts["recon_resent"] += int(retry)
                self._deliver_one(r, j)
            return
        r.lost.add(j)

    def _start(self, ep: int, t: int, now: float) -> Round:
        if ep != self.cache.ep or self.settings.full_resync:
            self.cache.reset(ep)
            self.chain = None
        r = Round(ep, t, now, now_ns(), now + self.settings.deadline_s("gather"))
        self.rounds[(ep, t)] = r
        for key in [k for k in self.rounds if k < (ep, t - 3)]:
            del self.rounds[key]
        self.rounds_started += 1
        self.counts["rounds"] += 1
        agent = self.agent
        if self.stream_epoch != agent.view.epoch:  # subscriptions name the epoch they were made in
            self.streaming.clear()
            self.stream_epoch = agent.view.epoch
        seq_t = self._seq_of(ep, t)
        r.push_deadline = now + 0.25 * (r.deadline - now)
        if self.resend_s > 0:
            r.regather_at = now + self.resend_s
        for j in range(self.n):
            if j == agent.i or f"a{j}" in agent.live.down:
                continue
            if self.cache.has(j, t):  # its step t was streamed before the round began
                self._renew(j, seq_t)
            elif self.streaming.get(j, -1) >= seq_t and (t == 0 or self.cache.has(j, t - 1)):
                r.waiting.add(j)  # only step t is missing, and it is on its way
                self._renew(j, seq_t)
            else:
                self._gather(r, j, seq_t)
        if not r.asked:
            self.counts["rounds_without_gather"] += 1
        kill_at = self.settings.kill_coordinator_at
        if (
            kill_at is not None
            and agent.seq >= kill_at
            and _claim_fault(self.settings.out_dir, "coordinator-kill")
        ):
            log.warning(
                "a%d: fault injection, coordinator SIGKILL mid-round at step %d", agent.i, agent.seq
            )
            os.kill(os.getpid(), signal.SIGKILL)
        return r

    def _seq_of(self, ep: int, t: int) -> int:
        """The env host's global step number of (ep, t): ours, or the next one if our STEP is still
        on its way."""
        return self.agent.seq + int((ep, t) > (self.agent.ep, self.agent.t))

    def _gather(self, r: Round, j: int, seq_t: int) -> None:
        obs_from, act_from = self.cache.need(j, r.t)
        until = seq_t + self.stream_steps if self.stream_steps > 0 else -1
        agent = self.agent
        if agent.send(
            f"a{j}",
            "GATHER",
            ep=r.ep,
            step=r.t,
            epoch=agent.view.epoch,
            obs_from=obs_from,
            act_from=act_from,
            stream=until,
        ):
            r.asked[j] = (obs_from, act_from)
            r.waiting.add(j)
            if until >= 0:
                self.streaming[j] = until
            else:
                self.streaming.pop(j, None)

    def _renew(self, j: int, seq_t: int) -> None:
        """Extend a subscription at half-life: one small message per agent every stream_steps / 2
        steps."""
        until = self.streaming.get(j, -1)
        if self.stream_steps > 0 and until - seq_t < self.stream_steps // 2:
            until = seq_t + self.stream_steps
            if self.agent.send(f"a{j}", "STREAM", epoch=self.agent.view.epoch, until=until):
                self.streaming[j] = until

    def own_step(self, ep: int, t: int, now: float) -> None:
        """Our own STEP arrived: a round that only waited for it can run now, before our actor
        does."""
        self.poll(now)

    # on_push and on_history only file what arrived: the agent's event loop polls the rounds once
    # after every batch of messages, so a wake-up that brings several pushes checks them once.

    def on_push(self, msg: Message, now: float) -> None:
        """A step streamed unasked: cache it; a blind step is also that agent's loss report."""
        f = msg.fields
        j, ep, t, epoch = int(msg.src[1:]), f["ep"], f["step"], f["epoch"]
        if epoch != self.agent.view.epoch or ep < self.cache.ep:
            self.counts["push_stale"] += 1
            self.agent.node.count_drop(
                "stale_epoch" if epoch != self.agent.view.epoch else "stale_step"
            )
            return
        act_from = t - 1 if t > 0 else 0
        seen, known = f["seen"], f["known"]
        if (
            f["obs_from"] != t
            or f["act_from"] != act_from
            or len(seen) != 1
            or len(known) != t - act_from
        ):
            raise WireError("bad_field", "a streamed HISTORY carries exactly its own step")
        if ep > self.cache.ep:
            self.cache.reset(ep)
            self.chain = None
        obs = msg.array("obs", (sum(seen), self.manifest.spec.obs_dim), "<f4")
        act = msg.array("act", (len(known), *self.codec.shape), self.codec.dtype.str)
        self.cache.put(j, t, act_from, t, seen, known, obs, act)
        self.counts["pushes_received"] += 1
        if timeline.ENABLED:
            timeline.mark("push_rx", self.agent.seq, j)
        if not seen[0]:
            self.agent.lost_reports.setdefault((ep, t), set()).add(j)
            self.on_loss(ep, t, j, now)

    def on_history(self, msg: Message, now: float) -> None:
        j = int(msg.src[1:])
        r = self.rounds.get((msg["ep"], msg["step"]))
        if (
            r is None
            or r.state != "gather"
            or j not in r.asked
            or j in r.replied
            or msg["epoch"] != self.agent.view.epoch
        ):
            self.counts["history_late"] += 1
            self.agent.node.count_drop("late")
            return
        obs_from, act_from = r.asked[j]
        if (msg["obs_from"], msg["act_from"]) != (obs_from, act_from):
            raise WireError("bad_field", "HISTORY answers another question")
        seen, known = msg["seen"], msg["known"]
        if len(seen) != r.t - obs_from + 1 or len(known) != r.t - act_from:
            raise WireError("bad_field", "HISTORY flags do not cover the asked steps")
        obs = msg.array("obs", (sum(seen), self.manifest.spec.obs_dim), "<f4")
        act = msg.array("act", (len(known), *self.codec.shape), self.codec.dtype.str)
        self.cache.put(j, obs_from, act_from, r.t, seen, known, obs, act)
        r.replied.add(j)
        (r.observed if seen[-1] else r.lost).add(j)

    def poll(self, now: float) -> None:
        """Run every round whose data is in (or whose deadline passed); time out world-model
        requests."""
        agent = self.agent
        for r in list(self.rounds.values()):
            if r.state == "done":
                continue
            if r.state == "gather":
                own_ready = (agent.ep, agent.t) >= (r.ep, r.t)
                # our own step never came: reconstruct without it
                if (own_ready and (self._complete(r) or now >= r.deadline)) or now >= r.deadline + (
                    r.deadline - r.started
                ):
                    self._compute(r, now)
                elif now >= r.push_deadline and r.push_deadline > 0:
                    self._pull_missing(r)
                elif now >= r.regather_at:
                    self._regather(r, now)
            elif r.state == "wm" and now >= r.wm_deadline:
                self.counts["wm_node_timeout"] += 1
                self.agent.wm_health.failed(now)
                self._finish_locally(r)

    def _regather(self, r: Round, now: float) -> None:
        """GATHERs unanswered after ``resend_s``: the question or its answer may be lost. The same
        question goes again (the agent answers it again; a second answer is dropped as late)."""
        r.regather_at = now + self.resend_s
        down = self.agent.live.down
        for j in sorted(set(r.asked) - r.replied):
            if f"a{j}" in down:
                continue
            obs_from, act_from = r.asked[j]
            agent = self.agent
            if agent.send(
                f"a{j}",
                "GATHER",
                ep=r.ep,
                step=r.t,
                epoch=agent.view.epoch,
                obs_from=obs_from,
                act_from=act_from,
                stream=self.streaming.get(j, -1),
            ):
                self.counts["gather_resends"] += 1

    def _complete(self, r: Round) -> bool:
        if len(r.have) == len(r.waiting):  # have is a subset of waiting
            return True
        down = self.agent.live.down
        missing = False
        for j in r.waiting - r.have:
            if f"a{j}" in down:
                continue
            if self.cache.has(j, r.t):
                r.have.add(j)
            else:
                missing = True
        return not missing

    def _pull_missing(self, r: Round) -> None:
        """A streamed step is overdue (a subscription lost in a restart or a race): ask for it."""
        r.push_deadline = 0.0
        seq_t = self._seq_of(r.ep, r.t)
        for j in sorted(r.waiting - set(r.asked)):
            if not self.cache.has(j, r.t) and f"a{j}" not in self.agent.live.down:
                self.counts["push_overdue"] += 1
                self._gather(r, j, seq_t)

    def next_deadline(self, now: float) -> float:
        """Seconds until the earliest deadline of a round still in progress (1 s when there is
        none)."""
        first = now + 1.0
        own = (self.agent.ep, self.agent.t)
        for r in self.rounds.values():
            if r.state == "gather":
                first = min(first, r.deadline if own >= (r.ep, r.t) else 2 * r.deadline - r.started)
                if r.push_deadline > 0:
                    first = min(first, r.push_deadline)
                first = min(first, r.regather_at)
            elif r.state == "wm":
                first = min(first, r.wm_deadline)
        return max(0.0, first - now)

    # -- reconstruction ---------------------------------------------------------------------

    def _compute(self, r: Round, now: float) -> None:
        agent = self.agent
        if timeline.ENABLED:
            timeline.mark("compute", agent.seq)
        r.gathered_ns = now_ns()
        self.samples.add("gather_us", (r.gathered_ns - r.started_ns) / 1e3)
        if not self._complete(r):
            self.counts["rounds_partial"] += 1
        me = agent.i
        obs_from, act_from = self.cache.need(me, r.t)
        seen, known, obs, act = agent.ring.serve(obs_from, act_from, r.t)
        self.cache.put(me, obs_from, act_from, r.t, seen, known, obs, act)
        if (agent.ep, agent.t) >= (r.ep, r.t):
            (r.observed if seen[-1] else r.lost).add(me)
        r.observed |= {j for j in range(self.n) if self.cache.obs[j].get(r.t) is not None}
        chain = self.chain
        chain_t = chain.t if chain is not None and chain.ep == r.ep else None
        cont, r.start = replay_plan(r.t, self.l, chain_t, self.incremental)
        r.chain_start = chain.start if cont and chain is not None else r.start
        obs_w, act_w, masks, complete = self.cache.window(r.t, r.start)
        state = chain.state if cont and chain is not None else None
        self.counts["rounds_continued" if cont else "rounds_window"] += 1
        if not complete:
            self.counts["rounds_incomplete_window"] += 1
        r.request = (obs_w, act_w, masks, state, complete)
        if self.use_node:
            if not self.agent.wm_health.usable(now):  # a dead node costs no further round
                self.counts["wm_node_skipped"] += 1
            elif self._ask_node(r, now):
                return
        self._finish_locally(r)

    def _ask_node(self, r: Round, now: float) -> bool:
        obs_w, act_w, masks, state, _ = r.request
        self._rid = self._rid % (MAX_COUNTER - 1) + 1
        r.rid = self._rid
        arrays = {"obs": obs_w, "act": act_w, "mask": masks}
        if state is not None:
            arrays.update(h=state.h[0], z=state.z[0])
        if not self.agent.send(
            "wm", "WM_REQ", arrays, ep=r.ep, step=r.t, rid=r.rid, cont=state is not None
        ):
            self.counts["wm_node_unreachable"] += 1
            self.agent.wm_health.failed(now)
            return False
        r.state = "wm"
        r.wm_deadline = now + self.settings.deadline_s("wm")
        return True

    def on_wm_reply(self, msg: Message, now: float) -> None:
        r = next((x for x in self.rounds.values() if x.state == "wm" and x.rid == msg["rid"]), None)
        self.agent.wm_health.heard()
        if r is None or not msg["ok"]:
            self.counts["wm_reply_late" if r is None else "wm_reply_failed"] += 1
            if r is not None:
                self._finish_locally(r)
            return
        spec = self.manifest.spec
        recon = msg.array("obs", (self.n, spec.obs_dim), "<f4")
        state = None  # a window graph's WM_REP carries no state
        if self.stateful:
            h = msg.array("h", (self.n, self.manifest.deter), "<f4")
            z = msg.array("z", (self.n, self.manifest.stoch), "<f4")
            state = LatentState(h[None].copy(), z[None].copy())
        self.samples.add("wm_us", float(msg["us"]))
        self._finish(r, recon.copy(), state)

    def _finish_locally(self, r: Round) -> None:
        obs_w, act_w, masks, state, _ = r.request
        start = now_ns()
        new_state, recons = self.wm.replay(obs_w, act_w, masks, state)
        self.samples.add("wm_us", (now_ns() - start) / 1e3)
        self._finish(r, recons[-1], new_state)

    def _finish(self, r: Round, recon: np.ndarray, state: LatentState | None) -> None:
        complete = r.request[4] if r.request is not None else False
        # continue next time only from a window nothing was missing in
        if self.incremental and state is not None:
            self.chain = Chain(r.ep, r.t, r.chain_start, state) if complete else None
        r.recon = recon
        r.state = "done"
        r.request = None
        # the other blind agents first: a blind coordinator acting on its own row runs its actor
        # inline
        me = self.agent.i
        for j in sorted(r.lost, key=lambda j: (j == me, j)):
            self._deliver_one(r, j)
        self.samples.add("coord_round_us", (now_ns() - r.started_ns) / 1e3)
        if timeline.ENABLED:
            timeline.mark("recon_sent", self.agent.seq)

    def _deliver_one(self, r: Round, j: int) -> None:
        assert r.recon is not None
        row = np.ascontiguousarray(r.recon[j], np.float32)
        agent = self.agent
        if j == agent.i:
            agent.deliver_recon(r.ep, r.t, row.copy(), r.chain_start, agent.view.epoch)
            self.counts["recon_self"] += 1
        elif agent.send(
            f"a{j}",
            "RECON",
            {"obs": row},
            ep=r.ep,
            step=r.t,
            epoch=agent.view.epoch,
            start=r.chain_start,
        ):
            self.counts["recon_sent"] += 1
