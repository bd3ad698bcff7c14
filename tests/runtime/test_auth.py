"""Nobody joins a swarm uninvited (issue 19): each attack of the issue, made by a real foreign
socket against a real swarm, and what stops it.

The swarm runs under the embedded launcher in a thread (it writes a fresh key per run); the test is
the attacker: it knows the endpoints (an attacker on the network can scan for them) and the
protocol, but not the key. Every attack here succeeded on the main before this change: a routing
id "a2" cut a2 off for good, forged BYEs ended the env host's run and an agent, a forged ROSTER
re-pointed the agents' actions to the attacker, a forged COORD or RECON at a huge epoch took the
coordinator's place, and unasked STATS went into the report. Now each is dropped and counted
(``bad_auth``, ``unasked``) and the run is untouched.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import zmq
from swarm_helpers import swarm_settings

from rmio.runtime.auth import Auth, generate_key, load_key
from rmio.runtime.bundle import load_manifest
from rmio.runtime.datagram import DatagramNode, pack, parse_endpoint
from rmio.runtime.launcher import Launcher
from rmio.runtime.settings import SwarmSettings
from rmio.runtime.transport import Node
from rmio.runtime.wire import encode

pytestmark = pytest.mark.timeout(300)

OTHER_KEY = bytes(range(32))
"""A key that is not the swarm's: what an outsider who guesses, or a member of another swarm,
signs with."""


class Running:
    """A real swarm under the embedded launcher in a background thread, attacked from the test."""

    def __init__(self, settings: SwarmSettings, run_dir: Path) -> None:
        self.step = -1
        self.report: dict[str, Any] | None = None
        self.error: BaseException | None = None
        self.launcher = Launcher(settings, run_dir, on_status=self._status)
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _status(self, status: dict[str, Any]) -> None:
        if "step" in status:
            self.step = int(status["step"])

    def _run(self) -> None:
        try:
            self.report = self.launcher.run()
        except BaseException as exc:  # the test reads it
            self.error = exc

    def stepping(self, timeout: float = 120.0) -> dict[str, str]:
        """Wait until the env host has stepped a few times; every process's endpoint."""
        deadline = time.monotonic() + timeout
        while self.step < 3:
            assert self.thread.is_alive(), f"the swarm ended early: {self.error!r}"
            assert time.monotonic() < deadline, "the swarm never started stepping"
            time.sleep(0.02)
        return dict(self.launcher.roster)

    def running(self) -> bool:
        return self.thread.is_alive() and self.step >= 0

    def finish(self, timeout: float = 180.0) -> dict[str, Any]:
        self.thread.join(timeout)
        assert not self.thread.is_alive(), "the swarm did not finish"
        assert self.error is None, f"the attack ended the run: {self.error!r}"
        assert self.report is not None
        return self.report


def _settings(bundle: Path, run: Path, transport: str, **kw: Any) -> SwarmSettings:
    # paced, so that the run lasts long enough to be attacked while it steps
    kw.setdefault("rate_hz", 40.0)
    return swarm_settings(bundle, run, steps=150, transport=transport, record=True, **kw)


def _forge(msg_type: str, src: str, key: bytes | None = None, to: str = "", **kw: Any) -> list:
    """A message as a foreign process makes it: the real codec, a fresh incarnation (newer than
    any process of the swarm), sealed with a key that is not the swarm's, or not at all."""
    arrays = kw.pop("arrays", None)
    frames = encode(msg_type, src, arrays, inc=time.time_ns() // 1000, **kw)
    return Auth(key).seal(to, frames) if key is not None else frames


def _udp_send(endpoint: str, frames: list) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.sendto(pack(frames), parse_endpoint(endpoint))


def _defaulted(run: Path) -> np.ndarray:
    """Steps on which the env host applied the default action, per agent."""
    return np.load(run / "records" / "env.npz")["defaulted"].sum(axis=0)


def _assert_everyone_acted(run: Path, report: dict[str, Any]) -> None:
    assert report["episodes"][0]["steps"] == 150
    missed = _defaulted(run)
    # a loaded 2-core machine may make anyone miss a deadline now and then; the attacks cost one
    # agent tens of steps to all of them
    assert missed.max() <= 6, missed.tolist()


def _repeat(running: Running, attack: Callable[[], None], every_s: float = 0.05) -> int:
    """Repeat ``attack`` while the swarm steps; how many times it ran."""
    n = 0
    while running.running() and running.step < 140:
        attack()
        n += 1
        time.sleep(every_s)
    return n


def test_a_connection_under_an_agents_name_takes_nothing_over(bundle: Path, tmp_path: Path) -> None:
    """tcp: connections to the env host's inbox with routing id ``a2`` (sending nothing). Before,
    ROUTER_HANDOVER gave each one a2's identity: a2's actions went nowhere for the rest of the
    run. Now the inbox hands over nothing and each process's routing id is its own."""
    run = tmp_path / "run"
    running = Running(_settings(bundle, run, "tcp"), run)
    env = running.stepping()["env"]
    ctx = zmq.Context()
    socks = []

    def connect() -> None:
        sock = ctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.ROUTING_ID, b"a2")
        sock.connect(env)
        socks.append(sock)

    try:
        attacks = _repeat(running, connect, 0.25)
        report = running.finish()
    finally:
        for sock in socks:
            sock.close(0)
        ctx.term()
    assert attacks >= 5
    _assert_everyone_acted(run, report)


def test_a_forged_bye_from_the_launcher_is_refused(bundle: Path, tmp_path: Path) -> None:
    """udp: BYE "from ctl" to the env host, unsigned and signed with another key. Before, one
    ended the run with no report."""
    run = tmp_path / "run"
    running = Running(_settings(bundle, run, "udp"), run)
    env = running.stepping()["env"]

    def bye() -> None:
        _udp_send(env, _forge("BYE", "ctl", reason="forged"))
        _udp_send(env, _forge("BYE", "ctl", OTHER_KEY, "env", reason="forged"))

    attacks = _repeat(running, bye, 0.2)
    report = running.finish()
    assert attacks >= 3
    _assert_everyone_acted(run, report)
    assert report["processes"]["env"]["dropped.bad_auth"] >= 6


def test_a_forged_bye_from_the_env_host_is_refused(bundle: Path, tmp_path: Path) -> None:
    """tcp: BYE "from env" to agent a1 through a connection whose routing id is ``env``. Before,
    a1 exited with code 0 (and a clean exit is not restarted)."""
    run = tmp_path / "run"
    running = Running(_settings(bundle, run, "tcp"), run)
    a1 = running.stepping()["a1"]
    ctx = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.ROUTING_ID, b"env")
    sock.connect(a1)
    try:
        attacks = _repeat(running, lambda: sock.send_multipart(_forge("BYE", "env", reason="x")))
        report = running.finish()
    finally:
        sock.close(0)
        ctx.term()
    assert attacks >= 3
    _assert_everyone_acted(run, report)
    assert report["processes"]["a1"]["dropped.bad_auth"] >= 3


def test_a_forged_roster_does_not_repoint_anyone(bundle: Path, tmp_path: Path) -> None:
    """udp: a ROSTER "from ctl" telling every agent that the env host is the attacker's socket.
    Before, the agents sent the attacker their actions (and the real env host defaulted them)."""
    run = tmp_path / "run"
    running = Running(_settings(bundle, run, "udp"), run)
    endpoints = running.stepping()
    trap = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    trap.bind(("127.0.0.1", 0))
    trap.setblocking(False)
    fake = f"udp://127.0.0.1:{trap.getsockname()[1]}"
    caught = 0

    def roster() -> None:
        nonlocal caught
        for name, endpoint in endpoints.items():
            if name.startswith("a"):
                _udp_send(endpoint, _forge("ROSTER", "ctl", version=2, endpoints={"env": fake}))
        while True:
            try:
                trap.recv(65536)
                caught += 1
            except BlockingIOError:
                break

    try:
        attacks = _repeat(running, roster, 0.2)
        report = running.finish()
    finally:
        trap.close()
    assert attacks >= 3
    assert caught == 0, f"the attacker received {caught} datagrams"
    _assert_everyone_acted(run, report)


def test_a_forged_coordinator_claim_is_refused(bundle: Path, tmp_path: Path) -> None:
    """udp: COORD claiming that a5 coordinates at epoch 1002 (an epoch that names a5), to every
    other agent. Before, the agents followed the claim for the rest of the run."""
    run = tmp_path / "run"
    running = Running(_settings(bundle, run, "udp"), run)
    endpoints = running.stepping()

    def claim() -> None:
        for name, endpoint in endpoints.items():
            if name.startswith("a") and name != "a5":
                _udp_send(endpoint, _forge("COORD", "a5", epoch=1002, leader=5))

    attacks = _repeat(running, claim, 0.3)
    report = running.finish()
    assert attacks >= 3
    assert report["events"]["final_epoch"] < 1000
    epochs = [p.get("agent.epoch", 0) for p in report["processes"].values()]
    assert max(epochs) < 1000, epochs
    assert sum(p.get("dropped.bad_auth", 0) for p in report["processes"].values()) >= 15


def test_forged_reconstructions_are_refused(bundle: Path, tmp_path: Path) -> None:
    """udp: agent a0 is blind from step 10 on; the attacker sends it RECONs for the steps around
    the current one (read from the launcher's status line), from a4 at epoch 1001 (which names
    a4), with an observation of 77s. Before, the blind agent acted on them."""
    run = tmp_path / "run"
    schedule = tmp_path / "loss.yaml"
    schedule.write_text("- {steps: '10-', agents: [0]}\n")
    loss = {"model": "schedule", "schedule": str(schedule)}
    running = Running(_settings(bundle, run, "udp", loss=loss), run)
    a0 = running.stepping()["a0"]
    obs = np.full(load_manifest(bundle).spec.obs_dim, 77.0, np.float32)

    def recon() -> None:
        t = running.step
        for step in range(max(0, t - 2), t + 16):
            frames = _forge(
                "RECON", "a4", ep=0, step=step, epoch=1001, start=0, arrays={"obs": obs}
            )
            _udp_send(a0, frames)

    attacks = _repeat(running, recon, 0.03)
    report = running.finish()
    assert attacks >= 20
    rec = np.load(next((run / "records").glob("a0-*.npz")))
    assert len(rec["recon_t"]) > 50  # the real coordinator served the blind steps
    assert not np.any(rec["recon_obs"] == 77.0) and not np.any(rec["act_obs"] == 77.0)
    assert report["processes"]["a0"]["dropped.bad_auth"] >= 100


def test_statistics_nobody_asked_for_stay_out_of_the_report(bundle: Path, tmp_path: Path) -> None:
    """udp, an insecure swarm (no key, so only the rule stops it): STATS "from wm" in a swarm
    without a world-model node, sent while the env host steps. Before, they were in the report."""
    run = tmp_path / "run"
    running = Running(_settings(bundle, run, "udp", insecure=True), run)
    env = running.stepping()["env"]
    stats = {"counts": {"forged": 1}, "names": []}
    attacks = _repeat(running, lambda: _udp_send(env, _forge("STATS", "wm", **stats)), 0.3)
    report = running.finish()
    assert attacks >= 3
    assert "wm" not in report["processes"]
    assert report["processes"]["env"]["dropped.unasked"] >= 3


# -- the nodes themselves ------------------------------------------------------------------------


def _poll_until(node: Any, want: int, timeout: float = 10.0) -> list:
    got: list = []
    deadline = time.monotonic() + timeout
    while len(got) < want and time.monotonic() < deadline:
        got += node.poll(20)
    return got


def test_a_replayed_datagram_is_dropped(tmp_path: Path) -> None:
    """An on-path attacker captures one authenticated datagram and sends it again: the receiver
    takes it once (``replayed``); the same bytes to another addressee, or a message signed with
    another key, fail the tag (``bad_auth``)."""
    key = load_key(generate_key(tmp_path / "swarm.key"))
    known = {"a0", "a1", "a2"}.__contains__
    a0 = DatagramNode("a0", "udp://127.0.0.1:0", known)
    a1 = DatagramNode("a1", "udp://127.0.0.1:0", known)
    a2 = DatagramNode("a2", "udp://127.0.0.1:0", known)
    tap = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    tap.bind(("127.0.0.1", 0))
    tap.settimeout(5.0)
    try:
        for node in (a0, a1, a2):
            node.auth = Auth(key)
        a0.connect("a1", f"udp://127.0.0.1:{tap.getsockname()[1]}")  # the attacker in the path
        assert a0.send("a1", "HB", epoch=3, leader=2)
        captured = tap.recv(65536)
        for endpoint in (a1.endpoint, a1.endpoint, a2.endpoint):
            tap.sendto(captured, parse_endpoint(endpoint))
        got = _poll_until(a1, 1)
        time.sleep(0.2)
        got += a1.poll(50)
        assert [m.type for m in got] == ["HB"] and got[0]["epoch"] == 3
        assert a1.stats.dropped["replayed"] == 1
        assert not _poll_until(a2, 1, 1.0) and a2.stats.dropped["bad_auth"] == 1
        # a member of another swarm, or a guess: another key
        outsider = DatagramNode("a0", "udp://127.0.0.1:0", known)
        outsider.auth = Auth(OTHER_KEY)
        outsider.connect("a1", a1.endpoint)
        assert outsider.send("a1", "HB", epoch=9, leader=2)
        assert not _poll_until(a1, 1, 1.0) and a1.stats.dropped["bad_auth"] == 1
        outsider.close()
    finally:
        tap.close()
        for node in (a0, a1, a2):
            node.close()


def test_a_zeromq_peer_with_another_key_is_refused(tmp_path: Path) -> None:
    """tcp: the same over ZeroMQ: a peer signing with the swarm's key is heard, one with another
    key (or none) is not, whatever name it claims."""
    key = load_key(generate_key(tmp_path / "swarm.key"))
    known = {"a0", "a1", "env"}.__contains__
    inbox = Node("a1", "tcp://127.0.0.1:*", known)
    inbox.auth = Auth(key)
    peers = [Node("a0", "tcp://127.0.0.1:*", known) for _ in range(3)]
    peers[0].auth, peers[1].auth = Auth(key), Auth(OTHER_KEY)
    try:
        for peer in peers:
            peer.connect("a1", inbox.endpoint)
        deadline = time.monotonic() + 10
        heard: list = []
        while not heard:
            assert time.monotonic() < deadline, "the keyed peer was never heard"
            for peer in peers:
                peer.send("a1", "HB", epoch=1, leader=0)
            heard = [m for m in inbox.poll(20) if m.type == "HB"]
            time.sleep(0.01)
        time.sleep(0.2)
        heard += inbox.poll(50)
        assert inbox.stats.dropped["bad_auth"] >= 2
        sent = peers[0].stats.tx_msgs["HB"]
        assert len(heard) == sent and inbox.stats.rx_msgs["HB"] == sent
    finally:
        for node in (inbox, *peers):
            node.close()


def test_a_roster_carries_its_key_and_portable_paths(bundle: Path, tmp_path: Path) -> None:
    """`rmio swarm roster` writes a key beside the roster and names it, and the bundle, relative to
    the roster, so the folder can be copied anywhere; a roster with neither a key nor `insecure`
    is refused; `rmio swarm keys` gives one a key; a `bind` entry is where a role binds while the
    others reach the endpoint it advertises."""
    import shutil

    import yaml

    from rmio.errors import ConfigError
    from rmio.runtime.launcher import roster_keys, write_roster
    from rmio.runtime.settings import Roster

    folder = tmp_path / "deploy"
    shutil.copytree(bundle, folder / "bundle")
    settings = swarm_settings(folder / "bundle", "results", transport="tcp")
    write_roster(settings, folder / "roster.yaml", "10.0.0.5", 6000)
    data = yaml.safe_load((folder / "roster.yaml").read_text())
    assert data["settings"]["bundle"] == "bundle" and data["settings"]["key_file"] == "roster.key"
    assert (folder / "roster.key").stat().st_mode & 0o077 == 0
    moved = shutil.move(folder, tmp_path / "elsewhere")
    roster = Roster.load(Path(moved) / "roster.yaml")
    assert Path(roster.settings.bundle) == Path(moved) / "bundle"
    assert len(load_key(roster.settings.key_file)) == 32
    # no key, not insecure: refused; a key makes it loadable again
    data["settings"].pop("key_file")
    data["bind"] = {"env": "tcp://0.0.0.0:6000"}
    bare = Path(moved) / "bare.yaml"
    bare.write_text(yaml.safe_dump(data))
    with pytest.raises(ConfigError, match="rmio swarm keys"):
        Roster.load(bare)
    key = roster_keys(bare)
    again = Roster.load(bare)
    assert Path(again.settings.key_file) == key.resolve() and key.name == "bare.key"
    assert yaml.safe_load(bare.read_text())["settings"]["key_file"] == "bare.key"
    assert again.bind_for("env") == "tcp://0.0.0.0:6000"
    assert again.bind_for("a0") == again.endpoints["a0"] == "tcp://10.0.0.5:6001"


@pytest.mark.parametrize("key_bytes", [32, 64, 100])
def test_tags_bind_key_addressee_and_every_byte(key_bytes: int) -> None:
    """Keyed BLAKE2b over the addressee, seq and frames: the same key opens, a key that differs in
    one byte, another addressee or one changed byte does not (key files longer than BLAKE2b's
    64-byte key are hashed down to it, and their last bytes still count)."""
    key = bytes(range(key_bytes))
    frames = [encode("HB", "a0", inc=1, epoch=0, leader=-1)[0], b"payload"]
    sealed = Auth(key).seal("a1", frames)
    assert Auth(key).open("a1", sealed) is not None
    other = key[:-1] + bytes([key[-1] ^ 1])
    assert Auth(other).open("a1", sealed) is None
    assert Auth(key).open("a2", sealed) is None
    changed = [*sealed[:1], b"paylOad", sealed[-1]]
    assert Auth(key).open("a1", changed) is None
