"""The fault suite off the loopback: the swarm across two network namespaces joined by a veth link
with nftables drop rules (rmio.netfaults), as a reliability engineer would try it from outside the
processes: random packet loss each way, partitions that heal, SIGKILL and SIGSTOP, roster mode
with every role started by hand. Root only (CI runs as root); skipped with the reason elsewhere.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from swarm_helpers import swarm_settings

from rmio.netfaults import NetLab, run_in_lab, unavailable
from rmio.runtime.launcher import Launcher, write_roster

WHY = unavailable()
pytestmark = [pytest.mark.timeout(300), pytest.mark.skipif(WHY is not None, reason=str(WHY))]


def _in_thread(launcher: Launcher, lab: NetLab) -> tuple[threading.Thread, dict[str, Any]]:
    result: dict[str, Any] = {}

    def go() -> None:
        try:
            result["report"] = run_in_lab(launcher, lab)
        except BaseException as exc:  # reported by the test, not lost in the thread
            result["error"] = exc

    thread = threading.Thread(target=go, daemon=True)
    thread.start()
    return thread, result


def _wait_stepping(launcher: Launcher, thread: threading.Thread, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not launcher.stepping and thread.is_alive() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert launcher.stepping, "the swarm never started stepping"


def _finish(thread: threading.Thread, result: dict[str, Any]) -> dict[str, Any]:
    thread.join(timeout=200)
    assert not thread.is_alive(), "the launch did not end"
    if "error" in result:
        raise result["error"]
    return result["report"]


def _no_protocol_violation(events: dict[str, Any]) -> None:
    assert events["stale_actions"] == 0
    assert events["reused_epochs"] == 0
    assert events["two_coordinator_epochs"] == 0
    assert events.get("agents.internal_errors", 0) == 0


def test_udp_steps_survive_random_loss_each_way(bundle: Path, tmp_path: Path) -> None:
    """5% of the packets dropped each way between the namespaces: lost STEPs, ACTIONs, loss reports
    and reconstructions are resent within the step (de-duplicated by step), so almost no step
    misses its deadline (before: a lost datagram was simply gone, 26-37% of steps missed)."""
    s = swarm_settings(bundle, tmp_path / "run", steps=300, transport="udp")
    with NetLab() as lab:
        lab.set_loss(0.05)
        report = run_in_lab(Launcher(s, tmp_path / "run"), lab)
    events = report["events"]
    assert report["env_steps"] == 300
    assert events["steps_missed"] <= 0.03 * 300, events
    assert events["step_resends"] > 0 and events.get("agents.action_resends", 0) > 0
    _no_protocol_violation(events)


@pytest.mark.parametrize("transport", ["tcp", "udp"])
def test_a_partition_that_heals_leaves_one_coordinator_per_epoch(
    bundle: Path, tmp_path: Path, transport: str
) -> None:
    """The two sides are cut from each other for 1.5 s, twice. Over udp the env host still
    reaches both sides, so each has its own coordinator (the odd agents elect one), and when the
    link heals the higher epoch wins and its loser steps down and tells its followers; over tcp
    the odd agents are cut from everything and catch up. No epoch ever has two claimants, none is
    claimed twice, and at the end every agent follows the same view."""
    run = tmp_path / "run"
    s = swarm_settings(bundle, run, steps=400, transport=transport, rate_hz=60.0)
    with NetLab() as lab:
        launcher = Launcher(s, run)
        thread, result = _in_thread(launcher, lab)
        _wait_stepping(launcher, thread)
        for _ in range(2):
            time.sleep(0.8)
            lab.partition(spare_env=transport == "udp")
            time.sleep(1.5)
            lab.heal()
        report = _finish(thread, result)
    events = report["events"]
    assert report["env_steps"] == 400 and events["elections"] >= (2 if transport == "udp" else 1)
    _no_protocol_violation(events)
    epochs = {report["processes"][f"a{i}"]["agent.epoch"] for i in range(s.n_agents)}
    assert len(epochs) == 1, epochs


def test_sigkill_from_outside_restarts_without_stale_actions(bundle: Path, tmp_path: Path) -> None:
    """Agents (the coordinator among them: agent 0 claims first) are SIGKILLed from outside, again
    and again, across a lossy link; each restarted incarnation acts only on steps sent to it and
    claims only epochs nobody used."""
    run = tmp_path / "run"
    s = swarm_settings(
        bundle,
        run,
        steps=500,
        transport="udp",
        rate_hz=60.0,
        rejoin_after_s=0.2,
        loss={"model": "bernoulli", "p_loss": 0.5},
    )
    kills = 0
    with NetLab() as lab:
        lab.set_loss(0.02)
        launcher = Launcher(s, run)
        thread, result = _in_thread(launcher, lab)
        _wait_stepping(launcher, thread)
        for victim in ("a0", "a1", "a0", "a3"):
            time.sleep(1.0)
            child = launcher.children[victim]
            if child.proc.poll() is None and child.endpoint is not None:
                os.kill(child.proc.pid, signal.SIGKILL)
                kills += 1
        report = _finish(thread, result)
    events = report["events"]
    assert kills >= 3 and events["agent_rejoins"] >= 2, (kills, events)
    _no_protocol_violation(events)


def test_a_stalled_agent_is_no_longer_waited_for(bundle: Path, tmp_path: Path) -> None:
    """One agent is SIGSTOPped for 2 s: after ``late_after`` missed deadlines the env host stops
    waiting for it, so the swarm goes on at its own pace instead of one step per deadline, and the
    agent is waited for again once it acts in time."""
    run = tmp_path / "run"
    s = swarm_settings(bundle, run, steps=600, transport="udp", step_deadline_ms=100.0)
    with NetLab() as lab:
        launcher = Launcher(s, run)
        thread, result = _in_thread(launcher, lab)
        _wait_stepping(launcher, thread)
        time.sleep(0.3)
        pid = launcher.children["a4"].proc.pid
        os.kill(pid, signal.SIGSTOP)
        time.sleep(2.0)
        os.kill(pid, signal.SIGCONT)
        report = _finish(thread, result)
    events = report["events"]
    # 2 s at one step per 100 ms deadline would be 20 steps missed; excluded after 3
    assert events["late_excluded"] > 0
    assert events["steps_missed"] <= s.late_after + 3, events
    _no_protocol_violation(events)


def test_roster_mode_across_namespaces_with_a_restart_by_hand(bundle: Path, tmp_path: Path) -> None:
    """Every role started by hand from a roster, the env host and the even agents on one side of a
    lossy link, the odd agents on the other; agent 1 is SIGKILLed and started again with the same
    command, as an operator would."""
    out = tmp_path / "out"
    s = swarm_settings(bundle, out, steps=300, transport="udp", rate_hz=60.0)
    s.startup_timeout_s = 30.0
    roster = tmp_path / "roster.yaml"
    procs: dict[str, subprocess.Popen] = {}
    with NetLab() as lab:
        lab.set_loss(0.03)
        write_roster(s, roster, host="127.0.0.1", base_port=47000 + os.getpid() % 2000)
        data = yaml.safe_load(roster.read_text())
        for name, endpoint in data["endpoints"].items():
            host = lab.placement(name)[1]
            data["endpoints"][name] = endpoint.replace("127.0.0.1", host)
        roster.write_text(yaml.safe_dump(data, sort_keys=False))

        def start(name: str, role: str) -> subprocess.Popen:
            cmd = [*lab.placement(name)[0], sys.executable, "-m", "rmio.runtime.proc", role]
            log = open(tmp_path / f"{name}.log", "ab")  # noqa: SIM115 - closed with the process
            return subprocess.Popen(
                [*cmd, "--name", name, "--roster", str(roster)], stdout=log, stderr=log
            )

        try:
            procs["env"] = start("env", "env-host")
            for i in range(s.n_agents):
                procs[f"a{i}"] = start(f"a{i}", "agent")
            deadline = time.monotonic() + 60
            while not (out / "claims").is_dir() and time.monotonic() < deadline:
                time.sleep(0.05)
            time.sleep(0.5)
            procs["a1"].kill()
            procs["a1"].wait(timeout=10)
            time.sleep(0.3)
            procs["a1"] = start("a1", "agent")
            assert procs["env"].wait(timeout=120) == 0, (tmp_path / "env.log").read_text()[-2000:]
        finally:
            for proc in procs.values():
                if proc.poll() is None:
                    proc.kill()
                proc.wait(timeout=10)
    report = json.loads((out / "report.json").read_text())
    events = report["events"]
    assert report["env_steps"] == 300 and events["agent_rejoins"] >= 1
    _no_protocol_violation(events)


def test_tcp_within_the_deadline_under_loss_once_the_minimum_rto_is_lowered(
    bundle: Path, tmp_path: Path
) -> None:
    """Over tcp a lost segment holds back everything behind it until the kernel retransmits it,
    at least 200 ms later by default (more than the 100 ms step deadline: 28% of steps missed
    at 5% drop). With the namespaces' minimum RTO at 5 ms, tcp stays within the deadline."""
    s = swarm_settings(bundle, tmp_path / "run", steps=300, transport="tcp")
    with NetLab(rto_min_ms=5) as lab:
        assert lab.rto_min_s("a") == lab.rto_min_s("b") == 0.005
        lab.set_loss(0.05)
        report = run_in_lab(Launcher(s, tmp_path / "run"), lab)
    events = report["events"]
    assert report["env_steps"] == 300
    assert events["steps_missed"] <= 0.03 * 300, events
    _no_protocol_violation(events)


def test_namespaces_of_a_killed_run_are_swept_by_the_next() -> None:
    """A launcher killed by SIGKILL cannot delete its namespaces; the next NetLab deletes those
    whose process is gone and leaves a live process's alone."""
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait(timeout=60)
    stale = f"rmio{dead.pid}a7"
    live = f"rmio{os.getpid()}b999"  # this process is alive: not stale (NetLab uses 1..250)
    for name in (stale, live):
        subprocess.run(["ip", "netns", "add", name], check=True, timeout=30)
    try:
        with NetLab():
            names = subprocess.run(
                ["ip", "netns", "list"], capture_output=True, text=True, timeout=30
            ).stdout
            assert stale not in names and live in names
    finally:
        for name in (stale, live):
            subprocess.run(["ip", "netns", "del", name], capture_output=True, timeout=30)


def test_a_local_firewall_error_is_not_a_dead_peer(tmp_path: Path) -> None:
    """A send refused by this host's own firewall fails with EPERM: counted as a local ``error``,
    never as ``unreachable``, so the roles do not mark a live peer dead for it (before, any failed
    datagram send did)."""
    from rmio.runtime.datagram import DatagramNode

    with NetLab() as lab:
        with lab.inside("a"):
            a = DatagramNode("a0", f"udp://{lab.addr['a']}:0", lambda name: True)
        with lab.inside("b"):
            b = DatagramNode("a1", f"udp://{lab.addr['b']}:0", lambda name: True)
        try:
            a.connect("a1", b.endpoint)
            assert a.send("a1", "HB", epoch=0, leader=-1)
            deadline = time.monotonic() + 5
            while not any(m.type == "HB" for m in b.poll(20)):
                assert time.monotonic() < deadline, "no datagram crossed the link"
            lab.firewall("a")
            assert not a.send("a1", "HB", epoch=0, leader=-1)
            assert a.last_fail == "error" and a.stats.send_fail["error"] == 1
            assert a.stats.send_fail["unreachable"] == 0 and not a.link_events[1:]
            lab.firewall("a", on=False)
            assert a.send("a1", "HB", epoch=0, leader=-1)
        finally:
            a.close()
            b.close()
