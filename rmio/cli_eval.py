"""`rmio eval robustness`: the paper's robustness curve from a bundle (torch-free) or a run
(exported first); `rmio eval open-loop`: world models' open-loop error against horizon;
`rmio eval policy`: trained actors on the same greedy episodes."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from rmio.cli_params import BUNDLE_OR_RUN, DEVICE, json_option, loss_options
from rmio.defaults import DEFAULT_P_LOSS
from rmio.errors import MissingExtraError, RmioError
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


def register_open_loop(eval_group: click.Group) -> None:
    @eval_group.command("open-loop")
    @click.argument(
        "run_dirs",
        nargs=-1,
        required=True,
        type=click.Path(path_type=Path, exists=True, file_okay=False),
    )
    @click.option(
        "--data",
        type=click.Path(path_type=Path, exists=True, file_okay=False),
        default=None,
        help="Run directory whose held-out episodes every model is scored on (default: the first).",
    )
    @click.option("--context", type=click.IntRange(min=1), default=5, show_default=True)
    @click.option("--horizon", type=click.IntRange(min=1), default=15, show_default=True)
    @click.option(
        "--windows",
        type=click.IntRange(min=1),
        default=256,
        show_default=True,
        help="Held-out windows, spread evenly over the episodes.",
    )
    @click.option(
        "--checkpoint",
        type=click.Choice(["pretrain", "finetune"]),
        default="pretrain",
        show_default=True,
        help="wm_<checkpoint>.pt (RMIOv2) or marie_<checkpoint>.pt (MARIE).",
    )
    @click.option("--sample", is_flag=True, help="MARIE draws its tokens (default: argmax).")
    @click.option(
        "--out",
        type=click.Path(path_type=Path),
        default=None,
        help="Results folder (default: results/open-loop-<data run>).",
    )
    @click.option(
        "--device", type=DEVICE, default="cpu", show_default=True, help="cpu, cuda or cuda:N."
    )
    def open_loop_cmd(
        run_dirs: tuple[Path, ...],
        data: Path | None,
        context: int,
        horizon: int,
        windows: int,
        checkpoint: str,
        sample: bool,
        out: Path | None,
        device: str,
    ) -> None:
        """Open-loop error against prediction horizon (MARIE's Fig. 7) of RMIOv2 and MARIE world
        models on the same held-out windows: observation L1 and reward error at every horizon,
        open loop and teacher-forced; writes open_loop.{md,json,png}."""
        try:
            import torch
        except ImportError:
            raise MissingExtraError("training", "train") from None
        from rmio.console import console
        from rmio.train import open_loop_report
        from rmio.train.common import resolve_device
        from rmio.train.open_loop import evaluate_open_loop

        dev = resolve_device(device)
        torch.set_num_threads(1)
        result = evaluate_open_loop(
            list(run_dirs),
            data,
            context=context,
            horizon=horizon,
            windows=windows,
            checkpoint=checkpoint,
            device=dev,
            sample=sample,
        )
        if out is None:
            out = Path("results") / f"open-loop-{(data or run_dirs[0]).resolve().name}"
        title = f"{result['scenario']}: open-loop error against horizon"
        paths = open_loop_report.write(result, out, "open_loop", title)
        open_loop_report.print_table(result, console)
        console.print(f"wrote {paths['md']}, {paths['json']} and {paths['png']}")


def register_policy(eval_group: click.Group) -> None:
    @eval_group.command("policy")
    @click.argument(
        "targets", nargs=-1, required=True, type=click.Path(path_type=Path, exists=True)
    )
    @click.option(
        "--episodes",
        type=click.IntRange(min=1),
        default=100,
        show_default=True,
        help="Greedy episodes per actor, the same environment seeds for every one.",
    )
    @click.option(
        "--seed",
        type=click.IntRange(min=0, max=2**31 - 1),
        default=1_000_000,
        show_default=True,
        help="First environment seed (apart from training's and its evaluations' by default).",
    )
    @click.option(
        "--out",
        type=click.Path(path_type=Path),
        default=None,
        help="Write the table and its JSON here (OUT.md, OUT.json).",
    )
    def policy_cmd(targets: tuple[Path, ...], episodes: int, seed: int, out: Path | None) -> None:
        """Win rate or return of trained actors (run directories, policy.pt / ckpt_*.pt files or
        model bundles' actor.onnx) on the same greedy episodes, with standard errors, to compare
        policies at a budget more tightly than the 20 evaluation episodes logged during
        training."""
        try:
            import torch
        except ImportError:
            raise MissingExtraError("training", "train") from None
        from rich.markdown import Markdown

        from rmio.console import console
        from rmio.train.evaluate import checkpoints_markdown, evaluate_checkpoints

        torch.set_num_threads(1)

        def done(row: dict[str, Any]) -> None:
            console.print(f"{row['run']} {row['file']}: return {row['return_mean']:.2f}")

        rows = evaluate_checkpoints(list(targets), episodes, seed, progress=done)
        md = checkpoints_markdown(rows, seed)
        console.print(Markdown(md))
        if out is not None:
            out.parent.mkdir(parents=True, exist_ok=True)
            out.with_suffix(".md").write_text(md)
            blob = {"seed": seed, "episodes": episodes, "rows": rows}
            out.with_suffix(".json").write_text(json.dumps(blob, indent=1))
            console.print(f"wrote {out.with_suffix('.md')} and {out.with_suffix('.json')}")
