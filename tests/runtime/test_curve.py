"""CurveZMQ on the ZeroMQ transports (issue 19): a roster swarm with a keypair per role reproduces
the in-process returns, and the real sockets refuse a peer whose key is not the roster's, or a
member that speaks as another member.

The MAC keeps outsiders out on every transport; what CURVE adds is shown by the last test: a
process holding the swarm's MAC key *and* its own role's CURVE keys (a compromised agent) forges
a BYE "from env" to another agent. Under the MAC alone that BYE is authentic (the key is the
swarm's, not the role's: runtime/PROTOCOL.md, "Threat model"); under CURVE the connection is bound
to a1's name and the message is dropped (``wrong_key``).
"""

from __future__ import annotations

import contextlib
import json
import os
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
import zmq
from test_auth import Running, _assert_everyone_acted, _forge, _repeat, _settings
from test_cli_swarm import _free_ports, rmio
from zmq.utils.monitor import recv_monitor_message

from rmio.evaluation.reference import evaluate
from rmio.runtime.auth import load_key
from rmio.runtime.curve import CurveKeys
from rmio.runtime.settings import Roster

pytestmark = [pytest.mark.timeout(240), pytest.mark.slow]


def test_a_curve_roster_swarm_reproduces_the_in_process_returns(
    bundle: Path, tmp_path: Path
) -> None:
    """`rmio swarm roster --curve` writes a keypair per role beside the roster (by relative
    reference); every role runs as its own process from it over tcp, and the returns are the
    in-process evaluation's exactly (a generous deadline: no step may default on a loaded
    machine)."""
    folder = tmp_path / "swarm"
    folder.mkdir()
    roster = folder / "roster.yaml"
    made = rmio(
        *("swarm", "roster", str(bundle), "--episodes", "2", "--steps", "25", "--p-loss", "0.3"),
        *("--step-deadline-ms", "2000", "--no-baselines", "--curve", "--transport", "tcp"),
        *("--base-port", str(_free_ports(7)), "-o", str(roster)),
        cwd=tmp_path,
    )
    assert made.returncode == 0, made.stderr
    raw = yaml.safe_load(roster.read_text())["settings"]
    assert raw["curve"] is True and raw["curve_dir"] == "roster.curve"
    assert str(tmp_path) not in roster.read_text().replace(str(bundle), "")
    secret = folder / "roster.curve" / "secret" / "a3.key_secret"
    assert stat.S_IMODE(secret.stat().st_mode) == 0o600
    assert len(list((folder / "roster.curve" / "public").glob("*.key"))) == 7
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "rmio.cli", *cmd.split()[1:]],
            cwd=tmp_path,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for cmd in made.stdout.strip().splitlines()
    ]
    try:
        for p in procs:
            p.wait(timeout=150)
        outputs = [p.stdout.read() if p.stdout else "" for p in procs]
        assert all(p.returncode == 0 for p in procs), outputs
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    report = json.loads((tmp_path / "results" / "report.json").read_text())
    settings = Roster.load(roster).settings
    ref = evaluate(
        settings.bundle,
        settings.env_config(),
        settings.loss_config(),
        episodes=settings.episodes,
        seed=settings.seed,
    )
    assert report["events"].get("deadline_misses", 0) == 0
    assert [ep["return"] for ep in report["episodes"]] == [r["return"] for r in ref]
    assert report["events"]["agents.recon_received"] > 0  # reconstruction rounds ran over CURVE
    assert not any(k.startswith("dropped.") for k in report["events"]), report["events"]


def _handshake_events(monitor: zmq.Socket, seconds: float) -> set[int]:
    seen: set[int] = set()
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if monitor.poll(100):
            seen.add(int(recv_monitor_message(monitor)["event"]))
    return seen


def test_a_key_not_in_the_roster_is_refused(bundle: Path, tmp_path: Path) -> None:
    """tcp + CURVE: a client with a fresh keypair (it knows the env host's public key, which is no
    secret) and a client without CURVE both fail the handshake at the env host's real inbox;
    neither message arrives, the refusals are counted and the run is untouched."""
    run = tmp_path / "run"
    running = Running(_settings(bundle, run, "tcp", curve=True), run)
    env = running.stepping()["env"]
    keys = Path(running.launcher.settings.curve_dir or "")
    env_public = (keys / "public" / "env.key").read_text()
    ctx = zmq.Context()
    stranger = ctx.socket(zmq.DEALER)
    plain = ctx.socket(zmq.DEALER)
    public, secret = zmq.curve_keypair()
    stranger.setsockopt(zmq.CURVE_SECRETKEY, secret)
    stranger.setsockopt(zmq.CURVE_PUBLICKEY, public)
    stranger.setsockopt(zmq.CURVE_SERVERKEY, env_public.strip().encode())
    monitors = []
    for sock, rid in ((stranger, b"a2:0badc0de"), (plain, b"a3:0badc0de")):
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.ROUTING_ID, rid)
        monitors.append(sock.get_monitor_socket())
        sock.connect(env)

    def attack() -> None:  # no connection ever completes: a DEALER then has nowhere to send
        for sock, src in ((stranger, "a2"), (plain, "a3")):
            with contextlib.suppress(zmq.Again):
                sock.send_multipart(_forge("BYE", src, reason="x"), flags=zmq.NOBLOCK)

    try:
        refused = _handshake_events(monitors[0], 1.0)
        attacks = _repeat(running, attack, 0.2)
        report = running.finish()
    finally:
        for sock in (*monitors, stranger, plain):
            sock.close(0)
        ctx.term()
    assert zmq.EVENT_HANDSHAKE_FAILED_AUTH in refused
    assert zmq.EVENT_HANDSHAKE_SUCCEEDED not in refused
    assert attacks >= 3
    _assert_everyone_acted(run, report)
    assert report["processes"]["env"]["dropped.curve_refused"] >= 1
    assert "dropped.bad_auth" not in report["processes"]["env"]  # nothing got past the handshake


def test_a_member_cannot_speak_as_another_member(bundle: Path, tmp_path: Path) -> None:
    """tcp + CURVE: with the swarm's MAC key and a1's own CURVE keys, a BYE "from env" to a3 (a
    routing id and ``src`` of env, a valid tag) is dropped as ``wrong_key``: a3's connection is
    a1's. Under the MAC alone the same BYE would end a3."""
    run = tmp_path / "run"
    running = Running(_settings(bundle, run, "tcp", curve=True), run)
    a3 = running.stepping()["a3"]
    settings = running.launcher.settings
    assert settings.curve_dir and settings.key_file
    keys = CurveKeys.load(settings.curve_dir, "a1", ["a3"])
    key = load_key(settings.key_file)
    ctx = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.ROUTING_ID, b"env:" + os.urandom(4).hex().encode())
    sock.setsockopt(zmq.CURVE_SECRETKEY, keys.secret)
    sock.setsockopt(zmq.CURVE_PUBLICKEY, keys.public)
    sock.setsockopt(zmq.CURVE_SERVERKEY, keys.peers["a3"])
    sock.connect(a3)

    def bye() -> None:
        with contextlib.suppress(zmq.Again):
            sock.send_multipart(_forge("BYE", "env", key, "a3", reason="x"), flags=zmq.NOBLOCK)

    try:
        attacks = _repeat(running, bye, 0.1)
        report = running.finish()
    finally:
        sock.close(0)
        ctx.term()
    assert attacks >= 3
    _assert_everyone_acted(run, report)
    assert report["processes"]["a3"]["dropped.wrong_key"] >= 3
