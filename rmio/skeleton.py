"""The machine's floor for a streamed reconstruction round: the swarm's processes and messages,
nothing else.

An env host and n agent processes exchange exactly the messages of a streamed round, with the real
transport and codec (``rmio.runtime.transport.Node``, ``rmio.runtime.wire``), but run no actor, no
world model, no simulator and no protocol logic: every step the env host sends each agent a STEP
(the last agent's observation is lost), every agent pushes a HISTORY row to agent 0, agent 0 answers
the blind agent with a RECON once all rows are in, and every agent sends its ACTION. The blind
agent's STEP-to-RECON time is what a round costs on this machine when all n + 1 processes wake up
for every step, which is what the real swarm does; the gap to the real round is our own work
(onnxruntime calls, MuJoCo, bookkeeping).

With ``--transport udp`` the same skeleton runs over the runtime's UDP transport
(``rmio.runtime.datagram``): one event loop per process and no other thread, where a ZeroMQ message
wakes three threads (the sender's and the receiver's I/O threads, then the receiver's loop) and a
datagram one. The difference is what the I/O threads cost a round on this machine.

    python bench/swarm_skeleton.py --agents 6 --steps 2000
    python bench/swarm_skeleton.py --agents 6 --steps 2000 --transport udp

It lives in the package (``rmio.skeleton``) because the benchmark and its test both run it; the
agents are started as ``python -m rmio.skeleton --agent ...``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from rmio.runtime.node import NodeBase
from rmio.runtime.transport import make_node as runtime_node

ENDPOINTS = {"tcp": "tcp://127.0.0.1:*", "udp": "udp://127.0.0.1:0"}


def make_node(name: str, transport: str) -> NodeBase:
    return runtime_node(name, ENDPOINTS[transport], lambda s: True)


class Compute:
    """The unavoidable work of an agent (its actor) and of the coordinator (one world-model
    step)."""

    def __init__(self, bundle: str | None, coordinator: bool) -> None:
        self.actor = self.wm = None
        if bundle is None:
            return
        from rmio.runtime.models import ActorRunner, WorldModelRunner

        self.actor = ActorRunner(bundle)
        if coordinator:
            self.wm = WorldModelRunner(bundle)
            man, n = self.wm.manifest, self.wm.manifest.spec.n_agents
            self.window = (
                np.zeros((1, n, man.spec.obs_dim), np.float32),
                np.zeros((1, n, man.spec.action_dim), np.float32),
                np.ones((1, n), np.float32),
            )
            self.state = self.wm.initial_state(1)

    def act(self, obs: np.ndarray, i: int) -> None:
        if self.actor is not None:
            self.actor.act(obs, i)

    def reconstruct(self) -> None:
        if self.wm is not None:
            self.state, _ = self.wm.replay(*self.window, self.state)


def agent(
    name: str,
    env_endpoint: str,
    n: int,
    obs_dim: int,
    bundle: str | None = None,
    transport: str = "tcp",
) -> None:
    node = make_node(name, transport)
    node.connect("env", env_endpoint)
    while not node.send("env", "REGISTER", role="agent", endpoint=node.endpoint, pid=0):
        node.poll(10)
    i = int(name[1:])
    blind, coordinator = i == n - 1, i == 0
    compute = Compute(bundle, coordinator)
    act, row, none = (
        np.zeros(1, np.float32),
        np.zeros(obs_dim, np.float32),
        np.zeros((0, obs_dim), np.float32),
    )
    pushes, own_step, rx_ns, rounds_ms = 0, -1, 0, []
    while True:
        for m in node.poll(5000):
            if m.type == "ROSTER":
                for peer, endpoint in m["endpoints"].items():
                    if peer != name:
                        node.connect(peer, endpoint)
            elif m.type == "BYE":
                if blind:
                    print(json.dumps(rounds_ms), flush=True)
                node.close()
                return
            elif m.type == "STEP":
                t, rx_ns = m["step"], time.monotonic_ns()
                if coordinator:
                    own_step = t
                    compute.act(m.arrays["obs"], i)
                else:
                    obs = m.arrays["obs"][None] if m["seen"] else none
                    node.send(
                        "a0",
                        "HISTORY",
                        {"obs": obs, "act": act[None]},
                        ep=0,
                        step=t + 1,
                        epoch=1,
                        obs_from=t + 1,
                        act_from=t,
                        seen=[bool(m["seen"])],
                        known=[True],
                        push=True,
                    )
                    if not blind:
                        compute.act(m.arrays["obs"], i)
                        node.send(
                            "env",
                            "ACTION",
                            {"action": act},
                            ep=0,
                            step=t,
                            kind="obs",
                            epoch=1,
                            leader=0,
                            tx=0,
                        )
            elif m.type == "HISTORY":
                pushes += 1
            elif m.type == "RECON":
                rounds_ms.append((time.monotonic_ns() - rx_ns) / 1e6)
                compute.act(m.arrays["obs"], i)
                node.send(
                    "env",
                    "ACTION",
                    {"action": act},
                    ep=0,
                    step=m["step"],
                    kind="world-model",
                    epoch=1,
                    leader=0,
                    tx=0,
                )
            if coordinator and own_step >= 0 and pushes == n - 1:
                compute.reconstruct()
                node.send(f"a{n - 1}", "RECON", {"obs": row}, ep=0, step=own_step, epoch=1, start=0)
                node.send(
                    "env",
                    "ACTION",
                    {"action": act},
                    ep=0,
                    step=own_step,
                    kind="obs",
                    epoch=1,
                    leader=0,
                    tx=0,
                )
                own_step, pushes = -1, 0


class Observations:
    """What the env host sends: zeros, or (with a bundle) the observations of its real
    environment."""

    def __init__(self, n: int, obs_dim: int, bundle: str | None) -> None:
        self.obs = np.zeros((n, obs_dim), np.float32)
        self.env: Any = None
        if bundle is not None:
            from rmio.envs.registry import EnvConfig, make_env
            from rmio.runtime.bundle import load_manifest
            from rmio.runtime.settings import env_config_for

            man = load_manifest(bundle)
            self.env = make_env(EnvConfig(**env_config_for(man, 1000)))
            self.obs = self.env.reset(seed=0).obs
            self.actions = np.zeros((n, man.spec.action_dim), np.float32)

    def close(self) -> None:
        if self.env is not None:
            self.env.close()

    def step(self) -> np.ndarray:
        if self.env is not None:
            ts = self.env.step(self.actions)
            self.obs = self.env.reset().obs if ts.done else ts.obs
        return self.obs


def skeleton_round(
    n: int,
    steps: int,
    obs_dim: int = 17,
    warmup: int = 50,
    bundle: str | Path | None = None,
    transport: str = "tcp",
) -> dict[str, float]:
    """Round p50/p99 (ms) at the blind agent and the steps per second of a free-running skeleton
    swarm; with ``bundle``, also doing the round's unavoidable compute; ``transport`` tcp (ZeroMQ)
    or udp."""
    bundle = None if bundle is None else str(bundle)
    source = Observations(n, obs_dim, bundle)
    obs_dim = source.obs.shape[1]
    extra = (["--bundle", bundle] if bundle is not None else []) + ["--transport", transport]
    env = make_node("env", transport)
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "rmio.skeleton",
                "--agent",
                f"a{i}",
                "--env",
                env.endpoint,
                "--agents",
                str(n),
                "--obs-dim",
                str(obs_dim),
                *extra,
            ],
            stdout=subprocess.PIPE,
            text=True,
        )
        for i in range(n)
    ]
    try:
        endpoints: dict[str, str] = {}
        deadline = time.monotonic() + 60
        while len(endpoints) < n:
            if time.monotonic() > deadline:
                raise RuntimeError("skeleton agents did not register within 60 s")
            for m in env.poll(100):
                if m.type == "REGISTER":
                    endpoints[m.src] = m["endpoint"]
                    env.connect(m.src, m["endpoint"])
        time.sleep(0.2)
        for name in endpoints:
            env.send(name, "ROSTER", version=1, endpoints={**endpoints, "env": env.endpoint})
        time.sleep(1.0)
        start = time.perf_counter()
        for t in range(steps):
            obs = source.step()
            for i in range(n):
                seen = i != n - 1
                env.send(
                    f"a{i}",
                    "STEP",
                    {"obs": obs[i]} if seen else None,
                    ep=0,
                    step=t,
                    seq=t,
                    seen=seen,
                    dflt=False,
                )
            got, wait_until = 0, time.monotonic() + 5
            while got < n and time.monotonic() < wait_until:
                got += sum(m.type == "ACTION" for m in env.poll(1000))
        elapsed = time.perf_counter() - start
        for name in endpoints:
            env.send(name, "BYE", reason="done")
        out, _ = procs[-1].communicate(timeout=30)
        rounds = np.asarray(json.loads(out.strip().splitlines()[-1])[warmup:], np.float64)
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
            proc.wait(timeout=5)
        env.close()
        source.close()
    return {
        "p50": float(np.percentile(rounds, 50)),
        "p99": float(np.percentile(rounds, 99)),
        "steps_per_s": steps / elapsed,
        "rounds": len(rounds),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--agents", type=int, default=6)
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--obs-dim", type=int, default=17)
    parser.add_argument(
        "--bundle", default=None, help="also run the bundle's actor, world model and environment"
    )
    parser.add_argument(
        "--transport", choices=sorted(ENDPOINTS), default="tcp", help="ZeroMQ over tcp, or UDP"
    )
    parser.add_argument("--agent", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--env", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.agent is not None:
        agent(args.agent, args.env, args.agents, args.obs_dim, args.bundle, args.transport)
        return
    r = skeleton_round(
        args.agents, args.steps, args.obs_dim, bundle=args.bundle, transport=args.transport
    )
    what = (" with compute" if args.bundle else "") + f", {args.transport}"
    print(
        f"{args.agents} agents{what}: skeleton round p50 {r['p50']:.2f} / p99 {r['p99']:.2f} ms, "
        f"{r['steps_per_s']:.0f} steps/s"
    )


if __name__ == "__main__":
    main()
