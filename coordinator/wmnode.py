"""The world-model node: a stateless reconstruction server a coordinator can forward its window to.

It runs the same ``replay`` as an on-agent coordinator (RMIOv2's step graph, or MARIE's window
graph), on the CUDA provider when onnxruntime has it (the CPU otherwise), so a swarm of small
devices can keep its world model on one bigger machine. Stateless on purpose: in incremental mode
the coordinator sends the latent state with the request and keeps the returned one, so a node
restart loses nothing and any coordinator can use any node (a window graph has no state: its
WM_REP carries the reconstruction alone). Requests are checked against the bundle's shapes; a bad
one is counted and dropped.
"""

from __future__ import annotations

import logging
import time
from collections import Counter

from rmio.runtime.bundle import load_manifest
from rmio.runtime.history import ActionCodec
from rmio.runtime.metrics import Samples
from rmio.runtime.models import LatentState, carries_state, world_model_runner
from rmio.runtime.node import NodeBase, now_ns
from rmio.runtime.settings import SwarmSettings
from rmio.runtime.stop import Stop
from rmio.runtime.wire import Message, WireError

log = logging.getLogger(__name__)


class WorldModelNode:
    def __init__(
        self, settings: SwarmSettings, node: NodeBase, inc: int = 0, device: str = "cuda"
    ) -> None:
        self.settings, self.node, self.inc = settings, node, inc
        self.manifest = load_manifest(settings.bundle)
        self.wm = world_model_runner(settings.bundle, self.manifest, device=device)
        self.stateful = carries_state(self.manifest)
        """False for a window graph (MARIE's): requests never continue a state, and a WM_REP
        carries the reconstruction alone."""
        self.codec = ActionCodec.of(self.manifest.spec)
        self.samples = Samples()
        self.counts: Counter = Counter()
        self.last_env = time.monotonic()
        self.running = True

    def run(self) -> None:
        deadline = time.monotonic() + self.settings.startup_timeout_s
        # until a send goes through (ZeroMQ), or until the env host answers (datagrams prove
        # nothing)
        while not (
            self.node.send("env", "HELLO", role="wm", epoch=0, leader=-1)
            and self.node.confirms_delivery
        ):
            if time.monotonic() > deadline:
                raise Stop("env host unreachable")
            msgs = self.node.poll(10 if self.node.confirms_delivery else 50)
            for msg in msgs:
                self._handle_safely(msg)
            if any(msg.src == "env" for msg in msgs):
                break
        while self.running:
            self.receive(self.node.poll(500))
            if time.monotonic() - self.last_env > self.settings.orphan_timeout_s:
                raise Stop("env host silent")

    def receive(self, msgs: list[Message]) -> None:
        """Serve the messages of one wake-up (the node keeps no link state: it only answers)."""
        for msg in msgs:
            self._handle_safely(msg)
        self.node.link_events.clear()

    def _handle_safely(self, msg: Message) -> None:
        try:
            self._handle(msg)
        except WireError as exc:
            self.node.count_drop(exc.reason, str(exc))

    def _handle(self, msg: Message) -> None:
        if msg.src == "env":
            self.last_env = time.monotonic()
        kind = "a" if msg.src.startswith("a") else msg.src
        handler = _HANDLERS.get((kind, msg.type))
        if handler is not None:
            handler(self, msg)
        elif kind not in ("ctl", "env") and msg.type not in ("HELLO", "HB"):
            self.node.count_drop("unexpected", f"{msg.type} from {msg.src}")

    def _stop(self, msg: Message) -> None:
        self.running = False

    def _on_roster(self, msg: Message) -> None:
        for peer, endpoint in msg["endpoints"].items():
            if peer != "wm" and isinstance(endpoint, str) and self.settings.known(peer):
                self.node.connect(peer, endpoint)

    def _on_stats_req(self, msg: Message) -> None:
        counts = {**self.node.stats.flat(), **{f"wm.{k}": int(v) for k, v in self.counts.items()}}
        names, arrays = self.samples.arrays()
        self.node.send("env", "STATS", arrays, counts=counts, names=names)

    def _serve(self, msg: Message) -> None:
        m = self.manifest
        n, d = m.spec.n_agents, m.spec.obs_dim
        obs = msg.array("obs", (None, n, d), "<f4")
        T = obs.shape[0]
        if not 1 <= T <= m.history_window + 1:
            raise WireError("bad_array", f"window of {T} steps")
        acts = msg.array("act", (T, n, *self.codec.shape), self.codec.dtype.str)
        masks = msg.array("mask", (T, n), "<f4")
        state = None
        if msg["cont"]:
            if not self.stateful:
                raise WireError("bad_field", "a window graph has no state to continue")
            h = msg.array("h", (n, m.deter), "<f4")
            z = msg.array("z", (n, m.stoch), "<f4")
            state = LatentState(h[None].copy(), z[None].copy())
        start = now_ns()
        new_state, recons = self.wm.replay(obs, acts, masks, state)
        us = (now_ns() - start) // 1000
        self.samples.add("wm_node_us", float(us))
        self.counts["requests"] += 1
        arrays = {"obs": recons[-1]}
        if self.stateful:
            arrays.update(h=new_state.h[0], z=new_state.z[0])
        self.node.send(
            msg.src,
            "WM_REP",
            arrays,
            rid=msg["rid"],
            ok=True,
            us=int(us),
        )


_HANDLERS = {
    ("ctl", "BYE"): WorldModelNode._stop,
    ("ctl", "ROSTER"): WorldModelNode._on_roster,
    ("env", "BYE"): WorldModelNode._stop,
    ("env", "STATS_REQ"): WorldModelNode._on_stats_req,
    ("a", "WM_REQ"): WorldModelNode._serve,
}
"""(sender kind, message type) -> handler: the launcher's and the env host's other messages are
ignored, HELLO and HB from anyone too; anything else is dropped and counted."""
