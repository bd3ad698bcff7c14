"""The `rmio` command line. Commands appear here only once they really work."""

from __future__ import annotations

import importlib.util
import logging
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click
import yaml
from rich.table import Table

from rmio import __version__
from rmio.cli_params import BUNDLE, config_options, json_option, loss_options
from rmio.console import console, make_console
from rmio.errors import RmioError
from rmio.runtime.settings import TRANSPORTS
from rmio.runtime.vocabulary import STRATEGIES

DEFAULT_SCENARIO = "halfcheetah_6x1"


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="rmio")
@click.option("-v", "--verbose", count=True, help="More log output (-v info, -vv debug).")
def cli(verbose: int) -> None:
    """rmio: robust multi-agent world models and a swarm that keeps acting when observations drop.

    CONFIG is a built-in scenario name (see `rmio scenarios`) or the path of a YAML file.
    """
    level = logging.WARNING - 10 * min(verbose, 2)
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")


@cli.command()
def scenarios() -> None:
    """List task families, their scenarios, built-in configs and whether they can run here."""
    from rmio.config import builtin_config_names
    from rmio.envs.registry import FAMILIES

    table = Table(title="task families")
    for col in ("family", "available", "scenarios", "description"):
        table.add_column(col)
    for fam in FAMILIES.values():
        table.add_row(fam.name, _availability(fam.name), ", ".join(fam.scenarios), fam.description)
    console.print(table)
    console.print("built-in configs: " + ", ".join(builtin_config_names()))


@cli.command()
def models() -> None:
    """List the bundles shipped with rmio; their names work wherever a BUNDLE is asked for."""
    from rmio.models import find_bundle, shipped_bundles
    from rmio.runtime.bundle import load_manifest

    table = Table(title="shipped bundles")
    for col in ("name", "scenario", "agents", "window", "files"):
        table.add_column(col)
    for name in shipped_bundles():
        man = load_manifest(find_bundle(name))
        table.add_row(
            name,
            man.spec.name,
            str(man.spec.n_agents),
            str(man.history_window),
            ", ".join(man.files.values()),
        )
    console.print(table)


def _availability(family: str) -> str:
    probe = {
        "mamujoco": "gymnasium_robotics",
        "smax": "jaxmarl",
        "lbf": "lbforaging",
        "pettingzoo": "pettingzoo",
        "smac": "smac",
    }[family]
    if importlib.util.find_spec(probe) is None:
        return {
            "smax": "no: install extra [smax]",
            "lbf": "no: install extra [lbf]",
            "smac": "no: oxwhirl/smac + StarCraft II",
        }.get(family, "no")
    if family == "smac":
        try:
            importlib.import_module("smac.env")
        except ImportError:
            return "no: installed `smac` is SMAC3, not StarCraft"
    return "yes"


@cli.group()
def config() -> None:
    """Inspect scenario configs."""


@config.command("show")
@config_options()
def config_show(cfg: Any) -> None:
    """Print the resolved config (preset and overrides applied) and its hash."""
    click.echo(f"# hash {cfg.digest()}")
    click.echo(yaml.safe_dump(cfg.to_dict(), sort_keys=False), nl=False)


@cli.command()
@config_options()
@click.option(
    "--out",
    type=click.Path(path_type=Path),
    default=None,
    help="Output .npz file (default: a new run directory under run.runs_dir).",
)
@click.option(
    "--steps",
    type=click.IntRange(min=1),
    default=None,
    help="Environment steps (default run.collect_steps).",
)
def collect(cfg: Any, out: Path | None, steps: int | None) -> None:
    """Collect real trajectories with a uniform random policy under the config's loss model.

    Writes a trajectory buffer (.npz) that world-model training reads, and the resolved config next
    to it.
    """
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
    )

    from rmio.config import save_config
    from rmio.envs.collect import collect as run_collect
    from rmio.rundir import new_run_dir

    steps = steps or cfg.run.collect_steps
    if out is None:
        out = new_run_dir(cfg, "collect") / "trajectories.npz"
    with Progress(
        TextColumn("collecting"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("env steps"),
        TimeRemainingColumn(),
        console=console,
        transient=True,
    ) as bar:
        task = bar.add_task("collect", total=steps)
        buf, stats = run_collect(
            cfg.env,
            cfg.loss,
            steps=steps,
            num_envs=cfg.run.num_envs,
            vector_mode=cfg.run.vector_mode,
            seed=cfg.run.seed,
            progress=lambda n: bar.advance(task, n),
        )
    buf.meta["config_hash"] = cfg.digest()
    buf.save(out)
    save_config(cfg, out.parent)
    rets = buf.episode_returns()
    console.print(
        f"{stats.env_steps} env steps, {stats.episodes} episodes in {stats.seconds:.1f} s "
        f"({stats.steps_per_second:.0f} steps/s with {cfg.run.num_envs} copies); "
        f"random-policy return {rets.mean():.2f} ± {rets.std():.2f}; "
        f"{100 * (1 - buf.data['observed'].mean()):.1f}% observations lost"
    )
    console.print(f"wrote {out}")


@cli.command()
@click.argument("bundle", type=BUNDLE, required=False)
@click.option(
    "--p-loss", default="0,0.3,0.6", show_default=True, help="Comma-separated loss probabilities."
)
@click.option(
    "--episodes",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    help="Episodes per setting (seeds 0, 1, ...).",
)
@click.option(
    "--steps", type=click.IntRange(min=1), default=300, show_default=True, help="Steps per episode."
)
@click.option("--transport", type=click.Choice(TRANSPORTS), default="ipc", show_default=True)
@loss_options
@click.option("--out", type=click.Path(path_type=Path), default=Path("results"), show_default=True)
@json_option
def demo(
    bundle: Path | None,
    p_loss: str,
    episodes: int,
    steps: int,
    transport: str,
    out: Path,
    as_json: bool,
    **loss: Any,
) -> None:
    """Launch the real swarm on the committed HalfCheetah 6x1 bundle under observation loss:
    world-model reconstruction against zero-fill, with return, AUC, bytes per step and
    reconstruction latency. p_loss is the loss model's long-run lost fraction."""
    import json

    from rmio.cli_eval import parse_floats, sweep_loss
    from rmio.demo import run_demo
    from rmio.evaluation.report import summary_json

    result = run_demo(
        bundle,
        parse_floats(p_loss),
        episodes,
        steps,
        out,
        make_console(stderr=True) if as_json else console,
        transport,
        loss=sweep_loss(**loss),
    )
    if as_json:
        files = {k: Path(v) for k, v in result["files"].items()}
        click.echo(json.dumps(summary_json(result, files)))


from rmio.cli_train import register as _register_training  # noqa: E402

_register_training(cli)
from rmio.cli_bundle import register as _register_bundle  # noqa: E402

_register_bundle(cli)


# -- the swarm ------------------------------------------------------------------------------


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


@cli.group()
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


from rmio.cli_deploy import register as _register_deploy  # noqa: E402

_register_deploy(swarm)


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


def main(argv: list[str] | None = None) -> None:
    """Entry point: user errors are one line on stderr with exit code 2, never a traceback."""
    try:
        cli.main(args=argv, prog_name="rmio", standalone_mode=False)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        sys.exit(130)
    except RmioError as exc:
        click.echo(f"rmio: error: {exc}", err=True)
        sys.exit(2)
    except KeyboardInterrupt:
        click.echo("interrupted", err=True)
        sys.exit(130)


if __name__ == "__main__":
    main()
