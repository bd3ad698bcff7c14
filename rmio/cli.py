"""The `rmio` command line. Commands appear here only once they really work."""

from __future__ import annotations

import importlib.util
import logging
import sys
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
from rmio.cli_swarm_group import register as _register_swarm  # noqa: E402

_register_swarm(cli)


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
