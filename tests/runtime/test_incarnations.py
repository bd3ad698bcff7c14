"""Process incarnations with real processes: a restarted agent acts only on steps sent to it, no
epoch is claimed twice, and moving a connected peer to a new endpoint does not abort libzmq.

Each of these failed before incarnations were explicit (issue 18): the env host's queued STEPs for
a killed agent were handed to its successor, which acted on steps the env host had finished; and
re-pointing a connection that had carried traffic aborted the process inside libzmq.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from swarm_helpers import run_swarm, swarm_settings

pytestmark = pytest.mark.timeout(300)


def _records(run: Path, stem: str) -> list[Path]:
    return sorted((run / "records").glob(f"{stem}-*.npz"))


@pytest.mark.parametrize("transport", ["ipc", "udp"])
def test_a_restarted_agent_acts_only_on_steps_sent_to_it(
    bundle: Path, tmp_path: Path, transport: str
) -> None:
    """Agent 2 SIGKILLs itself at step 30 and is restarted; the env host keeps stepping without
    it. Its successor must not act on any of the steps the env host finished while it was dead
    (before the fix, ZeroMQ handed it every STEP queued for its predecessor), and every claim of
    the run names a fresh epoch."""
    run = tmp_path / "run"
    s = swarm_settings(
        bundle,
        run,
        steps=220,
        transport=transport,
        record=True,
        kill_agents=[[2, 30]],
        rejoin_after_s=0.2,
        loss={"model": "bernoulli", "p_loss": 0.5},
        # paced, so the episode outlasts the successor's start-up (a second or more on one loaded
        # core): unpaced, the 190 steps after the kill took about a second and the successor
        # sometimes came up after the last one, with nothing recorded
        rate_hz=25.0,
    )
    report, _ = run_swarm(s, run)
    env = np.load(run / "records" / "env.npz")
    files = _records(run, "a2")
    assert len(files) == 1, files  # the predecessor was killed: only the successor wrote records
    acted = {int(t) for t in np.load(files[0])["act_t"]}
    defaulted = env["defaulted"][:, 2]
    # the steps the env host finished without agent 2 from the kill until the successor's first
    # action that counted
    back = next(int(t) for t, d in zip(env["t"], defaulted, strict=True) if t > 30 and not d)
    dead = set(range(31, back))
    assert acted and len(dead) > 5, (len(acted), back)
    # one of them may be the successor's own first step, answered after the deadline; before the
    # fix it acted on dozens of its predecessor's queued STEPs
    stale = sorted(acted & dead)
    assert len(stale) <= 1, f"acted on {len(stale)} finished steps: {stale[:10]}"
    events = report["events"]
    assert events["stale_actions"] == 0
    assert events["reused_epochs"] == 0 and events["two_coordinator_epochs"] == 0
    assert events["elections"] >= events.get("agents.claims", 0)
    assert events.get("agents.internal_errors", 0) == 0


_MOVE = textwrap.dedent(
    """
    import time
    from rmio.runtime.transport import Node
    known = lambda name: True
    a = Node("a0", "tcp://127.0.0.1:*", known)
    for trial in range(6):
        b = Node("a1", "tcp://127.0.0.1:*", known)
        a.connect("a1", b.endpoint)
        deadline = time.monotonic() + 5
        while not any(m.type == "HB" for m in b.poll(10)):
            a.send("a1", "HB", epoch=0, leader=-1)
            assert time.monotonic() < deadline, "no traffic"
        c = Node("a1", "tcp://127.0.0.1:*", known)  # a successor on another endpoint
        a.connect("a1", c.endpoint)  # the launcher's ROSTER update
        deadline = time.monotonic() + 5
        while not any(m.type == "HB" for m in c.poll(10)):
            a.send("a1", "HB", epoch=0, leader=-1)
            a.poll(0)
            b.poll(0)
            assert time.monotonic() < deadline, "the moved peer never got traffic"
        b.close()
        c.close()
    print("moved", flush=True)
    """
)


def test_repointing_a_connected_peer_does_not_abort() -> None:
    """The ROSTER update a restart with a new endpoint causes: connect the peer's name to the new
    endpoint while the old connection's pipe still exists. Before the fix libzmq aborted
    (``!has_out_pipe (routing_id)``, SIGABRT) in most trials; now each move delivers."""
    proc = subprocess.run(
        [sys.executable, "-c", _MOVE], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0 and "moved" in proc.stdout, (proc.returncode, proc.stderr[-2000:])


def test_a_killed_launchers_socket_directory_is_swept(tmp_path: Path) -> None:
    """A SIGKILLed launcher cannot remove its ``rmio-PID-*`` socket directory; the next launch
    removes those of launchers that are gone, and leaves a live one's alone."""
    import os
    import tempfile

    from rmio.runtime.launcher import sweep_stale_ipc_dirs

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait(timeout=30)
    stale = Path(tempfile.mkdtemp(prefix=f"rmio-{dead.pid}-"))
    (stale / "a0.sock").write_text("")
    live = Path(tempfile.mkdtemp(prefix=f"rmio-{os.getpid()}-"))
    try:
        assert sweep_stale_ipc_dirs() >= 1
        assert not stale.exists() and live.is_dir()
    finally:
        live.rmdir()
