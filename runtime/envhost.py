"""The env host: owns the simulator and the fault model, and stands for every agent's sensors and
actuators.

Each step it sends every agent either its own observation or an explicit "lost" flag (never anyone
else's), collects the actions until the step deadline, applies the safe default action (zeros or
no-op) for agents that are late, dead or sent nonsense, records all of it, and steps the
simulator. Seeding matches rmio.envs.rollout (episode k: seed + k; one loss model seeded with
seed), so a run is comparable step for step with an in-process evaluation. At the end it gathers
every process's counters and latency samples and writes the report.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from typing import Any

import numpy as np

from rmio.envs.loss import LossyEnv, make_loss_model
from rmio.envs.registry import make_env
from rmio.runtime import timeline
from rmio.runtime.bundle import load_manifest
from rmio.runtime.envreport import build_report, save_records
from rmio.runtime.history import ActionCodec
from rmio.runtime.membership import View
from rmio.runtime.metrics import (
    Samples,
    write_report,
)
from rmio.runtime.node import NodeBase, now_ns
from rmio.runtime.settings import SwarmSettings
from rmio.runtime.stop import Stop
from rmio.runtime.wire import Message, WireError

log = logging.getLogger(__name__)


class EnvHost:
    def __init__(self, settings: SwarmSettings, node: NodeBase) -> None:
        self.settings, self.node = settings, node
        self.manifest = load_manifest(settings.bundle)
        self.spec = self.manifest.spec
        self.n = self.spec.n_agents
        self.names = settings.agent_names()
        self.codec = ActionCodec.of(self.spec)
        self.low = np.asarray(self.spec.action_low, np.float32) if not self.spec.discrete else None
        self.high = (
            np.asarray(self.spec.action_high, np.float32) if not self.spec.discrete else None
        )
        self.samples = Samples()
        self.counts: Counter = Counter()
        self.reachable = set()
        self.view = View()
        self.tx: dict[str, int] = {}
        self.records: list[dict[str, Any]] = []
        self.has_ctl = "ctl" in node.peers
        self.last_status = 0.0
        self.status_tx = (0, 0)
        self.stats: dict[str, dict[str, Any]] = {}
        self.asked: set[str] = set()
        """The processes sent a STATS_REQ: a STATS from any other is dropped (``unasked``)."""
        self.pending: dict[int, np.ndarray] = {}
        self.incarnations: dict[str, int] = {}
        self.since: dict[str, tuple[int, int, int]] = {}
        """Agent -> (incarnation, ep, t): the first step sent to the incarnation it is now; an
        action from another incarnation or for an earlier step is stale (``stale_actions``)."""
        self.late_streak = [0] * self.n
        """Consecutive steps each agent missed while reachable: from ``late_after`` on, the step
        wait no longer includes it (a stalled agent must not slow everyone to one step per
        deadline) until an action of it arrives in time again."""
        self.frames: dict[int, list[bytes]] = {}
        """The open step's STEP frames by agent, for resends."""
        self.waiting: set[int] = set()
        """Agents whose action for the open step has not come yet."""
        self.current: tuple[int, int, int, Any, np.ndarray] | None = None
        """The open step: (ep, t, seq, timestep, send time of each STEP)."""
        self.interrupted = False
        """The launcher was interrupted (Ctrl-C): stop after the step under way and report what
        ran."""

    # -- lifecycle ------------------------------------------------------------------------

    def run(self) -> None:
        self._wait_ready()
        episodes, steps, seconds = self._episodes()
        self._to_ctl("STATUS", status={"phase": "report"})
        self._collect_stats()
        for name in [*self.names, "wm"]:
            if name in self.node.peers:
                self.node.send(name, "BYE", reason="run complete")
        report = self._report(episodes, steps, seconds)
        if self.interrupted:
            report["interrupted"] = True
        jpath, _ = write_report(report, self.settings.out_dir)
        if self.settings.record:
            self._save_records()
        if self.has_ctl:
            self._to_ctl("DONE", report=str(jpath), ok=True)
            self.node.poll(50)  # let the last message leave before the context goes

    def _to_ctl(self, msg_type: str, **fields: Any) -> None:
        if self.has_ctl:
            self.node.send("ctl", msg_type, **fields)

    def _wait_ready(self) -> None:
        """Start stepping once every agent (and the world-model node) said hello, or at the startup
        deadline."""
        want = set(self.names) | ({"wm"} if self.settings.world_model == "node" else set())
        deadline = time.monotonic() + self.settings.startup_timeout_s
        while not want <= self.reachable and time.monotonic() < deadline:
            for msg in self.node.poll(50):
                self._handle(msg, None)
        missing = sorted(want - self.reachable)
        if missing:
            log.warning(
                "env host: starting without %s (no hello within %.0f s)",
                missing,
                self.settings.startup_timeout_s,
            )
            self.counts["missing_at_start"] = len(missing)

    # -- stepping -------------------------------------------------------------------------

    def _episodes(self) -> tuple[list[dict[str, Any]], int, float]:
        """Run every episode; returns their records, the number of steps and the seconds spent
        stepping."""
        s = self.settings
        env_cfg, loss_cfg = s.env_config(), s.loss_config()
        episodes, seq = [], 0
        period = 1.0 / s.rate_hz if s.rate_hz > 0 else 0.0
        with make_env(env_cfg) as base:
            if base.spec.name != self.spec.name:
                raise Stop(f"env {base.spec.name} does not match the bundle's {self.spec.name}")
            env = LossyEnv(base, make_loss_model(loss_cfg, self.n, s.seed))
            start = next_tick = time.monotonic()
            for k in range(s.episodes):
                if self.interrupted and episodes:
                    break
                ts = env.reset(seed=s.seed + k)
                ret, t, lost, defaults = 0.0, 0, 0, 0
                defaulted = np.zeros(self.n, bool)
                while True:
                    actions, defaulted = self._step(k, t, seq, ts, defaulted)
                    defaults += int(defaulted.sum())
                    lost += int((~ts.observed).sum())
                    ts = env.step(actions)
                    ret += ts.reward
                    t += 1
                    seq += 1
                    self._status(k, t, seq, ret, ts.observed, force=ts.done)
                    if ts.done or self.interrupted:
                        break
                    if period:
                        next_tick = max(next_tick + period, time.monotonic() - period)
                        self._idle_until(next_tick)
                won = ts.info.get("won")
                episodes.append(
                    {
                        "episode": k,
                        "seed": s.seed + k,
                        "return": ret,
                        "steps": t,
                        "won": None if won is None else bool(won),
                        "lost_fraction": lost / max(1, t * self.n),
                        "default_actions": defaults,
                        **({} if ts.done else {"interrupted": True}),
                    }
                )
                log.info("episode %d: return %.2f in %d steps", k, ret, t)
            seconds = time.monotonic() - start
        return episodes, seq, seconds

    def _idle_until(self, when: float) -> None:
        while (left := when - time.monotonic()) > 0:
            for msg in self.node.poll(1000 * left):
                self._handle(msg, None)

    def _step(
        self, ep: int, t: int, seq: int, ts: Any, defaulted: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        self.begin_step(ep, t, seq, ts, defaulted)
        start = time.monotonic()
        deadline = start + self.settings.deadline_s("step")
        every = self.settings.resend_s()
        resend = start + every if every > 0 else float("inf")
        while self.waiting:
            now = time.monotonic()
            if now >= deadline:
                break
            if now >= resend:
                self.resend()
                resend = now + every
            self.receive(self.node.poll(1000 * (min(deadline, resend) - now)))
        return self.end_step()

    def resend(self) -> None:
        """Send the open step's STEP again to every agent that has not acted (a lost STEP or
        ACTION over a lossy link): an agent that already acted answers with its ACTION again, one
        that never got it acts now (runtime/PROTOCOL.md, "Loss on the links")."""
        for i in sorted(self.waiting):
            if i in self.frames and self.node.send_frames(self.names[i], "STEP", self.frames[i]):
                self.counts["step_resends"] += 1

    def begin_step(self, ep: int, t: int, seq: int, ts: Any, defaulted: np.ndarray) -> None:
        """Send every agent its STEP; then :meth:`receive` collects actions until the step deadline
        (the caller's clock) or until ``waiting`` is empty, and :meth:`end_step` closes the step."""
        sent_ns = np.zeros(self.n, np.int64)
        if timeline.ENABLED:
            timeline.mark("fanout", seq)
        waiting = set()
        messages = []
        for name in self.names:
            inc = self.node.peer_inc.get(name, 0)
            if self.since.get(name, (-1,))[0] != inc:
                self.since[name] = (inc, ep, t)
        for i in range(self.n):
            seen = bool(ts.observed[i])
            arrays = {"obs": ts.obs[i]} if seen else {}
            if self.spec.discrete:
                arrays["avail"] = np.asarray(ts.avail_actions[i], bool)
            messages.append(
                self.node.encode_for(
                    self.names[i],
                    "STEP",
                    arrays,
                    ep=ep,
                    step=t,
                    seq=seq,
                    seen=seen,
                    dflt=bool(defaulted[i]),
                )
            )
        # all encoded first, then sent in one burst: the first agents to wake compete for the CPU
        # with the env host, and would otherwise delay the encoding of the last agents' STEPs
        for i, (name, frames) in enumerate(zip(self.names, messages, strict=True)):
            if self.node.send_frames(name, "STEP", frames):
                sent_ns[i] = now_ns()
                # a restarting agent is waited for once it said hello, a chronically late one
                # once it is in time again
                if name in self.reachable and self.late_streak[i] < self.settings.late_after:
                    waiting.add(i)
            elif name in self.reachable and self.node.last_fail == "unreachable":
                # (a local error, e.g. a firewall's EPERM, says nothing about the agent)
                self.reachable.discard(name)
                self.counts["agent_deaths_seen"] += 1
        if timeline.ENABLED:
            timeline.mark("fanned", seq)
        self.pending = {}
        self.frames = dict(enumerate(messages))
        self.waiting = waiting
        self.current = (ep, t, seq, ts, sent_ns)

    def receive(self, msgs: list[Message]) -> None:
        """Handle the messages of one wake-up (actions for the current step, if one is open), then
        the link events."""
        cur = self.current
        step = None if cur is None else (cur[0], cur[1])
        for msg in msgs:
            i = self._handle(msg, step)
            if cur is not None and i is not None and i in self.waiting:
                if timeline.ENABLED:
                    timeline.mark("action", cur[2], i)
                self.waiting.discard(i)
                lat = (now_ns() - cur[4][i]) / 1e3
                self.samples.add(
                    "decision_observing_us" if cur[3].observed[i] else "decision_lost_us", lat
                )
        for peer, up in self._links():
            if not up and peer in self.names:
                self.waiting.discard(self.names.index(peer))

    def end_step(self) -> tuple[np.ndarray, np.ndarray]:
        """The joint action of the open step (the safe default for every agent that has not acted)
        and which agents got the default."""
        assert self.current is not None
        ep, t, seq, ts, _ = self.current
        self.current = None
        # the step waited its whole deadline for an agent it waits for (not one excluded as late)
        self.counts["steps_missed"] += int(bool(self.waiting))
        self.waiting = set()
        self.frames = {}
        # the agents act on the available actions their STEP carried, blind or not
        if self.spec.discrete:
            self.counts["unavailable_actions"] += sum(
                not ts.avail_actions[i][int(a)] for i, a in self.pending.items()
            )
        actions = np.stack([self.pending.get(i, self.codec.default()) for i in range(self.n)])
        if self.low is not None:
            np.clip(actions, self.low, self.high, out=actions)
        new_defaulted = np.array([i not in self.pending for i in range(self.n)])
        reachable_late = [
            i for i in range(self.n) if new_defaulted[i] and self.names[i] in self.reachable
        ]
        self.counts["deadline_misses"] += len(reachable_late)
        streak, late_after = self.late_streak, self.settings.late_after
        for i in reachable_late:
            streak[i] += 1
        for i in self.pending:
            streak[i] = 0
        self.counts["late_excluded"] += sum(k >= late_after for k in streak)
        self.counts["dead_agent_steps"] += int(new_defaulted.sum()) - len(reachable_late)
        if self.settings.record:
            self.records.append(
                {
                    "ep": ep,
                    "t": t,
                    "seq": seq,
                    "time": time.time(),
                    "obs": ts.obs.copy(),
                    "observed": ts.observed.copy(),
                    "actions": actions.copy(),
                    "defaulted": new_defaulted,
                }
            )
        return actions, new_defaulted

    def _links(self) -> list[tuple[str, bool]]:
        events, self.node.link_events = self.node.link_events, []
        for peer, up in events:
            log.info("link to %s %s", peer, "up" if up else "down")
            if not up and peer in self.reachable:
                self.reachable.discard(peer)
                self.counts["agent_deaths_seen"] += 1
        return events

    # -- messages -------------------------------------------------------------------------

    def _handle(self, msg: Message, step: tuple[int, int] | None) -> int | None:
        """Returns the agent index when the message is that agent's valid action for ``step``."""
        try:
            return self._dispatch(msg, step)
        except WireError as exc:
            self.node.count_drop(exc.reason, str(exc))
            return None

    def _dispatch(self, msg: Message, step: tuple[int, int] | None) -> int | None:
        """Through the handler table, by (sender kind, type); the launcher's other messages are
        ignored, anything else unexpected is dropped and counted."""
        src = msg.src
        kind = "a" if src in self.names else src
        handler = _HANDLERS.get((kind, msg.type))
        if handler is not None:
            return handler(self, msg, step)
        if kind != "ctl":
            self.node.count_drop("unexpected", f"{msg.type} from {src}")
        return None

    def _on_bye_from_launcher(self, msg: Message, step: tuple[int, int] | None) -> int | None:
        if msg["reason"] == "interrupted":  # Ctrl-C: the report of what ran, then the usual end
            self.interrupted = True
            return None
        raise Stop("launcher said bye")

    def _on_roster(self, msg: Message, step: tuple[int, int] | None) -> int | None:
        for peer, endpoint in msg["endpoints"].items():
            if peer != "env" and isinstance(endpoint, str) and self.settings.known(peer):
                self.node.connect(peer, endpoint)
        return None

    def _on_hello(self, msg: Message, step: tuple[int, int] | None) -> int | None:
        src = msg.src
        old = self.incarnations.get(src)
        if old is not None and old != msg.inc:
            self.counts["agent_rejoins" if src in self.names else "wm_rejoins"] += 1
            log.info("%s rejoined", src)
        # answered every time: over datagrams the greeting repeats until an answer gets through
        self.node.send(src, "HELLO", role="env", epoch=0, leader=-1)
        self.incarnations[src] = msg.inc
        self.reachable.add(src)
        return None

    def _ignore(self, msg: Message, step: tuple[int, int] | None) -> int | None:
        return None

    def _on_stats(self, msg: Message, step: tuple[int, int] | None) -> int | None:
        if msg.src not in self.asked:  # statistics come only in answer to STATS_REQ
            self.node.count_drop("unasked", f"STATS from {msg.src}")
            return None
        samples = dict(zip(msg["names"], msg.arrays.values(), strict=False))
        self.stats[msg.src] = {"counts": msg["counts"], "samples": samples}
        return None

    def _on_action(self, msg: Message, step: tuple[int, int] | None) -> int | None:
        """Returns the agent index when the message is that agent's valid action for ``step``."""
        src = msg.src
        i = self.names.index(src)
        since = self.since.get(src)
        if since is not None and (msg.inc != since[0] or (msg["ep"], msg["step"]) < since[1:]):
            # a step this incarnation was never sent: a predecessor's, handed over by a transport
            self.counts["stale_actions"] += 1
            return None
        self.reachable.add(src)
        self.tx[src] = msg["tx"]
        if step is None or (msg["ep"], msg["step"]) != step or i in self.pending:
            self.counts["late_actions"] += 1
            return None
        action = msg.array("action", self.codec.shape, self.codec.dtype.str)
        if self.spec.discrete and not 0 <= int(action) < self.spec.action_sizes[i]:
            self.counts["invalid_actions"] += 1
            return None
        self.pending[i] = action  # continuous actions are clipped to the bounds once per step
        self.counts[f"actions_{msg['kind']}"] += 1
        view = View.of(msg["epoch"], msg["leader"])
        if view > self.view and msg["leader"] >= 0:
            if self.view.leader >= 0:
                self.counts["coordinator_changes_seen"] += 1
            self.view = view
        return i

    def _status(
        self, ep: int, t: int, seq: int, ret: float, observed: np.ndarray, force: bool = False
    ) -> None:
        now = time.monotonic()
        if not self.has_ctl or (now - self.last_status < 0.2 and not force):
            return
        total_tx = sum(self.tx.values())
        d_tx, d_steps = total_tx - self.status_tx[0], max(1, seq - self.status_tx[1])
        self.status_tx = (total_tx, seq)
        self.last_status = now
        dead = sum(1 for n in self.names if n not in self.reachable)
        self._to_ctl(
            "STATUS",
            status={
                "episode": ep,
                "step": t,
                "return": float(ret),
                "blind": int((~observed).sum()),
                "dead": dead,
                "coordinator": self.view.leader,
                "epoch": self.view.epoch,
                "msgs_per_step": d_tx / d_steps,
                "done": bool(force),
            },
        )

    def _collect_stats(self) -> None:
        want = [n for n in [*self.names, "wm"] if n in self.node.peers]
        self.asked.update(want)
        for name in want:
            self.node.send(name, "STATS_REQ")
        deadline = time.monotonic() + 3.0
        while not set(want) <= set(self.stats) and time.monotonic() < deadline:
            for msg in self.node.poll(50):
                self._handle(msg, None)
        self.counts["stats_missing"] = len(set(want) - set(self.stats))

    # -- report ---------------------------------------------------------------------------

    def _report(self, episodes: list[dict[str, Any]], steps: int, seconds: float) -> dict[str, Any]:
        return build_report(self, episodes, steps, seconds)

    def _save_records(self) -> None:
        save_records(self)


_HANDLERS = {
    ("ctl", "BYE"): EnvHost._on_bye_from_launcher,
    ("ctl", "ROSTER"): EnvHost._on_roster,
    ("a", "HELLO"): EnvHost._on_hello,
    ("wm", "HELLO"): EnvHost._on_hello,
    ("a", "ACTION"): EnvHost._on_action,
    ("a", "STATS"): EnvHost._on_stats,
    ("wm", "STATS"): EnvHost._on_stats,
    **{(kind, t): EnvHost._ignore for kind in ("a", "wm", "env") for t in ("HB", "BYE")},
    ("env", "HELLO"): EnvHost._ignore,
}
"""(sender kind, message type) -> handler; a kind is "a" for this swarm's agents, else the sender's
name."""
