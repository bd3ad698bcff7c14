"""`rmio swarm launch` as a user runs it: the live status line, the in-process baselines added to
the report once the swarm has exited, and the summary table. Application side: the runtime only runs
the swarm (rmio.runtime.launcher); evaluation comes after it (rmio.evaluation)."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import click

from rmio.evaluation.baselines import add_baselines
from rmio.netfaults import launch_lossy
from rmio.runtime.launcher import Interrupted, Launcher
from rmio.runtime.settings import SwarmSettings


def run_launch(
    settings: SwarmSettings,
    out_root: Path,
    console: Any,
    net_loss: float | None = None,
    as_json: bool = False,
    net_rto_min: float | None = None,
) -> dict[str, Any]:
    """`rmio swarm launch`: run with a live status line, then print the summary and the report's
    paths. With ``net_loss`` the swarm runs across two network namespaces whose link drops that
    share of the packets each way (rmio.netfaults; root only), with ``net_rto_min`` ms as the
    minimum TCP retransmission timeout there. ``as_json``: the summary as one
    JSON document on stdout (``console`` should then write to stderr). Ctrl-C prints the partial
    report's paths and raises Interrupted."""
    from rich.live import Live
    from rich.text import Text

    run_dir = Path(out_root) / f"swarm-{time.strftime('%Y%m%d-%H%M%S')}"
    console.print(
        f"[bold]rmio swarm[/]: {settings.env.get('scenario')} with {settings.n_agents} agent "
        f"processes, loss {settings.loss}, world model {settings.world_model}, transport "
        f"{settings.transport}"
        + (f", {net_loss:.0%} packet loss each way between two namespaces" if net_loss else "")
    )
    line = Text("starting processes...")
    with Live(line, console=console, transient=True, refresh_per_second=8) as live:

        def on_status(st: dict[str, Any]) -> None:
            if st.get("phase") == "report":
                live.update(Text("collecting statistics..."))
                return
            text = (
                f"episode {st['episode']} step {st['step']}  return {st['return']:.2f}  blind "
                f"{st['blind']}  dead {st['dead']}  coordinator a{st['coordinator']} (epoch "
                f"{st['epoch']})  {st['msgs_per_step']:.1f} msgs/step"
            )
            if st.get("done"):
                live.console.print(
                    f"episode {st['episode']}: return {st['return']:.2f} in {st['step']} steps"
                )
            live.update(Text(text))

        launcher = Launcher(settings, run_dir, on_status=on_status)
        try:
            report = (
                launcher.run()
                if net_loss is None
                else launch_lossy(launcher, net_loss, net_rto_min)
            )
        except Interrupted as stop:  # Ctrl-C: the partial report, then exit code 130
            if stop.report is not None:
                md = stop.report.with_suffix(".md")
                console.print(f"interrupted: partial report {stop.report} and {md}")
                if as_json:
                    partial = json.loads(stop.report.read_text())
                    click.echo(json.dumps(launch_summary(partial, run_dir)))
            raise
        if settings.baselines:
            live.update(Text("evaluating in-process baselines..."))
            add_baselines(report, settings, run_dir)
    print_summary(report, console)
    console.print(f"report: {run_dir / 'report.json'} and {run_dir / 'report.md'}")
    if as_json:
        click.echo(json.dumps(launch_summary(report, run_dir)))
    return report


def launch_summary(report: dict[str, Any], run_dir: Path) -> dict[str, Any]:
    """A launch in one machine-readable document (``rmio swarm launch --json``)."""
    proto = report["traffic_by_category"].get("protocol", {})
    return {
        "scenario": report["scenario"],
        "n_agents": report["n_agents"],
        "transport": report["settings"]["transport"],
        "loss": report["settings"]["loss"],
        "interrupted": bool(report.get("interrupted")),
        "env_steps": report["env_steps"],
        "episodes": [
            {k: ep[k] for k in ("episode", "seed", "return", "steps", "lost_fraction")}
            for ep in report["episodes"]
        ],
        "mean_return": report["mean_return"],
        "baselines": {k: v["mean_return"] for k, v in (report.get("baselines") or {}).items()},
        "protocol_msgs_per_step": proto.get("msgs_per_step", 0.0),
        "protocol_bytes_per_step": proto.get("bytes_per_step", 0.0),
        "deadline_misses": int(report["events"].get("deadline_misses", 0)),
        "report": str(run_dir / "report.json"),
        "markdown": str(run_dir / "report.md"),
    }


def print_summary(report: dict[str, Any], console: Any) -> None:
    from rich.table import Table

    table = Table(title=f"swarm: {report['scenario']}, {report['env_steps']} steps")
    table.add_column("metric")
    table.add_column("value", justify="right")
    table.add_row("mean return (swarm)", f"{report['mean_return']:.2f}")
    for name, row in (report.get("baselines") or {}).items():
        table.add_row(f"mean return (in-process {name})", f"{row['mean_return']:.2f}")
    proto = report["traffic_by_category"].get(
        "protocol", {"msgs_per_step": 0.0, "bytes_per_step": 0.0}
    )
    live = report["traffic_by_category"].get(
        "liveness", {"msgs_per_step": 0.0, "bytes_per_step": 0.0}
    )
    base = report["centralised_baseline"]
    table.add_row(
        "protocol msgs / bytes per step",
        f"{proto['msgs_per_step']:.2f} / {proto['bytes_per_step']:.0f}",
    )
    table.add_row(
        "heartbeat msgs / bytes per step",
        f"{live['msgs_per_step']:.2f} / {live['bytes_per_step']:.0f}",
    )
    table.add_row(
        "centralised baseline msgs / bytes per step",
        f"{base['msgs_per_step']:.0f} / {base['bytes_per_step']:.0f}",
    )
    for name, row in report["latency"].items():
        if row["n"]:
            table.add_row(f"{name} p50 / p99 ms", f"{row['p50_ms']:.2f} / {row['p99_ms']:.2f}")
    ev = report["events"]
    for key in (
        "deadline_misses",
        "agents.recon_miss",
        "elections",
        "coordinator_changes_seen",
        "agent_rejoins",
    ):
        table.add_row(key, str(ev.get(key, 0)))
    console.print(table)
