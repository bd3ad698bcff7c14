"""Process faults and hostile traffic: coordinator and agent SIGKILL, rejoin, and a fuzzed message
stream."""

from __future__ import annotations

import glob
import socket
import threading
import time
from pathlib import Path
from typing import Any

import msgpack
import numpy as np
import pytest
import zmq
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from swarm_helpers import TEMPLATES, frames_of, swarm_settings

from rmio.runtime.datagram import pack, parse_endpoint
from rmio.runtime.launcher import Launcher
from rmio.runtime.wire import encode

pytestmark = [pytest.mark.timeout(150), pytest.mark.slow]


def recon_epochs(run_dir: Path) -> list[tuple[int, int]]:
    """(global-ish step key, epoch) of every reconstruction delivered."""
    out = []
    for path in glob.glob(str(run_dir / "records" / "a*.npz")):
        rec = np.load(path)
        out += [
            (int(e) * 10_000 + int(t), int(epoch))
            for e, t, epoch in zip(rec["recon_ep"], rec["recon_t"], rec["recon_epoch"], strict=True)
        ]
    return sorted(out)


@pytest.mark.parametrize("transport", ["tcp", "udp"])
def test_coordinator_sigkill_mid_round_is_survived_with_a_new_epoch(
    bundle: Path, tmp_path: Path, transport: str
) -> None:
    run = tmp_path / "run"
    s = swarm_settings(
        bundle,
        run,
        steps=60,
        record=True,
        kill_coordinator_at=10,
        transport=transport,
        loss={"model": "bernoulli", "p_loss": 0.4},
    )
    report = Launcher(s, run).run()
    ev = report["events"]
    assert (run / "faults" / "coordinator-kill").is_file()  # the fault really fired, inside a round
    assert report["episodes"][0]["steps"] == 60
    assert ev["final_epoch"] >= 2 and ev["agents.leader_lost"] >= 1
    assert ev.get("agents.internal_errors", 0) == 0
    epochs = recon_epochs(run)
    assert (
        epochs[0][1] == 1 and epochs[-1][1] >= 2
    )  # reconstructions continue under the successor's epoch
    assert (
        ev.get("agents.recon_miss", 0) <= 12
    )  # at most the blind agents of the fatal step and the next
    killed = next(
        p
        for p in glob.glob(str(run / "logs" / "a*.log"))
        if "coordinator SIGKILL" in Path(p).read_text()
    )
    assert killed


@pytest.mark.parametrize("transport", ["ipc", "udp"])
def test_agent_sigkill_is_survived_and_the_restarted_agent_rejoins(
    bundle: Path, tmp_path: Path, transport: str
) -> None:
    run = tmp_path / "run"
    s = swarm_settings(
        bundle,
        run,
        steps=100,
        record=True,
        kill_agents=[[3, 10]],
        rate_hz=30.0,
        rejoin_after_s=0.1,
        transport=transport,
    )
    report = Launcher(s, run).run()
    ev = report["events"]
    assert report["episodes"][0]["steps"] == 100 and ev.get("agents.internal_errors", 0) == 0
    assert ev["agent_rejoins"] >= 1 and ev["dead_agent_steps"] >= 1
    env = np.load(run / "records" / "env.npz")
    defaulted = env["defaulted"][:, 3]
    assert defaulted[10] and not defaulted[:10].any()
    assert not defaulted[-10:].any()  # acting again by the end
    assert (
        len(glob.glob(str(run / "records" / "a3-*.npz"))) == 1
    )  # the second incarnation (the first was killed)
    assert "a3" in report["processes"] and ev["agents.peer_rejoined"] >= 5


def _start(settings: Any, run: Path) -> tuple[Launcher, threading.Thread, dict[str, Any]]:
    """A launcher running in a background thread; its report lands in ``result["report"]``."""
    launcher = Launcher(settings, run)
    result: dict[str, Any] = {}
    thread = threading.Thread(
        target=lambda: result.setdefault("report", launcher.run()), daemon=True
    )
    thread.start()
    return launcher, thread, result


def _mutated(msg_type: str, changes: dict[str, Any], src: str) -> list[bytes]:
    frames = frames_of(msg_type, src)
    header = msgpack.unpackb(frames[0], raw=False)
    header.update(changes)
    try:
        return [msgpack.packb(header), *frames[1:]]
    except (OverflowError, ValueError, TypeError):
        return frames[:1]


def _fuzz_target(
    bundle: Path, run: Path, transport: str
) -> tuple[Launcher, threading.Thread, dict[str, Any]]:
    """A 240-step swarm at 40 steps/s, returned once every process has registered. Without a
    key: fuzzed frames must reach the decoder, not stop at the tag check."""
    s = swarm_settings(
        bundle,
        run,
        steps=240,
        rate_hz=40.0,
        transport=transport,
        loss={"model": "bernoulli", "p_loss": 0.3},
        insecure=True,
    )
    launcher, thread, result = _start(s, run)
    deadline = time.monotonic() + 60
    while len(launcher.roster) < 7 and time.monotonic() < deadline:
        time.sleep(0.05)
    return launcher, thread, result


def assert_survived(
    launcher: Launcher, thread: threading.Thread, result: dict[str, Any], sent: int
) -> None:
    """The fuzzed swarm finished its run with every process exiting cleanly, and dropped what it
    got."""
    thread.join(timeout=100)
    assert not thread.is_alive()
    report = result["report"]
    assert sent > 100
    assert report["episodes"][0]["steps"] == 240
    assert all(c.proc.returncode == 0 for c in launcher.children.values())  # nobody crashed
    ev = report["events"]
    assert ev.get("agents.internal_errors", 0) == 0
    assert sum(v for k, v in ev.items() if k.startswith("dropped.")) > 50


MUTATED = st.builds(
    _mutated,
    st.sampled_from(sorted(TEMPLATES)),
    st.dictionaries(
        st.sampled_from(
            [
                "v",
                "ep",
                "step",
                "epoch",
                "leader",
                "seen",
                "arr",
                "obs_from",
                "kind",
                "t",
                "src",
                "rid",
                "counts",
            ]
        ),
        st.one_of(
            st.integers(-5, 1 << 40),
            st.booleans(),
            st.text(max_size=4),
            st.lists(st.integers(-2, 12), max_size=3),
        ),
        max_size=2,
    ),
    st.sampled_from(["wm", "a1", "env", "zz"]),
)
"""Real messages with one or two header fields changed to something else (often invalid)."""


def test_fuzzed_messages_crash_nothing(bundle: Path, tmp_path: Path) -> None:
    launcher, thread, result = _fuzz_target(bundle, tmp_path / "run", "tcp")
    targets = dict(launcher.roster)
    assert len(targets) == 7
    ctx = zmq.Context()
    socks = {}
    for ident in ("wm", "zz"):  # a known name nobody uses, and a stranger
        sock = ctx.socket(zmq.ROUTER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.ROUTING_ID, ident.encode())
        sock.setsockopt(
            zmq.ROUTER_MANDATORY, 1
        )  # a send to a peer not yet connected fails instead of vanishing
        for name, endpoint in targets.items():
            sock.setsockopt(zmq.CONNECT_ROUTING_ID, name.encode())
            sock.connect(endpoint)
        socks[ident] = sock
    # wait until every connection is up (slow on a cold machine), so that fuzzed frames really
    # arrive
    pending = {(ident, name) for ident in socks for name in targets}
    deadline = time.monotonic() + 30
    while pending and time.monotonic() < deadline:
        for ident, name in list(pending):
            try:
                socks[ident].send_multipart([name.encode(), b"probe"], flags=zmq.NOBLOCK)
                pending.discard((ident, name))
            except zmq.ZMQError:
                pass
        time.sleep(0.02)
    assert not pending, f"never connected: {sorted(pending)}"
    sent = [0]

    @settings(
        max_examples=300, deadline=None, suppress_health_check=list(HealthCheck), database=None
    )
    @given(
        st.sampled_from(sorted(targets)),
        st.sampled_from(["wm", "zz"]),
        st.one_of(
            st.lists(st.binary(max_size=40), max_size=5),
            MUTATED,
        ),
    )
    def fuzz(target: str, ident: str, frames: list[bytes]) -> None:
        try:
            socks[ident].send_multipart([target.encode(), *frames], flags=zmq.NOBLOCK)
            sent[0] += 1
        except zmq.ZMQError:
            pass
        time.sleep(0.002)

    try:
        fuzz()
    finally:
        for sock in socks.values():
            sock.close(0)
        ctx.term()
    assert_survived(launcher, thread, result, sent[0])


def test_fuzzed_datagrams_crash_nothing(bundle: Path, tmp_path: Path) -> None:
    """The UDP swarm under a stream of hostile datagrams: raw bytes, broken layouts, mutated
    messages."""
    launcher, thread, result = _fuzz_target(bundle, tmp_path / "run", "udp")
    targets = {name: parse_endpoint(endpoint) for name, endpoint in launcher.roster.items()}
    assert len(targets) == 7
    raw = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sent = [0]

    @settings(
        max_examples=300, deadline=None, suppress_health_check=list(HealthCheck), database=None
    )
    @given(
        st.sampled_from(sorted(targets)),
        st.one_of(
            st.binary(max_size=60),
            st.lists(st.binary(max_size=40), min_size=1, max_size=5).map(pack),
            MUTATED.map(pack),
        ),
    )
    def fuzz(target: str, data: bytes) -> None:
        raw.sendto(data, targets[target])
        sent[0] += 1
        time.sleep(0.002)

    try:
        fuzz()
    finally:
        raw.close()
    assert_survived(launcher, thread, result, sent[0])


def test_stale_epochs_are_rejected(bundle: Path, tmp_path: Path) -> None:
    """Agent 5 dies for good; a process takes its name and sends coordinator messages of epoch 0
    (older than the swarm's first election, and naming no claimant) from incarnation 0 (older than
    the real a5's): every one is counted and dropped, and the run goes on. The swarm runs without a
    key, so that the epoch rules themselves meet the impostor (with the key, its unsigned messages
    never get past the tag check: tests/runtime/test_auth.py)."""
    run = tmp_path / "run"
    s = swarm_settings(
        bundle,
        run,
        steps=150,
        rate_hz=40.0,
        kill_agents=[[5, 2]],
        rejoin_after_s=-1.0,
        loss={"model": "bernoulli", "p_loss": 0.3},
        insecure=True,
    )
    launcher, thread, result = _start(s, run)
    deadline = time.monotonic() + 60
    while (
        len(launcher.roster) < 7 or launcher.children["a5"].proc.poll() is None
    ) and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(1.0)  # a few dozen steps: the first election (epoch 1) is long done
    ctx = zmq.Context()
    sock = ctx.socket(zmq.ROUTER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.ROUTING_ID, b"a5")
    targets = [f"a{i}" for i in range(5)]
    for name in targets:
        sock.setsockopt(zmq.CONNECT_ROUTING_ID, name.encode())
        sock.connect(launcher.roster[name])
    time.sleep(0.3)
    stale = [
        encode("COORD", "a5", epoch=0, leader=5),
        encode("GATHER", "a5", ep=0, step=1, epoch=0, obs_from=0, act_from=0, stream=-1),
        encode("RECON", "a5", {"obs": np.zeros(9, np.float32)}, ep=0, step=1, epoch=0, start=0),
    ]
    try:
        for name in targets:
            for frames in stale:
                sock.send_multipart([name.encode(), *frames])
        time.sleep(0.3)
    finally:
        sock.close(0)
        ctx.term()
    thread.join(timeout=100)
    report = result["report"]
    assert report["episodes"][0]["steps"] == 150
    assert report["events"]["final_epoch"] >= 1
    dropped = sum(
        report["events"].get(f"dropped.{why}", 0)
        for why in ("stale_epoch", "bad_view", "stale_incarnation")
    )
    assert dropped >= len(targets) * len(stale)
    assert report["events"].get("agents.internal_errors", 0) == 0
