"""`rmio eval robustness`: the paper's robustness curve from a bundle (torch-free) or a run
(exported first)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from rmio.cli_params import BUNDLE_OR_RUN, json_option, loss_options
from rmio.defaults import DEFAULT_P_LOSS
from rmio.errors import RmioError
from rmio.runtime.settings import TRANSPORTS


def parse_floats(text: str) -> list[float]:
    try:
        values = [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise RmioError(f"--p-loss wants comma-separated numbers, got '{text}'") from None
    if not values:
        raise RmioError("--p-loss is empty")
    return values


def run_robustness(
    target: Path,
    *,
    p_loss: list[float],
    episodes: int,
    seeds: int,
    strategies: list[str],
    out: Path,
    console: Any,
    swarm: bool = False,
    wm_mode: str = "window",
    loss_model: str = "bernoulli",
    episode_limit: int | None = None,
    transport: str = "ipc",
    quiet: bool = False,
    loss: Any = None,
) -> dict[str, Any]:
    """Sweep in-process (and through the swarm), write JSON / markdown / PNG into ``out``, print the
    table. ``loss``: a LossConfig whose lost fraction the sweep sets (default: ``loss_model``'s
    defaults); the files written are in ``result["files"]``."""
    from rich.markdown import Markdown
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from rmio.evaluation import report as robustness_report
    from rmio.evaluation import robustness
    from rmio.evaluation import swarm as through_swarm  # not `swarm`: the flag of that name

    bundle = robustness.resolve_bundle(target, console)
    runs = seeds * (1 + len(set(p_loss)) * len(strategies))
    swarm_runs = (
        seeds
        * len(set(p_loss))
        * len([s for s in strategies if s in through_swarm.SWARM_STRATEGIES])
    )
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("{task.fields[what]}"),
        console=console,
        transient=True,
    ) as bar:
        task = bar.add_task("robustness sweep", total=runs + (swarm_runs if swarm else 0), what="")

        def tick(what: str, k: int) -> None:
            bar.update(task, advance=k, what=what)

        result = robustness.sweep(
            bundle,
            p_loss=p_loss,
            episodes=episodes,
            seeds=seeds,
            strategies=strategies,
            loss_model=loss_model,
            wm_mode=wm_mode,
            episode_limit=episode_limit,
            progress=tick,
            loss=loss,
        )
        if swarm:
            result["swarm"] = through_swarm.swarm_sweep(
                bundle, result, out / "swarm", transport=transport, progress=tick
            )
    paths = robustness_report.write(result, out)
    if not quiet:
        console.print(Markdown(robustness_report.markdown(result)))
        console.print(f"wrote {paths['json']}, {paths['md']} and {paths['png']}")
    result["files"] = {k: str(v) for k, v in paths.items()}
    return result


def sweep_loss(loss_model: str | None, **options: Any) -> Any:
    """The loss model a robustness sweep runs at each of its lost fractions (--loss-model and its
    options, as everywhere), refused before anything runs if it cannot be swept."""
    from rmio.envs.loss import resolve_loss

    return resolve_loss(loss_model, swept=True, **options)


def register(eval_group: click.Group) -> None:
    @eval_group.command("robustness")
    @click.argument("target", metavar="BUNDLE_OR_RUN", type=BUNDLE_OR_RUN)
    @click.option(
        "--p-loss",
        default=",".join(f"{p:g}" for p in DEFAULT_P_LOSS),
        show_default=True,
        help="Comma-separated observation-loss probabilities.",
    )
    @click.option(
        "--episodes",
        type=click.IntRange(min=1),
        default=5,
        show_default=True,
        help="Episodes per seed family (stepped in parallel).",
    )
    @click.option(
        "--seeds", type=click.IntRange(min=1), default=3, show_default=True, help="Seed families."
    )
    @click.option(
        "--strategies",
        default="world-model,hold-last,zero-fill",
        show_default=True,
        help="Comma-separated: world-model, hold-last, zero-fill, no-finetune.",
    )
    @click.option(
        "--wm-mode",
        type=click.Choice(["window", "incremental"]),
        default="window",
        show_default=True,
        help="Replay the l-step window every step (as the swarm) or continue the latent chain.",
    )
    @loss_options
    @click.option(
        "--steps",
        type=click.IntRange(min=1),
        default=None,
        help="Episode length (default: the env's).",
    )
    @click.option("--swarm", is_flag=True, help="Also run the sweep through real swarm processes.")
    @click.option(
        "--transport",
        type=click.Choice(TRANSPORTS),
        default="ipc",
        show_default=True,
        help="The swarm's transport (with --swarm), as in `rmio swarm launch`.",
    )
    @click.option(
        "--out",
        type=click.Path(path_type=Path),
        default=None,
        help="Results folder (default: results/robustness-<scenario>).",
    )
    @json_option
    def robustness_cmd(
        target: Path,
        p_loss: str,
        episodes: int,
        seeds: int,
        strategies: str,
        wm_mode: str,
        loss_model: str | None,
        mean_burst_length: float | None,
        blackout_length: int | None,
        blackout_rate: float | None,
        steps: int | None,
        swarm: bool,
        transport: str,
        out: Path | None,
        as_json: bool,
    ) -> None:
        """Return (win rate on SMAX/SMAC) against p_loss per strategy, with AUC; JSON, markdown and
        a PNG. p_loss is the loss model's long-run lost fraction."""
        from rmio.console import console, make_console
        from rmio.evaluation.report import summary_json

        loss = sweep_loss(
            loss_model,
            mean_burst_length=mean_burst_length,
            blackout_length=blackout_length,
            blackout_rate=blackout_rate,
        )
        names = [s.strip() for s in strategies.split(",") if s.strip()]
        if out is None:
            out = Path("results") / f"robustness-{target.resolve().name}"
        result = run_robustness(
            target,
            p_loss=parse_floats(p_loss),
            episodes=episodes,
            seeds=seeds,
            strategies=names,
            out=out,
            console=make_console(stderr=True) if as_json else console,
            swarm=swarm,
            wm_mode=wm_mode,
            loss=loss,
            episode_limit=steps,
            transport=transport,
            quiet=as_json,
        )
        if as_json:
            files = {k: Path(v) for k, v in result["files"].items()}
            click.echo(json.dumps(summary_json(result, files)))
