"""Where a reconstruction round's time goes: the milestones of every loss step, from the env host's
fan-out.

    python bench/swarm_timeline.py                       # tiny HalfCheetah 6x1 bundle, l = 20,
                                                         # 3000 steps
    python bench/swarm_timeline.py --bundle DIR --steps 1000 --p-loss 0.3
    python bench/swarm_timeline.py --transport ipc     # the launcher's default transport

Runs a free-running swarm (tcp by default, incremental world model, Bernoulli loss) with
``RMIO_TRACE`` set, so every process records its milestones (rmio.runtime.timeline), then prints,
for the steps where some agent was blind, when each milestone happened after the env host started
sending that step's STEP messages, and how often each process's event loop woke up per step.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from collections import defaultdict
from pathlib import Path

import numpy as np

from rmio.runtime.timeline import cpu_ticks, steal_percent
from rmio.testing import launch, tiny_bundle

MILESTONES = (
    ("fanned", "env host has sent every STEP"),
    ("first_step", "first agent has its STEP"),
    ("last_step", "last agent has its STEP"),
    ("last_push", "last streamed step sent"),
    ("last_push_rx", "coordinator has every streamed step"),
    ("compute", "coordinator starts the world model"),
    ("recon_sent", "coordinator has sent every RECON"),
    ("recon", "last blind agent has its RECON"),
    ("last_action", "env host has every ACTION"),
)


def load(trace_dir: Path) -> dict[str, list[list]]:
    return {p.stem: json.loads(p.read_text()) for p in sorted(trace_dir.glob("*.json"))}


def milestones(
    traces: dict[str, list[list]], skip: int = 100
) -> tuple[dict[str, list[float]], dict[str, float]]:
    """Per milestone, its time (ms after the fan-out began) in every step with a blind agent;
    wake-ups per step."""
    fanout = {e[2]: e[0] for e in traces["env"] if e[1] == "fanout"}
    at: dict[int, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))

    def put(seq: int, key: str, ns: int) -> None:
        if seq in fanout:
            at[seq][key].append((ns - fanout[seq]) / 1e6)

    for e in traces["env"]:
        if e[1] in ("fanned", "action"):
            put(e[2], e[1], e[0])
    for name, events in traces.items():
        if name == "env":
            continue
        for e in events:
            if e[1] == "step":
                put(e[2], "step", e[0])
                if not e[3]:
                    put(e[2], "blind", e[0])
            elif e[1] in ("pushed", "push_rx", "compute", "recon_sent", "recon"):
                put(e[2], e[1], e[0])
    rows: dict[str, list[float]] = defaultdict(list)
    for seq, m in at.items():
        if seq < skip or not m["blind"] or not m["recon"]:
            continue
        pick = {
            "fanned": min(m["fanned"]),
            "first_step": min(m["step"]),
            "last_step": max(m["step"]),
            "last_push": max(m["pushed"], default=np.nan),
            "last_push_rx": max(m["push_rx"], default=np.nan),
            "compute": min(m["compute"], default=np.nan),
            "recon_sent": max(m["recon_sent"], default=np.nan),
            "recon": max(m["recon"]),
            "last_action": max(m["action"], default=np.nan),
        }
        for key, value in pick.items():
            rows[key].append(value)
    steps = max(len(fanout), 1)
    wakes = {
        name: sum(1 for e in events if e[1] == "wake") / steps for name, events in traces.items()
    }
    return rows, wakes


def gc_pauses(traces: dict[str, list[list]]) -> str:
    """Garbage collections after the first fan-out, over all processes: how many, and the
    longest."""
    start = min((e[0] for e in traces["env"] if e[1] == "fanout"), default=0)
    pauses = [
        e[3] / 1e3 for events in traces.values() for e in events if e[1] == "gc" and e[0] > start
    ]
    return (
        f"garbage collections during the run: {len(pauses)}, longest "
        f"{max(pauses, default=0.0):.2f} ms"
    )


def cpu_and_queue(traces: dict[str, list[list]], steps: int) -> list[str]:
    """Per process, ms per env step that its event-loop thread and its ZeroMQ I/O thread ran on a
    CPU and waited, runnable, for one (the two schedstat snapshots around the loop), and their time
    slices."""
    lines = [
        "| process | loop thread: CPU / waiting for a CPU (ms per step) | ZeroMQ I/O thread: CPU "
        "/ waiting | slices per step (both) |",
        "|---|---|---|---|",
    ]
    for name, events in sorted(traces.items()):
        snaps: dict[str, list[list]] = defaultdict(list)
        for e in events:
            if e[1] == "sched":
                snaps[e[2]].append(e[3:6])
        io = [k for k in snaps if k.startswith("ZMQbg/IO")]
        cells, slices = [], 0.0
        for keys in (["loop"], io):
            done = [snaps[k] for k in keys if len(snaps[k]) == 2]
            if not done:
                cells.append("-")
                continue
            cpu = sum(b[0] - a[0] for a, b in done) / 1e6 / steps
            wait = sum(b[1] - a[1] for a, b in done) / 1e6 / steps
            slices += sum(b[2] - a[2] for a, b in done) / steps
            cells.append(f"{cpu:.2f} / {wait:.2f}")
        lines.append(f"| {name} | {cells[0]} | {cells[1]} | {slices:.1f} |")
    return lines


def steal_share(before: list[int] | None, after: list[int] | None) -> str:
    share = steal_percent(before, after)
    return "" if share is None else f"; host steal {share:.1f}%"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--bundle", type=Path, default=None, help="6-agent bundle (default: tiny random, l = 20)"
    )
    parser.add_argument("--steps", type=int, default=1000, help="steps per episode (3 episodes)")
    parser.add_argument("--p-loss", type=float, default=0.2)
    parser.add_argument(
        "--transport",
        choices=("tcp", "ipc", "udp"),
        default="tcp",
        help="tcp (loopback, as the bench reports) or ipc (the launcher's default)",
    )
    parser.add_argument(
        "--out", type=Path, default=Path(tempfile.gettempdir()) / "rmio-swarm-timeline"
    )
    args = parser.parse_args()

    bundle = args.bundle or tiny_bundle(args.out / "bundles", "mamujoco/HalfCheetah-6x1", 20)
    trace_dir = args.out / "trace"
    for old in trace_dir.glob("*.json"):
        old.unlink()
    os.environ["RMIO_TRACE"] = str(trace_dir)
    ticks = cpu_ticks()
    rep = launch(
        bundle,
        args.out / "run",
        steps=args.steps,
        transport=args.transport,
        wm_mode="incremental",
        loss={"model": "bernoulli", "p_loss": args.p_loss},
    )
    steal = steal_share(ticks, cpu_ticks())
    traces = load(trace_dir)
    rows, wakes = milestones(traces)
    r = rep["latency"]["reconstruction_round (blind agent)"]
    print(
        f"# Timeline of {len(rows['recon'])} loss steps ({os.cpu_count()} cores, load "
        f"{os.getloadavg()[0]:.1f}; {rep['env_steps'] / rep['seconds']:.0f} steps/s; round at the "
        f"blind agent p50 {r['p50_ms']:.2f} / p99 {r['p99_ms']:.2f} ms{steal})\n"
    )
    print("| milestone (ms after the env host starts the STEP fan-out) | p50 | p90 | p99 |")
    print("|---|---|---|---|")
    for key, text in MILESTONES:
        v = np.asarray(rows[key], np.float64)
        v = v[~np.isnan(v)]
        if v.size:
            p50, p90, p99 = np.percentile(v, [50, 90, 99])
            print(f"| {text} | {p50:.2f} | {p90:.2f} | {p99:.2f} |")
    print(
        "\nevent-loop wake-ups per env step: "
        + ", ".join(f"{k} {v:.1f}" for k, v in sorted(wakes.items()))
    )
    print(gc_pauses(traces))
    print("\nwhere each process's time went, from the scheduler's counters over the whole run:\n")
    print("\n".join(cpu_and_queue(traces, max(1, rep["env_steps"]))))


if __name__ == "__main__":
    main()
