"""What one call costs when the process has just woken up, against the same call made back to back.

A swarm process sleeps between env steps, so each of its calls starts with cold caches. This script
times the calls of an agent's step right after a sleep and warm, so the difference is visible: a
STEP decode, the actor through ``session.run`` and through its IO-bound buffers (what
``ActorRunner.act`` uses for one observation), and a batch-1 world-model step both ways. A second
table gives the CPU time that being woken up costs a thread: every message of the swarm wakes three
threads (the sender's and the receiver's ZeroMQ I/O threads, then the receiver's event loop).

    python bench/cold_calls.py                      # tiny random HalfCheetah 6x1 bundle
    python bench/cold_calls.py --bundle models/halfcheetah_6x1 --sleep-ms 5 --calls 300
"""

from __future__ import annotations

import argparse
import os
import select
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np


def timed(fn: Callable[[], object], calls: int, sleep_s: float) -> tuple[float, float]:
    """p50 and p90 of one call in microseconds, each call after ``sleep_s`` of sleep (0: back to
    back)."""
    fn()
    out = []
    for _ in range(calls):
        if sleep_s:
            time.sleep(sleep_s)
        start = time.perf_counter_ns()
        fn()
        out.append(time.perf_counter_ns() - start)
    p50, p90 = np.percentile(out, [50, 90]) / 1e3
    return float(p50), float(p90)


WAKER = """
import os, sys, time
kind, target, events, gap_s = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
if kind == "pipe":
    for _ in range(events):
        os.write(int(target), b"x")
        time.sleep(gap_s)
else:
    import zmq
    ctx = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(target)
    time.sleep(0.3)
    for _ in range(events):
        sock.send(b"x" * 64)
        time.sleep(gap_s)
    sock.close()
    ctx.term()
"""


def wake_cpu(kind: str, events: int, gap_s: float) -> tuple[float, float]:
    """p50 and p90 CPU time (us) a thread spends in the wait call that another process wakes it
    from: ``pipe``, epoll on a pipe; ``zmq``, the swarm's wait (a zmq.Poller on a ROUTER socket,
    woken by a message over loopback tcp), with the receive of that message."""
    import zmq

    out: list[float] = []
    if kind == "pipe":
        read_fd, write_fd = os.pipe()
        waker = subprocess.Popen(
            [sys.executable, "-c", WAKER, kind, str(write_fd), str(events), str(gap_s)],
            pass_fds=(write_fd,),
        )
        poller = select.epoll()
        poller.register(read_fd, select.EPOLLIN)
        for _ in range(events):
            start = time.thread_time_ns()
            if not poller.poll(2.0):
                break
            os.read(read_fd, 1)
            out.append(time.thread_time_ns() - start)
        poller.close()
        os.close(read_fd)
        os.close(write_fd)
    else:
        ctx = zmq.Context()
        inbox = ctx.socket(zmq.ROUTER)
        inbox.setsockopt(zmq.LINGER, 0)
        port = inbox.bind_to_random_port("tcp://127.0.0.1")
        zpoller = zmq.Poller()
        zpoller.register(inbox, zmq.POLLIN)
        waker = subprocess.Popen(
            [sys.executable, "-c", WAKER, kind, f"tcp://127.0.0.1:{port}", str(events), str(gap_s)]
        )
        for _ in range(events):
            start = time.thread_time_ns()
            if not zpoller.poll(2000):
                break
            inbox.recv_multipart(zmq.NOBLOCK)
            out.append(time.thread_time_ns() - start)
        inbox.close()
        ctx.term()
    waker.wait(timeout=10)
    p50, p90 = np.percentile(out[len(out) // 10 :], [50, 90]) / 1e3
    return float(p50), float(p90)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--bundle", type=Path, default=None, help="bundle (default: tiny random HalfCheetah 6x1)"
    )
    parser.add_argument("--sleep-ms", type=float, default=5.0, help="sleep before each cold call")
    parser.add_argument("--calls", type=int, default=300)
    args = parser.parse_args()
    from rmio.runtime.models import ActorRunner, WorldModelRunner
    from rmio.runtime.wire import decode, encode
    from rmio.testing import tiny_bundle

    bundle = args.bundle or tiny_bundle(
        Path(tempfile.gettempdir()) / "rmio-cold-calls", "mamujoco/HalfCheetah-6x1", 20
    )
    actor, wm = ActorRunner(bundle), WorldModelRunner(bundle)
    man = actor.manifest
    n, d = man.spec.n_agents, man.spec.obs_dim
    rng = np.random.default_rng(0)
    obs = rng.normal(size=d).astype(np.float32)
    step = encode("STEP", "env", {"obs": obs}, ep=0, step=5, seq=5, seen=True, dflt=False)
    state = wm.initial_state(1)
    feed = {
        "h": state.h,
        "z": state.z,
        "prev_action": np.zeros((1, n, man.act_width), np.float32),
        "obs": rng.normal(size=(1, n, d)).astype(np.float32),
        "mask": np.ones((1, n), np.float32),
    }
    one_id = np.zeros(1, np.int64)
    calls = {
        "STEP decode (msgpack header, checks, array)": lambda: decode(step, sender="env"),
        "actor, session.run": lambda: actor.session.run(
            ["action"], {"obs": obs[None], "agent_id": one_id}
        ),
        "actor, IO-bound buffers (ActorRunner.act)": lambda: actor.act(obs, 0),
        "world-model step, session.run": lambda: wm.session.run(
            ["h_next", "z_next", "obs_recon"], feed
        ),
        "world-model step, IO-bound buffers (WorldModelRunner.step)": lambda: wm.step(
            state, feed["prev_action"], feed["obs"], feed["mask"]
        ),
    }
    what = args.bundle or "a tiny random HalfCheetah-6x1 bundle from rmio.testing, l = 20"
    print(
        f"# One call warm and after {args.sleep_ms:g} ms of sleep ({args.calls} calls each; "
        f"bundle: {what})\n"
    )
    print("| call | warm p50 / p90 us | after a sleep p50 / p90 us | cold / warm (p50) |")
    print("|---|---|---|---|")
    for name, fn in calls.items():
        warm = timed(fn, args.calls, 0.0)
        cold = timed(fn, args.calls, args.sleep_ms / 1e3)
        print(
            f"| {name} | {warm[0]:.1f} / {warm[1]:.1f} | {cold[0]:.1f} / {cold[1]:.1f} | "
            f"{cold[0] / warm[0]:.1f}x |"
        )
    print(
        f"\n# CPU time of being woken by another process, one event every {args.sleep_ms:g} ms "
        f"({args.calls} events)\n"
    )
    print("| wait | CPU p50 / p90 us |")
    print("|---|---|")
    for kind, text in (
        ("pipe", "epoll on a pipe"),
        ("zmq", "zmq.Poller on a ROUTER socket + recv_multipart (tcp)"),
    ):
        p50, p90 = wake_cpu(kind, args.calls, args.sleep_ms / 1e3)
        print(f"| {text} | {p50:.1f} / {p90:.1f} |")


if __name__ == "__main__":
    main()
