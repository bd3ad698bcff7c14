"""The `rmio swarm` command group: `launch` (one machine), `roster` (a run across machines) and
the command that starts each role of a roster (`env-host`, `agent`, `wm-node`); `keys`, `compose`
and `doctor` come from rmio/cli_deploy.py, and what `launch` does once its options are read from
rmio/cli_swarm.py."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from rmio.cli_deploy import register as register_deploy
from rmio.cli_params import BUNDLE, json_option, loss_options
from rmio.console import console, make_console
from rmio.errors import RmioError
from rmio.runtime.settings import TRANSPORTS
from rmio.runtime.vocabulary import STRATEGIES


def _swarm_run_options(fn: Callable) -> Callable:
    """Options shared by `swarm launch` and `swarm roster` (everything the processes must agree
    on)."""
    options = [
        click.argument("bundle", type=BUNDLE),
        click.option(
            "--scenario",
            default=None,
            help="Refuse the bundle unless it was made for this scenario.",
        ),
        click.option(
            "--agents",
            type=click.IntRange(min=1),
            default=None,
            help="Refuse the bundle unless it has this many agents.",
        ),
        click.option("--episodes", type=click.IntRange(min=1), default=3, show_default=True),
        click.option(
            "--steps",
            type=click.IntRange(min=1),
            default=None,
            help="Steps per episode (default: the task's limit).",
        ),
        click.option(
            "--seed", type=int, default=0, show_default=True, help="Episode k uses seed + k."
        ),
        click.option(
            "--p-loss",
            type=click.FloatRange(0.0, 1.0),
            default=None,
            help="Long-run fraction of lost observations (Bernoulli unless --loss-model says "
            "otherwise) [0].",
        ),
        loss_options,
        click.option(
            "--world-model",
            "world_model",
            type=click.Choice(["on-agent", "node"]),
            default="on-agent",
            show_default=True,
            help="Run the world model on the coordinating agent or on a wm-node.",
        ),
        click.option(
            "--recon",
            type=click.Choice(list(STRATEGIES)),
            default="world-model",
            show_default=True,
            help="Blind agents act on the world model's reconstruction, on zeros or on hold-last.",
        ),
        click.option(
            "--wm-mode",
            type=click.Choice(["window", "incremental"]),
            default="window",
            show_default=True,
            help="Replay the window every round, or continue the latent state across rounds.",
        ),
        click.option(
            "--stream-steps",
            type=click.IntRange(min=0),
            default=None,
            help="After a round, agents stream each new step to the coordinator for this many "
            "steps, so rounds need no GATHER (0: pull only) [the bundle's window].",
        ),
        click.option(
            "--kill-agent",
            multiple=True,
            metavar="I@STEP",
            help="Fault injection: agent I SIGKILLs itself at global step STEP (repeatable).",
        ),
        click.option(
            "--kill-coordinator",
            "kill_coordinator_at",
            type=click.IntRange(min=0),
            default=None,
            metavar="STEP",
            help="Fault injection: the coordinator SIGKILLs itself mid-round at/after STEP.",
        ),
        click.option(
            "--rejoin-after",
            "rejoin_after_s",
            type=float,
            default=None,
            help="Seconds before a killed agent is restarted (negative: never) [0.5].",
        ),
        click.option(
            "--transport",
            type=click.Choice(TRANSPORTS),
            default="ipc",
            show_default=True,
            help="ZeroMQ over Unix sockets or tcp, or one UDP datagram per message (fewest "
            "wake-ups); a roster takes tcp (its default) or udp.",
        ),
        click.option(
            "--step-deadline-ms",
            type=click.FloatRange(min=1.0),
            default=None,
            help="The env host's wait for actions [100].",
        ),
        click.option(
            "--rate",
            "rate_hz",
            type=click.FloatRange(min=0.0),
            default=None,
            help="Env steps per second (0: as fast as the agents act) [0].",
        ),
        click.option("--heartbeat-ms", type=click.FloatRange(min=1.0), default=None, help="[100]"),
        click.option(
            "--liveness",
            type=click.IntRange(min=1),
            default=None,
            help="Heartbeat intervals of silence before a peer is dead [3].",
        ),
        click.option(
            "--baselines/--no-baselines",
            default=True,
            show_default=True,
            help="Also evaluate in-process with the world model, zero-fill and hold-last.",
        ),
        click.option(
            "--record", is_flag=True, help="Write per-process step records next to the report."
        ),
        click.option(
            "--insecure",
            is_flag=True,
            default=None,
            help="No message authentication (a lab network where everyone who can reach a port "
            "is trusted); by default every message carries a MAC under the swarm's key.",
        ),
        click.option(
            "--curve",
            is_flag=True,
            default=None,
            help="tcp/ipc: CurveZMQ on every connection (encrypted; each peer admitted only "
            "with its role's key), beside the MAC.",
        ),
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn


@click.group()
def swarm() -> None:
    """The decentralised swarm: an env host, one process per agent, an optional world-model node."""


@swarm.command("launch")
@_swarm_run_options
@click.option("--out", type=click.Path(path_type=Path), default=Path("results"), show_default=True)
@click.option(
    "--net-loss",
    type=click.FloatRange(0.0, 1.0),
    default=None,
    help="Fault injection (root): run across two network namespaces joined by a veth link that "
    "drops this share of the packets each way (tcp or udp; ipc becomes udp).",
)
@click.option(
    "--net-rto-min",
    type=click.FloatRange(0.001, 1000.0),
    default=None,
    metavar="MS",
    help="With --net-loss: the minimum TCP retransmission timeout inside the namespaces "
    "(default: the kernel's, 200 ms; 5 keeps tcp within the step deadline under loss).",
)
@json_option
def swarm_launch(
    out: Path, net_loss: float | None, net_rto_min: float | None, as_json: bool, **options: Any
) -> None:
    """Start the whole swarm on this machine, show a live status line, write a report (JSON +
    markdown)."""
    from rmio.cli_swarm import run_launch
    from rmio.runtime.launcher import build_settings

    if net_rto_min is not None and net_loss is None:
        raise RmioError("--net-rto-min applies to --net-loss runs only")
    if net_loss is not None and options.get("transport") == "ipc":
        options["transport"] = "udp"  # unix sockets would bypass the lossy link
    run_launch(
        build_settings(**options),
        out,
        make_console(stderr=True) if as_json else console,
        net_loss=net_loss,
        net_rto_min=net_rto_min,
        as_json=as_json,
    )


@swarm.command("roster")
@_swarm_run_options
@click.option(
    "--host",
    default="127.0.0.1",
    show_default=True,
    help="Host written for every role (edit after).",
)
@click.option("--base-port", type=click.IntRange(1024, 65000), default=5550, show_default=True)
@click.option(
    "--output",
    "-o",
    type=click.Path(dir_okay=False, path_type=Path),
    default=Path("roster.yaml"),
    show_default=True,
)
def swarm_roster(host: str, base_port: int, output: Path, **options: Any) -> None:
    """Write a roster for a run across machines and print the command that starts each role."""
    from rmio.runtime.launcher import build_settings, write_roster

    ctx = click.get_current_context()
    if ctx.get_parameter_source("transport") is click.core.ParameterSource.DEFAULT:
        options["transport"] = "tcp"  # ipc, the default of a launch, does not leave a machine

    for cmd in write_roster(build_settings(**options), output, host, base_port):
        click.echo(cmd)


def _run_role(role: str, name: str, roster: Path, bind: str | None = None) -> None:
    from rmio.runtime.proc import install_signal_handlers, run_role
    from rmio.runtime.settings import Roster
    from rmio.runtime.validate import verify_bundle

    spec = Roster.load(roster)
    if name not in spec.endpoints:
        raise RmioError(f"roster '{roster}' names no endpoint for {name}")
    verify_bundle(spec.settings.bundle)
    install_signal_handlers()
    bind = bind or spec.bind_for(name)
    code = run_role(role, spec.settings, name, bind, endpoints=spec.endpoints)
    report = Path(spec.settings.out_dir) / "report.json"
    if role == "env-host" and report.is_file():
        console.print(f"report: {report} and {report.with_suffix('.md')}")
    sys.exit(code)


_ROSTER = click.option(
    "--roster",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    required=True,
    help="Roster file naming every role's endpoint (see `rmio swarm roster`).",
)
_BIND = click.option(
    "--bind",
    default=None,
    metavar="ENDPOINT",
    help="Bind here instead of the endpoint the roster advertises for this role (e.g. "
    "tcp://0.0.0.0:5550 in a container) [the roster's 'bind' entry, else its endpoint].",
)


@swarm.command("env-host")
@_ROSTER
@_BIND
def swarm_env_host(roster: Path, bind: str | None) -> None:
    """Run the env host of a roster (simulator, loss model, sensors and actuators, report)."""
    _run_role("env-host", "env", roster, bind)


@swarm.command("agent")
@click.option("--id", "agent_id", type=click.IntRange(min=0), required=True)
@_ROSTER
@_BIND
def swarm_agent(agent_id: int, roster: Path, bind: str | None) -> None:
    """Run agent I of a roster."""
    _run_role("agent", f"a{agent_id}", roster, bind)


@swarm.command("wm-node")
@_ROSTER
@_BIND
def swarm_wm_node(roster: Path, bind: str | None) -> None:
    """Run the world-model node of a roster (CUDA provider when onnxruntime has it)."""
    _run_role("wm-node", "wm", roster, bind)


def register(cli: click.Group) -> None:
    """Add the `swarm` group, with cli_deploy's commands in it, to the top-level CLI."""
    register_deploy(swarm)
    cli.add_command(swarm)
