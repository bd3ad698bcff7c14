"""`rmio swarm ...` as a user runs it: real subprocesses, exit codes, reports, and nothing left
running."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

pytestmark = [pytest.mark.timeout(150), pytest.mark.slow]


def rmio(*args: str, cwd: Path | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "rmio.cli", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=timeout,
    )


def processes_mentioning(text: str) -> list[psutil.Process]:
    out = []
    for proc in psutil.process_iter(["cmdline", "status"]):
        try:
            if proc.info["status"] != psutil.STATUS_ZOMBIE and any(
                text in part for part in proc.info["cmdline"] or []
            ):
                out.append(proc)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return out


def wait_gone(text: str, seconds: float = 10) -> list[psutil.Process]:
    deadline = time.monotonic() + seconds
    while (left := processes_mentioning(text)) and time.monotonic() < deadline:
        time.sleep(0.1)
    return left


def test_launch_writes_a_report_and_leaves_nothing_running(bundle: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    proc = rmio(
        "swarm",
        "launch",
        str(bundle),
        "--episodes",
        "2",
        "--steps",
        "30",
        "--p-loss",
        "0.3",
        "--transport",
        "tcp",
        "--out",
        str(out),
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "mean return (swarm)" in proc.stdout and "report:" in proc.stdout
    (run,) = out.glob("swarm-*")
    report = json.loads((run / "report.json").read_text())
    assert len(report["episodes"]) == 2 and set(report["baselines"]) == {
        "world-model",
        "zero-fill",
        "hold-last",
    }
    assert report["mean_return"] == pytest.approx(
        report["baselines"]["world-model"]["mean_return"], rel=0.05, abs=0.05
    )
    # The markdown report has the communication table: a row per message type that flowed, with its
    # category. Which types flow is only partly fixed: a heartbeat (HB) goes out once a peer has
    # been quiet for a heartbeat interval, which a 60-step run may outpace; greetings (HELLO,
    # liveness) and the STEP/ACTION exchange of every step always happen.
    traffic, md = report["traffic"], (run / "report.md").read_text()
    assert {"HELLO", "STEP", "ACTION"} <= set(traffic), sorted(traffic)
    assert traffic["HELLO"]["category"] == "liveness"
    for mtype, row in traffic.items():
        assert f"| {mtype} | {row['category']} |" in md, mtype
    assert not wait_gone(str(out))


@pytest.mark.parametrize("how", ["ctrl-c", "launcher-sigkill"])
def test_no_orphans_when_the_launcher_is_interrupted_or_killed(
    bundle: Path, tmp_path: Path, how: str
) -> None:
    out = tmp_path / "out"
    launcher = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "rmio.cli",
            "swarm",
            "launch",
            str(bundle),
            "--episodes",
            "5",
            "--steps",
            "1000",
            "--rate",
            "50",
            "--p-loss",
            "0.2",
            "--out",
            str(out),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 60
        while (
            time.monotonic() < deadline
            and not list(out.glob("swarm-*/records"))
            and len(processes_mentioning(str(out))) < 8
        ):
            time.sleep(0.2)
        time.sleep(2.0)  # mid-run: 5 episodes of 1000 steps at 50 steps/s take far longer
        children = processes_mentioning(str(out))
        assert len(children) >= 8, [
            c.cmdline() for c in children
        ]  # the launcher and its 7 children
        launcher.send_signal(signal.SIGINT if how == "ctrl-c" else signal.SIGKILL)
        launcher.wait(timeout=30)
        if how == "ctrl-c":
            assert launcher.returncode == 130, launcher.stderr.read() if launcher.stderr else ""
        assert not wait_gone(str(out), 15)
    finally:
        if launcher.poll() is None:
            launcher.kill()
        for proc in processes_mentioning(str(out)):
            proc.kill()


def test_user_errors_are_one_line(bundle: Path, tmp_path: Path) -> None:
    proc = rmio("swarm", "launch", str(bundle), "--scenario", "Ant-4x2", "--out", str(tmp_path))
    assert proc.returncode == 2 and "trained for mamujoco/HalfCheetah-6x1" in proc.stderr
    assert "Traceback" not in proc.stderr
    schedule = tmp_path / "loss.yaml"
    schedule.write_text("- {steps: '3-5', agents: [0, 1]}\n")
    proc = rmio(
        "swarm",
        "launch",
        str(bundle),
        "--p-loss",
        "0.2",
        "--loss-model",
        str(schedule),
        "--out",
        str(tmp_path),
    )
    assert proc.returncode == 2 and "not both" in proc.stderr
    proc = rmio("swarm", "launch", str(bundle), "--kill-agent", "9@3", "--out", str(tmp_path))
    assert proc.returncode == 2 and "AGENT@STEP" in proc.stderr


def _free_ports(count: int) -> int:
    for base in range(20000 + os.getpid() % 20000, 60000, 97):
        socks = []
        try:
            for k in range(count):
                for kind in (socket.SOCK_STREAM, socket.SOCK_DGRAM):
                    s = socket.socket(socket.AF_INET, kind)
                    socks.append(s)
                    s.bind(("127.0.0.1", base + k))
            return base
        except OSError:
            continue
        finally:
            for s in socks:
                s.close()
    raise RuntimeError("no free ports")


@pytest.mark.parametrize("transport", ["tcp", "udp"])
def test_roster_roles_started_one_by_one(bundle: Path, tmp_path: Path, transport: str) -> None:
    """The multi-host path on loopback: a roster, then each role as its own `rmio swarm ...`
    command, started in reverse order (the env host last), so that greetings must wait for their
    peers."""
    schedule = tmp_path / "loss.yaml"
    schedule.write_text("- {steps: '5-9', agents: [0, 2]}\n- {steps: '12', agents: all}\n")
    roster = tmp_path / "roster.yaml"
    proc = rmio(
        "swarm",
        "roster",
        str(bundle),
        "--episodes",
        "1",
        "--steps",
        "20",
        "--loss-model",
        str(schedule),
        "--world-model",
        "node",
        "--base-port",
        str(_free_ports(8)),
        "--no-baselines",
        "-o",
        str(roster),
        "--transport",
        transport,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    commands = proc.stdout.strip().splitlines()
    assert len(commands) == 8 and commands[0].startswith("rmio swarm env-host")
    assert f"{transport}://127.0.0.1:" in roster.read_text()
    procs = []
    for cmd in commands[::-1]:
        # the env host starts once the others are up and have greeted it in vain
        if cmd == commands[0]:
            time.sleep(4.0)
        procs.insert(
            0,
            subprocess.Popen(
                [sys.executable, "-m", "rmio.cli", *cmd.split()[1:]],
                cwd=tmp_path,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            ),
        )
    try:
        for p in procs:
            p.wait(timeout=90)
        outputs = [p.stdout.read() if p.stdout else "" for p in procs]
        assert all(p.returncode == 0 for p in procs), outputs
        assert "report:" in outputs[0]
        report = json.loads((tmp_path / "results" / "report.json").read_text())
        assert report["episodes"][0]["steps"] == 20
        ev = report["events"]
        blind = 2 * 5 + 6  # the schedule blinds 2 agents for 5 steps and all 6 for one step
        # each blind agent-step is served or, past its deadline (a cold 2-core machine), an explicit
        # miss
        assert ev["agents.recon_received"] + ev.get("agents.recon_miss", 0) == blind
        assert ev["agents.recon_received"] >= blind - 3
        assert report["processes"]["wm"]["wm.requests"] >= 6
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
