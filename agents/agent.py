"""The agent process: its own ONNX actor on its own observation, and the loss-handling protocol
around it.

On a normal step the agent acts on what the env host sent it and talks to nobody (beyond
heartbeats). When its observation is lost it tells the coordinator (or, with none alive, every
agent, which starts an election), waits until its reconstruction deadline for a RECON, and acts on
the reconstruction, or on hold-last if none came. Whatever its own state, it serves its history
ring to the coordinator, and when it is the coordinator it runs reconstruction rounds
(rmio.coordinator.service). PROTOCOL.md describes every message and deadline.
"""

from __future__ import annotations

import logging
import os
import signal
import time
from collections import Counter
from collections.abc import Callable

import numpy as np

from rmio.agents.election import ElectionMixin
from rmio.agents.liveness import LivenessMixin
from rmio.agents.records import save_records
from rmio.agents.sync import HistorySync
from rmio.coordinator.service import Coordinator
from rmio.runtime import timeline
from rmio.runtime.bundle import load_manifest
from rmio.runtime.history import ActionCodec, HistoryRing
from rmio.runtime.membership import Liveness, ServerHealth, View
from rmio.runtime.metrics import Samples
from rmio.runtime.models import ActorRunner, WorldModel, world_model_runner
from rmio.runtime.node import NodeBase, now_ns
from rmio.runtime.settings import SwarmSettings
from rmio.runtime.stop import Stop
from rmio.runtime.wire import MAX_COUNTER, Message, WireError

log = logging.getLogger(__name__)


class Agent(LivenessMixin, ElectionMixin):
    def __init__(
        self,
        index: int,
        settings: SwarmSettings,
        node: NodeBase,
        inc: int = 0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.i, self.name, self.settings, self.node, self.inc = (
            index,
            f"a{index}",
            settings,
            node,
            inc,
        )
        self.clock = clock
        """Every deadline and liveness time is read from this (a test drives it by hand)."""
        scenario = settings.env.get("family", "") + "/" + settings.env.get("scenario", "")
        self.manifest = load_manifest(settings.bundle, expect_scenario=scenario)
        self.spec = self.manifest.spec
        if self.spec.n_agents != settings.n_agents or not 0 <= index < settings.n_agents:
            raise ValueError(f"agent {index} does not fit a bundle of {self.spec.n_agents} agents")
        self.actor = ActorRunner(settings.bundle, self.manifest)
        self.actor_state = self.actor.initial_state(1)
        """A recurrent actor's hidden state (None if stateless): advanced by every action this
        agent takes, on what it acted on (its observation, a reconstruction, a fill), and zeroed
        when an episode starts, as rmio.evaluation.reference does."""
        self.codec = ActionCodec.of(self.spec)
        self.l = self.manifest.history_window
        self.ring = HistoryRing(self.l + 2, self.spec.obs_dim, self.codec)
        self.peers = [f"a{j}" for j in range(self.spec.n_agents) if j != index]
        self.live = Liveness(settings.heartbeat_ms / 1000.0, settings.liveness)
        self.view = View()
        self.max_epoch = 0
        self.coord: Coordinator | None = None
        self.ep, self.t, self.seen, self.avail = -1, -1, True, None
        self.step_rx_ns = 0
        self.awaiting: tuple[int, int] | None = None
        self.await_deadline = 0.0
        self.lost_reports: dict[tuple[int, int], set[int]] = {}
        self.sync = HistorySync(self)
        self.peer_inc: dict[str, int] = {}
        self.last_env = clock()
        self.samples = Samples()
        self.counts: Counter = Counter()
        self.kill_at = {seq for agent, seq in settings.kill_agents if agent == index}
        self.records: list[tuple] = []
        self.running = True
        self.cpu_start = time.process_time()
        self.seq = -1
        self.started = clock()
        self._learned = False
        """Set once this incarnation has learned the view (ElectionMixin._view_learned)."""
        self.last_action: tuple[int, int, dict, np.ndarray] | None = None
        """(ep, t, fields, action) of our last ACTION: a repeated STEP is answered with it."""
        self.lost_retry_at = float("inf")
        self.wm_health = ServerHealth()
        self._live_due = 0.0
        self._wm: WorldModel | None = None
        if settings.recon == "world-model":
            # loaded up front: any agent may have to coordinate within a step deadline
            self.world_model()

    def world_model(self) -> WorldModel:
        if self._wm is None:  # RMIOv2's step graph, or a window graph (MARIE's)
            self._wm = world_model_runner(self.settings.bundle, self.manifest)
        return self._wm

    # -- the event loop ---------------------------------------------------------------------

    def run(self) -> None:
        self.cpu_start = time.process_time()
        self._greet()
        while self.running:
            self._pump(self._timeout(self.clock()))
            try:
                self.tick(self.clock())
            except Stop:
                raise
            except Exception:  # no timer error may take the agent down: counted and reported
                log.exception("%s: error in a timer", self.name)
                self.counts["internal_errors"] += 1
        if self.settings.record:
            save_records(
                self.settings.out_dir, f"{self.name}-{self.inc}", self.records, self.spec.obs_dim
            )

    def _pump(self, timeout_s: float) -> None:
        """Wait for traffic (at most ``timeout_s``) and handle it."""
        msgs = self.node.poll(1000.0 * timeout_s)
        self.receive(msgs, self.clock())

    def receive(self, msgs: list[Message], now: float) -> None:
        """Handle the link events and messages of one wake-up; a message that makes no sense is
        dropped."""
        self._links(now)
        for msg in msgs:
            try:
                self._handle(msg, now)
            except WireError as exc:
                self.node.count_drop(exc.reason, str(exc))

    def _timeout(self, now: float) -> float:
        t = self._live_due - now
        if self.awaiting is not None:
            t = min(t, self.await_deadline - now, self.lost_retry_at - now)
        if self.coord is not None:
            t = min(t, self.coord.next_deadline(now))
        return max(0.0, min(t, 0.5))

    def send(
        self, to: str, msg_type: str, arrays: dict[str, np.ndarray] | None = None, **fields: object
    ) -> bool:
        """Send to a peer; a send that fails because the peer is unreachable marks it down at once
        (a local error, such as a firewall's EPERM, says nothing about the peer)."""
        ok = self.node.send(to, msg_type, arrays, **fields)
        if ok:
            self.live.sent(to, self.clock())
        elif to.startswith("a") and self.node.last_fail == "unreachable":
            if to in self.live.last_heard:
                self._peer_down(to)
            else:
                self.live.mark_dead(to)  # never heard of: no need to wait for its view
        return ok

    def tick(self, now: float) -> None:
        """Timers, after every wake-up: heartbeats and expiries, the reconstruction deadline,
        rounds."""
        if now >= self._live_due:
            self._liveness(now)
            # Heartbeat and expiry bookkeeping is O(peers): run it when something is due (hearing or
            # sending only moves deadlines later), and at least every half interval as a backstop.
            self._live_due = now + min(
                self.live.next_deadline(self.peers, now), 0.5 * self.live.interval_s
            )
        if self.awaiting is not None and now >= self.await_deadline:
            self.counts["recon_miss"] += 1
            ep, t = self.awaiting
            self._act(ep, t, self.ring.latest_obs(), "fallback")
        elif self.awaiting is not None and now >= self.lost_retry_at:
            # no RECON yet: our loss report or its answer may be lost; the coordinator
            # de-duplicates by step and answers a finished round again
            self.counts["lost_resends"] += 1
            self.lost_retry_at = now + self.settings.resend_s()
            self._report_loss(*self.awaiting, retry=True)
        if self.coord is not None:
            self.coord.poll(now)
        if now - self.last_env > self.settings.orphan_timeout_s:
            raise Stop("env host silent")

    # -- dispatch ---------------------------------------------------------------------------

    def _handle(self, msg: Message, now: float) -> None:
        src = msg.src
        self.live.heard(src, now)
        if src == "env":
            self.last_env = now
        handler = _HANDLERS.get((src[:1] if src.startswith("a") else src, msg.type))
        if handler is None:
            self.node.count_drop("unexpected", f"{msg.type} from {src}")
            return
        try:
            handler(self, msg, now)
        except (WireError, Stop):
            raise
        # a bug must not take the agent down mid-episode; it is counted and reported
        except Exception:
            log.exception("%s: error handling %s from %s", self.name, msg.type, src)
            self.counts["internal_errors"] += 1

    # -- env host -------------------------------------------------------------------------

    def _on_step(self, msg: Message, now: float) -> None:
        ep, t = msg["ep"], msg["step"]
        if (ep, t) <= (self.ep, self.t):
            last = self.last_action
            if last is not None and (ep, t) == last[:2]:
                # the env host resends a step whose ACTION it has not got: send it again
                self.counts["action_resends"] += 1
                self.send("env", "ACTION", {"action": last[3]}, **last[2])
            else:
                self.node.count_drop("stale_step")
            return
        obs = msg.array("obs", (self.spec.obs_dim,), "<f4").copy() if msg["seen"] else None
        avail = msg.array("avail", (self.spec.action_dim,), "|b1") if self.spec.discrete else None
        if msg["seq"] in self.kill_at:
            log.warning("%s: fault injection, SIGKILL at step %d", self.name, msg["seq"])
            os.kill(os.getpid(), signal.SIGKILL)
        # a new step overtook an unanswered loss: the env host used its default
        if self.awaiting is not None:
            self.counts["recon_overtaken"] += 1
            self.ring.put_action(self.awaiting[1], self.codec.default())
            self.awaiting = None
        if ep != self.ep:
            self.ring.reset(ep)
            self.actor_state = self.actor.initial_state(1)
        elif t > self.t + 1:  # STEPs that never reached us: observation losses, default actions
            self.counts["steps_missed"] += t - self.t - 1
            for h in range(self.t + 1, t):
                self.ring.put_obs(h, None, False)
                self.ring.put_action(h, self.codec.default())
        if ep == self.ep and msg["dflt"] and t > 0:
            self.ring.put_action(
                t - 1, self.codec.default()
            )  # the env host applied its default instead
        self.ep, self.t, self.seen, self.avail, self.step_rx_ns = (
            ep,
            t,
            msg["seen"],
            avail,
            now_ns(),
        )
        self.seq = msg["seq"]
        if timeline.ENABLED:
            timeline.mark("step", self.seq, bool(msg["seen"]))
        for key in [k for k in self.lost_reports if k < (ep, t - 1)]:
            del self.lost_reports[key]
        self.ring.put_obs(t, obs, obs is not None)
        if obs is not None:
            # o_t and a_{t-1} do not depend on a_t: a pending round's data goes out (or is used)
            # first
            self.sync.push(ep, t)
            if self.coord is not None:
                self.coord.own_step(ep, t, now)
            self._act(ep, t, obs, "obs")
        elif self.settings.recon == "zero-fill":
            self._act(ep, t, np.zeros(self.spec.obs_dim, np.float32), "zero-fill")
        elif self.settings.recon == "hold-last":
            self._act(ep, t, self.ring.last_real_obs(), "hold-last")
        else:
            self.awaiting = (ep, t)
            self.await_deadline = now + self.settings.deadline_s("recon")
            every = self.settings.resend_s()
            self.lost_retry_at = now + every if every > 0 else float("inf")
            if not self.sync.push(ep, t):  # a streamed blind step is our loss report
                self._report_loss(ep, t)
        self.sync.answer()
        self._maybe_claim(
            ep, t
        )  # the event loop then polls the coordinator's rounds, as after every message

    def _act(self, ep: int, t: int, obs: np.ndarray, kind: str) -> None:
        start = now_ns()
        action, self.actor_state = self.actor.step(obs, self.i, self.avail, self.actor_state)
        action = self.codec.check(action)
        if kind != "obs":
            self.ring.obs[t] = np.asarray(obs, np.float32)
        self.ring.put_action(t, action)
        tx = sum(self.node.stats.tx_msgs.values()) - self.node.stats.tx_msgs["ACTION"]
        fields = {
            "ep": ep,
            "step": t,
            "kind": kind,
            "epoch": self.view.epoch,
            "leader": self.view.leader,
            "tx": min(tx, MAX_COUNTER - 1),
        }
        self.last_action = (ep, t, fields, action)
        self.send("env", "ACTION", {"action": action}, **fields)
        if timeline.ENABLED:
            timeline.mark("acted", self.seq)
        end = now_ns()
        self.samples.add("actor_us", (end - start) / 1e3)
        self.samples.add(
            "decide_obs_us" if kind == "obs" else "decide_lost_us", (end - self.step_rx_ns) / 1e3
        )
        if self.awaiting == (ep, t):
            self.awaiting = None
        self.counts[f"act_{kind}"] += 1
        if self.settings.record:
            self.records.append(
                (ep, t, kind, np.asarray(obs, np.float32).copy(), np.asarray(action).copy())
            )

    # -- loss reports and election --------------------------------------------------------

    def near(self, ep: int, t: int) -> bool:
        """A step a peer may legitimately talk about now: ours, one either side, or the next
        episode's start."""
        return (ep == self.ep and self.t - 1 <= t <= self.t + 1) or (ep == self.ep + 1 and t <= 1)

    # -- history sync (every agent) and reconstruction (blind agents) ----------------------

    def _on_gather(self, msg: Message, now: float) -> None:
        if self._from_coordinator(msg):
            self.sync.on_gather(msg)

    def _on_stream(self, msg: Message, now: float) -> None:
        if self._from_coordinator(msg):
            self.sync.on_stream(msg)

    def _on_history(self, msg: Message, now: float) -> None:
        if self.coord is None:
            self.node.count_drop("stale_epoch")
            return
        if msg["push"]:
            self.coord.on_push(msg, now)
        else:
            self.coord.on_history(msg, now)

    def _on_recon(self, msg: Message, now: float) -> None:
        if not self._from_coordinator(msg):
            return
        row = msg.array("obs", (self.spec.obs_dim,), "<f4")
        self.deliver_recon(msg["ep"], msg["step"], row.copy(), msg["start"], msg["epoch"])

    def deliver_recon(self, ep: int, t: int, row: np.ndarray, start: int, epoch: int) -> None:
        """A reconstruction for us (from the wire, or from our own coordinator when we are
        blind)."""
        if self.awaiting != (ep, t):
            self.counts[
                "recon_unexpected_observing"
                if (ep, t) == (self.ep, self.t) and self.seen
                else "recon_late"
            ] += 1
            return
        self.counts["recon_received"] += 1
        if timeline.ENABLED:
            timeline.mark("recon", self.seq)
        self.samples.add("recon_round_us", (now_ns() - self.step_rx_ns) / 1e3)
        if self.settings.record:
            self.records.append((ep, t, "recon", row.copy(), np.array([start, epoch])))
        self._act(ep, t, row, "world-model")

    def _on_wm_rep(self, msg: Message, now: float) -> None:
        if self.coord is None:
            self.node.count_drop("unexpected", "WM_REP without a round")
            return
        self.coord.on_wm_reply(msg, now)

    # -- end of run -----------------------------------------------------------------------

    def _on_stats_req(self, msg: Message, now: float) -> None:
        counts = {
            **self.node.stats.flat(),
            **{f"agent.{k}": int(v) for k, v in self.counts.items()},
        }
        counts["agent.epoch"] = self.view.epoch
        counts["agent.loop_cpu_ms"] = int(1000 * (time.process_time() - self.cpu_start))
        samples = self.samples
        if self.coord is not None:
            for key, values in self.coord.samples.data.items():
                samples.data[key] = values
        names, arrays = samples.arrays()
        self.send(msg.src, "STATS", arrays, counts=counts, names=names)

    def _on_bye(self, msg: Message, now: float) -> None:
        self.running = False

    def _on_roster(self, msg: Message, now: float) -> None:
        for peer, endpoint in msg["endpoints"].items():
            if peer != self.name and isinstance(endpoint, str) and self.settings.known(peer):
                self.node.connect(peer, endpoint)


_HANDLERS = {
    ("env", "STEP"): Agent._on_step,
    ("env", "STATS_REQ"): Agent._on_stats_req,
    ("env", "BYE"): Agent._on_bye,
    ("env", "HB"): lambda self, msg, now: None,
    ("env", "HELLO"): lambda self, msg, now: None,
    ("ctl", "BYE"): Agent._on_bye,
    ("ctl", "ROSTER"): Agent._on_roster,
    ("a", "HELLO"): Agent._on_liveness,
    ("a", "HB"): Agent._on_liveness,
    ("a", "LOST"): Agent._on_lost,
    ("a", "COORD"): Agent._on_coord,
    ("a", "GATHER"): Agent._on_gather,
    ("a", "STREAM"): Agent._on_stream,
    ("a", "HISTORY"): Agent._on_history,
    ("a", "RECON"): Agent._on_recon,
    ("wm", "WM_REP"): Agent._on_wm_rep,
    ("wm", "HELLO"): lambda self, msg, now: self.wm_health.heard(),
}
