"""The swarm off the loopback: the acceptance figures of issue 18, measured across two network
namespaces (rmio.netfaults; root only).

    python bench/netfaults_bench.py            # everything (about 15 minutes on 2 cores)
    python bench/netfaults_bench.py --quick    # fewer runs and steps (a smoke test)

Runs the committed HalfCheetah 6x1 bundle (models/halfcheetah_6x1) with the env host, the launcher
and the even agents on one side of a veth link and the odd agents on the other, and measures:

* external SIGKILLs of the current coordinator (read from the env host's status line), again and
  again, with the launcher restarting it: stale actions, reused epochs, epochs with two
  claimants, the steps that missed their deadline, and the kills after which no blind agent had
  to fall back to hold-last beyond the step the coordinator died in;
* partitions of the link that heal (the agents cut from each other, not from the env host);
* random packet loss each way (nftables ``numgen random``) at 5% and 10%, over udp (resends within
  the step) and tcp: the share of steps that waited their whole deadline, and the return against
  the loss-free one on the same seeds;
* the world-model node SIGKILLed mid-run: the coordinator round after the kill, against
  on-agent reconstruction.

Prints one table per part and writes them to bench/results/netfaults.md. Every figure is from this
machine (2 CPU cores shared with other work), so timings follow its load.
"""

from __future__ import annotations

import argparse
import itertools
import os
import signal
import sys
import threading
import time
from pathlib import Path
from tempfile import TemporaryDirectory
from typing import Any

import numpy as np

from rmio.models import default_bundle
from rmio.netfaults import NetLab, run_in_lab, unavailable
from rmio.runtime.launcher import Launcher
from rmio.testing import swarm_settings

OUT = Path(__file__).resolve().parent / "results" / "netfaults.md"
EVENTS = ("stale_actions", "reused_epochs", "two_coordinator_epochs")


def bundle_path() -> Path:
    return Path(default_bundle()).parent / "halfcheetah_6x1"


def settings(run: Path, steps: int, transport: str, **kw: Any) -> Any:
    kw.setdefault("loss", {"model": "bernoulli", "p_loss": 0.3})
    return swarm_settings(bundle_path(), run, steps=steps, transport=transport, **kw)


def run_with(lab: NetLab, s: Any, run: Path, action: Any = None) -> dict[str, Any]:
    """One launch across ``lab``; ``action(launcher, status)`` runs in a thread once stepping."""
    status: dict[str, Any] = {}
    launcher = Launcher(s, run, on_status=status.update)
    stop = threading.Event()

    def drive() -> None:
        while not launcher.stepping and not stop.is_set():
            time.sleep(0.05)
        if not stop.is_set():
            action(launcher, status, stop)

    thread = threading.Thread(target=drive, daemon=True) if action else None
    if thread:
        thread.start()
    try:
        return run_in_lab(launcher, lab)
    finally:
        stop.set()
        if thread:
            thread.join(timeout=30)


def kill_coordinators(every_s: float, kills: list[float]) -> Any:
    def act(launcher: Launcher, status: dict[str, Any], stop: threading.Event) -> None:
        while not stop.wait(every_s):
            leader = status.get("coordinator", -1)
            child = launcher.children.get(f"a{leader}")
            if leader >= 0 and child and child.proc.poll() is None and child.endpoint:
                os.kill(child.proc.pid, signal.SIGKILL)
                kills.append(time.time())

    return act


def failovers(run: Path, kills: list[float]) -> list[int]:
    """For each kill: the steps, from the one under way, in which a blind surviving agent had to
    act on hold-last (no reconstruction in time) before reconstructions resumed. A failover within
    one step deadline is at most 1 (the step the coordinator died in)."""
    env = np.load(run / "records" / "env.npz")
    fallback: dict[int, int] = {}
    for path in (run / "records").glob("a*.npz"):
        rec = np.load(path)
        for t, kind in zip(rec["act_t"], rec["act_kind"], strict=True):
            if kind == "fallback":
                fallback[int(t)] = fallback.get(int(t), 0) + 1
    out = []
    for when in kills:
        later = np.flatnonzero(env["time"] >= when)
        if not later.size:
            continue
        t0 = int(env["t"][later[0]])
        steps = 0
        while fallback.get(t0 + steps, 0) and steps < 50:
            steps += 1
        out.append(steps)
    return out


def partitions(lab: NetLab, cycles: int, count: list[int]) -> Any:
    def act(launcher: Launcher, status: dict[str, Any], stop: threading.Event) -> None:
        for _ in range(cycles):
            if stop.wait(0.8):
                return
            lab.partition(spare_env=True)
            stop.wait(1.5)
            lab.heal()
            count[0] += 1

    return act


def kill_wm(after_s: float, when: list[float]) -> Any:
    def act(launcher: Launcher, status: dict[str, Any], stop: threading.Event) -> None:
        if not stop.wait(after_s):
            os.kill(launcher.children["wm"].proc.pid, signal.SIGKILL)
            when.append(time.monotonic())

    return act


def table(header: list[str], rows: list[list[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def faults(
    tmp: Path, quick: bool, transports: tuple[str, ...] = ("udp", "tcp", "ipc")
) -> tuple[str, str]:
    """Coordinator kills across the link with 2% loss (udp, tcp) and on the loopback without loss
    (ipc: unix sockets do not cross the link), then partition-heal cycles over udp."""
    runs, steps = (2, 300) if quick else (9, 500)
    rows, totals = [], {"kills": 0, "cycles": 0, **dict.fromkeys(EVENTS, 0), "elections": 0}
    fast: dict[str, list[int]] = {}
    for transport in transports:
        for k in range(runs if transport == "udp" else max(1, runs // 3)):
            kills: list[float] = []
            run = tmp / f"kill-{transport}-{k}"
            s = settings(run, steps, transport, rate_hz=60.0, record=True)
            s.seed = k
            s.rejoin_after_s = 0.2
            if transport == "ipc":
                report = _loopback_with(Launcher(s, run), kill_coordinators(1.0, kills))
            else:
                with NetLab() as lab:
                    lab.set_loss(0.02)
                    report = run_with(lab, s, run, kill_coordinators(1.0, kills))
            ev = report["events"]
            took = failovers(run, kills)
            totals["kills"] += len(kills)
            fast[transport] = fast.get(transport, []) + took
            for key in (*EVENTS, "elections"):
                totals[key] += ev[key]
            link = "loopback" if transport == "ipc" else "2% loss"
            rows.append(
                [f"SIGKILL coordinator ({transport}, {link})", len(kills), ev["elections"],
                 *(ev[e] for e in EVENTS), f"{ev['steps_missed']} / {report['env_steps']}",
                 f"{sum(x <= 1 for x in took)} / {len(took)}"]
            )  # fmt: skip
    for k in range(0 if "udp" not in transports else 1 if quick else 2):
        with NetLab() as lab:
            count = [0]
            s = settings(tmp / f"part-{k}", 400, "udp", rate_hz=60.0)
            s.seed = k
            report = run_with(lab, s, tmp / f"part-{k}", partitions(lab, 5, count))
        ev = report["events"]
        totals["cycles"] += count[0]
        for key in (*EVENTS, "elections"):
            totals[key] += ev[key]
        rows.append(
            ["partition 1.5 s, heal (udp)", f"{count[0]} cycles", ev["elections"],
             *(ev[e] for e in EVENTS), f"{ev['steps_missed']} / {report['env_steps']}", ""]
        )  # fmt: skip
    total = [
        "**total**",
        f"{totals['kills']} kills, {totals['cycles']} heals",
        totals["elections"],
        *(totals[e] for e in EVENTS),
        "",
        f"{sum(x <= 1 for v in fast.values() for x in v)} / {sum(map(len, fast.values()))}",
    ]
    header = ["run", "faults", "elections", *EVENTS, "steps missed / steps",
              "failovers within one step"]  # fmt: skip
    text = table(header, [*rows, total])
    within = ", ".join(
        f"{name} {sum(x <= 1 for x in v) / max(1, len(v)):.0%}" for name, v in fast.items()
    )
    summary = (
        f"{totals['kills']} coordinator kills and {totals['cycles']} partition-heal cycles: "
        f"{totals['stale_actions']} stale actions, {totals['reused_epochs']} reused epochs, "
        f"{totals['two_coordinator_epochs']} epochs with two claimants; failover within one step "
        f"deadline (no blind agent on hold-last after the step the coordinator died in): {within}"
    )
    return text, summary


def losses(tmp: Path, quick: bool) -> str:
    """Random drop each way: udp (resends within the step), tcp with the kernel's default minimum
    RTO (200 ms) and tcp with it lowered to 5 ms inside the namespaces."""
    steps = 300 if quick else 600
    rows = []
    base: dict[str, np.ndarray] = {}
    for transport, share, seeds, rto in [
        ("udp", 0.0, 5, None),
        ("udp", 0.05, 5, None),
        ("udp", 0.10, 5, None),
        ("tcp", 0.0, 3, None),
        ("tcp", 0.05, 3, None),
        ("tcp", 0.10, 3, None),
        ("tcp", 0.05, 3, 5.0),
        ("tcp", 0.10, 3, 5.0),
    ]:
        returns, missed, total, misses, recon, seconds, resends = [], 0, 0, 0, 0, 0.0, 0
        for seed in range(1 if quick else seeds):
            run = tmp / f"loss-{transport}-{share}-{rto}-{seed}"
            s = settings(run, steps, transport)
            s.seed = seed
            with NetLab(rto_min_ms=rto) as lab:
                lab.set_loss(share)
                report = run_with(lab, s, run)
            ev = report["events"]
            returns.append(report["mean_return"])
            missed += ev["steps_missed"]
            total += report["env_steps"]
            misses += ev["deadline_misses"]
            recon += ev.get("agents.recon_miss", 0)
            seconds += report["seconds"]
            resends += ev.get("step_resends", 0)
        ret = np.asarray(returns)
        base.setdefault(transport, ret)
        paired = ret - base[transport][: ret.size]
        sem = paired.std(ddof=1) / np.sqrt(paired.size) if paired.size > 1 else 0.0
        label = transport if transport == "udp" else f"tcp, min RTO {rto or 200:g} ms"
        rows.append(
            [label, f"{share:.0%}", ret.size, f"{missed / total:.1%}", misses, recon,
             f"{ret.mean():.1f} ± {ret.std():.1f}", f"{paired.mean():+.1f} ± {sem:.1f}",
             f"{seconds / ret.size:.1f}", resends]
        )  # fmt: skip
    return table(
        ["transport", "drop each way", "seeds", "steps missed", "agent deadline misses",
         "recon misses", "return (mean ± std over seeds)",
         "vs loss-free, same seeds (mean ± s.e.)", "seconds per run", "STEP resends"],
        rows,
    )  # fmt: skip


def wm_node(
    tmp: Path,
    quick: bool,
    repeats: int = 1,
    kill_at: float = 1.5,
    transports: tuple[str, ...] = ("ipc", "udp", "tcp"),
) -> str:
    """Rows alternate on-agent and node runs so a load change hits both placements alike."""
    steps = 300 if quick else 600
    rows = []
    for transport, rep, placement in itertools.product(
        transports, range(repeats), ("on-agent", "node")
    ):
        run = tmp / f"wm-{transport}-{placement}-{rep}"
        s = settings(run, steps, transport, world_model=placement)
        when: list[float] = []
        action = kill_wm(kill_at, when) if placement == "node" else None
        if transport == "ipc":  # unix sockets do not cross the link: plain loopback
            report = _loopback_with(Launcher(s, run), action)
        else:
            with NetLab() as lab:
                report = run_with(lab, s, run, action)
        ev = report["events"]
        lat = report["latency"]["coordinator_round"]
        rows.append(
            [transport + (f" #{rep + 1}" if repeats > 1 else ""),
             placement + (f" (killed at {kill_at:g} s)" if placement == "node" else ""),
             f"{lat['p50_ms'] or 0:.2f}", f"{lat['p99_ms'] or 0:.2f}",
             ev.get("agents.wm_node_timeout", 0), ev.get("agents.wm_node_skipped", 0),
             f"{report['seconds']:.1f}"]
        )  # fmt: skip
    return table(
        ["transport", "world model", "round p50 ms", "round p99 ms", "node timeouts",
         "rounds skipping the node", "seconds"],
        rows,
    )  # fmt: skip


def _loopback_with(launcher: Launcher, action: Any) -> dict[str, Any]:
    if action is None:
        return launcher.run()
    stop = threading.Event()
    status: dict[str, Any] = {}
    launcher.on_status = status.update

    def drive() -> None:
        while not launcher.stepping and not stop.is_set():
            time.sleep(0.05)
        if not stop.is_set():
            action(launcher, status, stop)

    thread = threading.Thread(target=drive, daemon=True)
    thread.start()
    try:
        return launcher.run()
    finally:
        stop.set()
        thread.join(timeout=30)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument(
        "--sections",
        default="faults,losses,wm",
        help="comma-separated subset of faults, losses, wm (the world-model node killed)",
    )
    parser.add_argument(
        "--repeats", type=int, default=1, help="alternating runs per row of the wm section"
    )
    parser.add_argument(
        "--kill-at",
        type=float,
        default=1.5,
        help="seconds into stepping at which the wm section kills the node (0: nearly every "
        "round runs without it)",
    )
    parser.add_argument(
        "--transports", default="ipc,udp,tcp", help="comma-separated transports of faults and wm"
    )
    args = parser.parse_args()
    why = unavailable()
    if why is not None:
        print(f"netfaults_bench: {why}", file=sys.stderr)
        return 2
    sections = set(args.sections.split(","))
    unknown = sections - {"faults", "losses", "wm"}
    unknown |= set(args.transports.split(",")) - {"ipc", "udp", "tcp"}
    if unknown or args.repeats < 1:
        print(f"netfaults_bench: unknown {sorted(unknown)} or --repeats < 1", file=sys.stderr)
        return 2
    load = [os.getloadavg()[0]]
    with TemporaryDirectory(prefix="rmio-netfaults-") as tmp:
        t = Path(tmp)
        if "faults" in sections:
            fault_table, summary = faults(t, args.quick, tuple(args.transports.split(",")))
            print(fault_table, "\n")
        if "losses" in sections:
            loss_table = losses(t, args.quick)
            print(loss_table, "\n")
        if "wm" in sections:
            wm_table = wm_node(
                t, args.quick, args.repeats, args.kill_at, tuple(args.transports.split(","))
            )
            print(wm_table, "\n")
    load.append(os.getloadavg()[0])
    print(f"load average {load[0]:.1f} at the start, {load[1]:.1f} at the end")
    if sections != {"faults", "losses", "wm"}:
        return 0  # a subset only prints: the results file keeps every section of one run
    text = "\n".join(
        [
            "# The swarm across two network namespaces (committed HalfCheetah 6x1 bundle, 2-core "
            f"VM{', quick' if args.quick else ''})",
            "",
            "Measured by `python bench/netfaults_bench.py`: the env host, the launcher and the "
            "even agents on one side of a veth link, the odd agents on the other; nftables drops "
            "packets at random on the link. Step deadline 100 ms, p_loss 0.3 (observations), one "
            f"episode per run. Load average {load[0]:.1f} at the start and {load[1]:.1f} at the "
            "end (a loaded machine delays processes beyond what the network does).",
            "",
            "## Restarts and partitions",
            "",
            summary + ".",
            "",
            fault_table,
            "",
            "## Random packet loss each way",
            "",
            "udp resends an unanswered STEP, loss report or GATHER every quarter step deadline; "
            "tcp waits for the kernel's retransmission, at least its minimum RTO: 200 ms by "
            "default, longer than the step deadline; the 5 ms rows lower it inside the "
            "namespaces (`sysctl net.ipv4.tcp_rto_min_us`, see docs/DEPLOY.md). The tcp rows "
            "compare with tcp's own loss-free runs.",
            "",
            loss_table,
            "",
            "## The world-model node killed mid-run",
            "",
            f"{'Alternating runs' if args.repeats > 1 else 'One run'} of 600 steps per row; "
            "the killed rows include the rounds through the node "
            "before the kill. Node timeouts are the rounds that waited for the dead node: the "
            "first after the kill, then one per retry (backoff from 0.25 s to 5 s).",
            "",
            wm_table,
            "",
        ]
    )
    OUT.write_text(text)
    print(f"written: {OUT.relative_to(Path.cwd()) if OUT.is_relative_to(Path.cwd()) else OUT}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
