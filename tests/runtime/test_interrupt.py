"""Ctrl-C on `rmio swarm launch` (issue 17, part 4): the env host stops after the step under way,
the report of what ran is written (marked interrupted), the launcher says where it is and exits
130, and nothing is left running. A real launcher process, a real SIGINT, sent once the launch
has printed that episodes finished."""

from __future__ import annotations

import json
import queue
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

pytestmark = [pytest.mark.timeout(240), pytest.mark.slow]


def _lines(stream: object, into: queue.Queue) -> None:
    for line in stream:  # type: ignore[attr-defined]
        into.put(line)
    into.put(None)


def _wait_for(lines: queue.Queue, seen: list[str], text: str, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            line = lines.get(timeout=max(0.0, deadline - time.monotonic()))
        except queue.Empty:
            return False
        if line is None:
            return False
        seen.append(line)
        if text in line:
            return True
    return False


@pytest.mark.parametrize("as_json", [False, True])
def test_ctrl_c_leaves_a_partial_report_and_exits_130(
    bundle: Path, tmp_path: Path, as_json: bool
) -> None:
    out = tmp_path / "out"
    launcher = subprocess.Popen(
        [
            sys.executable,
            *("-m", "rmio.cli", "swarm", "launch", str(bundle)),
            *("--episodes", "500", "--steps", "10", "--p-loss", "0.3"),
            *("--no-baselines", "--out", str(out)),
            *(("--json",) if as_json else ()),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    # with --json the human lines go to stderr, and stdout carries the summary alone
    lines: queue.Queue = queue.Queue()
    human = launcher.stderr if as_json else launcher.stdout
    other = launcher.stdout if as_json else launcher.stderr
    threading.Thread(target=_lines, args=(human, lines), daemon=True).start()
    rest: queue.Queue = queue.Queue()
    threading.Thread(target=_lines, args=(other, rest), daemon=True).start()
    seen: list[str] = []
    try:
        # two episodes done: the swarm is mid-run (500 would take minutes)
        assert _wait_for(lines, seen, "episode 1: return", 150), "".join(seen)[-3000:]
        launcher.send_signal(signal.SIGINT)
        assert launcher.wait(timeout=60) == 130
    finally:
        if launcher.poll() is None:
            launcher.kill()
            launcher.wait(timeout=10)
    _wait_for(lines, seen, "\0", 5)  # drain what is left
    tail: list[str] = []
    _wait_for(rest, tail, "\0", 5)
    (run,) = out.glob("swarm-*")
    report = json.loads((run / "report.json").read_text())
    assert report["interrupted"] is True
    assert 2 <= len(report["episodes"]) < 500 and report["env_steps"] >= 20
    assert all(ep["steps"] == 10 for ep in report["episodes"][:2])
    assert report["latency"]["decision_observing (env host)"]["n"] > 0  # statistics gathered
    assert "**Interrupted**" in (run / "report.md").read_text()
    assert f"partial report {run / 'report.json'}" in "".join(seen)
    if as_json:
        summary = json.loads("".join(tail))
        assert summary["interrupted"] is True and summary["report"] == str(run / "report.json")
        assert len(summary["episodes"]) == len(report["episodes"])
