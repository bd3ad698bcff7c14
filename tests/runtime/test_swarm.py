"""Real swarms on loopback (ipc, tcp, udp): reconstruction, silence at p_loss 0, blackout, the
world-model node."""

from __future__ import annotations

import glob
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from swarm_helpers import run_swarm, swarm_settings

from rmio.evaluation.reference import evaluate
from rmio.runtime.models import WorldModelRunner

pytestmark = [pytest.mark.timeout(120), pytest.mark.slow]


def delivered(run_dir: Path) -> dict[tuple[int, int, int], tuple[np.ndarray, int]]:
    """(episode, step, agent) -> (reconstruction the agent received, first step of its replay)."""
    out = {}
    for path in glob.glob(str(run_dir / "records" / "a*.npz")):
        j = int(Path(path).name.split("-")[0][1:])
        rec = np.load(path)
        for e, t, row, s in zip(
            rec["recon_ep"], rec["recon_t"], rec["recon_obs"], rec["recon_start"], strict=True
        ):
            out[(int(e), int(t), j)] = (row, int(s))
    return out


def check_reconstructions(bundle: Path, run_dir: Path) -> int:
    """Every blind agent, and only those, got exactly what the in-process world model computes on
    the same window of the env host's records. Returns how many reconstructions were checked."""
    env = np.load(run_dir / "records" / "env.npz")
    index = {(int(e), int(t)): k for k, (e, t) in enumerate(zip(env["ep"], env["t"], strict=True))}
    got = delivered(run_dir)
    lost = {
        (int(e), int(t), int(j))
        for e, t, m in zip(env["ep"], env["t"], env["observed"], strict=True)
        for j in np.flatnonzero(~m)
    }
    assert set(got) == lost
    wm = WorldModelRunner(bundle)
    for (e, t, j), (row, start) in got.items():
        rows = [index[(e, h)] for h in range(start, t + 1)]
        prev = np.stack(
            [
                env["actions"][index[(e, h)]] if h >= 0 else np.zeros_like(env["actions"][0])
                for h in range(start - 1, t)
            ]
        )
        _, recon = wm.replay(env["obs"][rows], prev, env["observed"][rows].astype(np.float32))
        assert np.array_equal(recon[-1, j], row), f"episode {e} step {t} agent {j}"
    return len(got)


def assert_clean(report: dict[str, Any]) -> None:
    ev = report["events"]
    assert ev.get("agents.internal_errors", 0) == 0
    assert ev.get("agents.recon_unexpected_observing", 0) == 0
    assert ev.get("stats_missing", 0) == 0


def reference_returns(settings: Any, recon: str = "world-model") -> list[float]:
    rows = evaluate(
        settings.bundle,
        settings.env_config(),
        settings.loss_config(),
        episodes=settings.episodes,
        seed=settings.seed,
        recon=recon,
        wm_mode=settings.wm_mode,
    )
    return [r["return"] for r in rows]


@pytest.mark.parametrize(
    ("transport", "stream_steps"),
    [("ipc", None), ("ipc", 0), ("udp", None)],
    ids=["ipc-streamed", "ipc-pull-only", "udp-streamed"],
)
def test_reconstruction_reaches_exactly_the_blind_agents(
    bundle: Path, tmp_path: Path, transport: str, stream_steps: int | None
) -> None:
    settings = swarm_settings(
        bundle,
        tmp_path,
        steps=40,
        episodes=2,
        record=True,
        transport=transport,
        step_deadline_ms=1000.0,
        stream_steps=stream_steps,
    )
    report, _ = run_swarm(settings, tmp_path / "run")
    assert_clean(report)
    ev = report["events"]
    # after the first rounds, agents stream their steps and rounds need no GATHER
    if stream_steps is None:
        assert ev["agents.pushes"] == ev["agents.pushes_received"] > 100
        assert ev["agents.rounds_without_gather"] > 0.8 * ev["agents.rounds"]
    else:
        assert "agents.pushes" not in ev and "agents.rounds_without_gather" not in ev
        assert report["traffic"]["GATHER"]["messages"] >= 5 * ev["agents.rounds"]
    assert (
        report["events"].get("deadline_misses", 0) == 0
        and report["events"].get("agents.recon_miss", 0) == 0
    )
    assert check_reconstructions(bundle, tmp_path / "run") > 20
    # nothing was late, so the swarm's decisions are the in-process evaluation's, step for step
    assert [ep["return"] for ep in report["episodes"]] == reference_returns(settings)
    ev = report["events"]
    lost_pairs = sum(round(ep["lost_fraction"] * ep["steps"] * 6) for ep in report["episodes"])
    assert report["traffic"]["RECON"]["messages"] == ev["agents.recon_sent"]
    assert ev["agents.recon_sent"] + ev.get("agents.recon_self", 0) == lost_pairs
    assert (tmp_path / "run" / "report.md").is_file()


@pytest.mark.parametrize("transport", ["tcp", "udp"])
def test_no_communication_beyond_heartbeats_at_p_loss_0(
    bundle: Path, tmp_path: Path, transport: str
) -> None:
    settings = swarm_settings(
        bundle,
        tmp_path,
        steps=40,
        transport=transport,
        loss={"model": "bernoulli", "p_loss": 0.0},
        step_deadline_ms=1000.0,
    )
    report, _ = run_swarm(settings, tmp_path / "run")
    assert_clean(report)
    agents = {name: counts for name, counts in report["processes"].items() if name.startswith("a")}
    assert len(agents) == 6
    agent_types = {
        k.split(".")[1]
        for counts in agents.values()
        for k, v in counts.items()
        if k.startswith("tx_msgs.") and v
    }
    assert "ACTION" in agent_types and agent_types <= {"HB", "HELLO", "ACTION", "REGISTER"}, (
        agent_types
    )
    assert "protocol" not in report["traffic_by_category"]
    assert [ep["return"] for ep in report["episodes"]] == reference_returns(settings)


def test_total_blackout_runs_incrementally(bundle: Path, tmp_path: Path) -> None:
    """p_loss 1.0: nobody observes, the lowest live agent coordinates from the prior every step, and
    in incremental mode each reconstruction equals a replay from the first blind step."""
    settings = swarm_settings(
        bundle,
        tmp_path,
        steps=30,
        record=True,
        loss={"model": "bernoulli", "p_loss": 1.0},
        wm_mode="incremental",
        step_deadline_ms=1000.0,
    )
    report, _ = run_swarm(settings, tmp_path / "run")
    assert_clean(report)
    assert report["events"]["actions_world-model"] == 30 * 6
    assert check_reconstructions(bundle, tmp_path / "run") == 30 * 6
    starts = {start for _, start in delivered(tmp_path / "run").values()}
    assert starts == {
        0
    }  # one chain over the whole blackout (each round continued the previous one)
    assert report["events"]["agents.rounds_continued"] == 29
    assert report["episodes"][0]["return"] == reference_returns(settings)[0]


def test_world_model_node(bundle: Path, tmp_path: Path) -> None:
    settings = swarm_settings(
        bundle,
        tmp_path,
        steps=30,
        record=True,
        world_model="node",
        transport="tcp",
        loss={"model": "bernoulli", "p_loss": 0.5},
        step_deadline_ms=1000.0,
        wm_deadline_ms=500.0,
    )
    report, _ = run_swarm(settings, tmp_path / "run")
    assert_clean(report)
    assert report["processes"]["wm"]["wm.requests"] == report["events"]["agents.rounds"] > 10
    assert report["events"].get("agents.wm_node_timeout", 0) == 0
    assert check_reconstructions(bundle, tmp_path / "run") > 10


def test_idle_processes_do_not_spin(bundle: Path, tmp_path: Path) -> None:
    """At 3 steps per second (env host silent for longer than the liveness expiry between steps) the
    agents' event loops sleep: their CPU time stays far below the wall time."""
    settings = swarm_settings(bundle, tmp_path, steps=9, rate_hz=3.0, heartbeat_ms=50.0)
    report, _ = run_swarm(settings, tmp_path / "run")
    assert_clean(report)
    assert report["seconds"] > 2.5
    agents = {name: counts for name, counts in report["processes"].items() if name.startswith("a")}
    assert len(agents) == 6
    for name, counts in agents.items():
        assert counts["agent.loop_cpu_ms"] < 0.25 * 1000 * report["seconds"], (
            name,
            counts["agent.loop_cpu_ms"],
        )


def traced_run(
    bundle: Path, tmp_path: Path, monkeypatch: Any, steps: int
) -> tuple[dict[str, Any], dict[str, Any]]:
    """A clean tcp run with RMIO_TRACE set: its report and every process's timeline (env host, 6
    agents)."""
    import json

    monkeypatch.setenv("RMIO_TRACE", str(tmp_path / "trace"))
    settings = swarm_settings(
        bundle, tmp_path, steps=steps, transport="tcp", step_deadline_ms=1000.0
    )
    report, _ = run_swarm(settings, tmp_path / "run")
    assert_clean(report)
    traces = {p.stem: json.loads(p.read_text()) for p in (tmp_path / "trace").glob("*.json")}
    assert set(traces) == {"env", *(f"a{i}" for i in range(6))}
    return report, traces


def test_traced_swarm_writes_a_consistent_timeline(
    bundle: Path, tmp_path: Path, monkeypatch: Any
) -> None:
    """RMIO_TRACE makes every process write its milestones; for every reconstruction a blind agent
    got, the env host's fan-out of that step came first, then the agent's STEP, then its RECON, then
    its ACTION."""
    report, traces = traced_run(bundle, tmp_path, monkeypatch, steps=30)
    fanout = {e[2]: e[0] for e in traces["env"] if e[1] == "fanout"}
    action = {(e[2], e[3]): e[0] for e in traces["env"] if e[1] == "action"}
    assert len(fanout) == report["env_steps"]
    checked = 0
    for name, events in traces.items():
        if name == "env":
            continue
        step = {e[2]: e[0] for e in events if e[1] == "step"}
        for e in events:
            if e[1] == "recon":
                seq = e[2]
                assert fanout[seq] < step[seq] < e[0] < action[(seq, int(name[1:]))]
                checked += 1
    assert checked == report["events"]["agents.recon_received"] > 5
    computes = sum(e[1] == "compute" for events in traces.values() for e in events)
    assert (
        computes == report["events"]["agents.rounds"]
    )  # one world-model run per round, at its coordinator


@pytest.mark.tracing
def test_traced_processes_record_collections_and_scheduler_counters(
    bundle: Path, tmp_path: Path, monkeypatch: Any
) -> None:
    """Linux internals, apart from the protocol tests: each process ran a full collection before its
    loop, then froze, and recorded its threads' scheduler counters (/proc/self/task/*/schedstat)
    around the loop."""
    _, traces = traced_run(bundle, tmp_path, monkeypatch, steps=20)
    first_fanout = min(e[0] for e in traces["env"] if e[1] == "fanout")
    for name, events in traces.items():
        assert any(e[1] == "gc" and e[2] == 2 and e[0] < first_fanout for e in events), name
        loop = [e for e in events if e[1] == "sched" and e[2] == "loop"]
        assert (
            len(loop) == 2 and loop[0][0] < first_fanout < loop[1][0] and loop[1][3] > loop[0][3]
        ), (name, loop)
