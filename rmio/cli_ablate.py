"""`rmio ablate`: the paper's ablation tables as resumable sweeps (train/ablation.py; needs the
`train` extra, imported lazily)."""

from __future__ import annotations

from pathlib import Path

import click

from rmio.cli_params import device_option, require_torch


@click.command("ablate")
@click.argument("sweep")
@click.option(
    "--debug",
    is_flag=True,
    help="The scenario's tiny debug preset for every variant (it wins over the sweep's set: keys).",
)
@click.option(
    "--out",
    type=click.Path(path_type=Path),
    default=None,
    help="Sweep directory (default runs/ablation-<sweep name>); re-run to resume.",
)
@click.option(
    "--jobs",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    help="Worker processes: the trials (seed x variant) run in parallel, each with its own log.",
)
@click.option(
    "--backend",
    type=click.Choice(["local", "ray"]),
    default="local",
    show_default=True,
    help="local: this machine (--jobs processes); ray: every trial a Ray task (the ray extra).",
)
@click.option(
    "--address",
    default=None,
    help="With --backend ray: an existing cluster's address (default: a local Ray); the sweep "
    "directory must be on storage every node sees.",
)
@click.option(
    "--reuse",
    "reuse",
    multiple=True,
    type=click.Path(path_type=Path, exists=True, file_okay=False),
    help="Another sweep directory (repeatable): a finished pre-training there with the same "
    "config hash and data actor is hard-linked instead of trained again.",
)
@device_option
def ablate(
    sweep: str,
    debug: bool,
    out: Path | None,
    jobs: int,
    backend: str,
    address: str | None,
    reuse: tuple[Path, ...],
    device: str,
) -> None:
    """Run an ablation table (a sweep shipped in configs/ablations, e.g. recipes_halfcheetah_6x1,
    or a YAML): train every variant, then report L_rec of lost agents and the robustness AUC side
    by side."""
    require_torch()
    from rmio.console import console
    from rmio.train.ablation import run_ablation

    run_ablation(
        Path(sweep),
        out or Path("runs") / f"ablation-{Path(sweep).stem}",
        debug,
        console,
        device,
        jobs,
        backend,
        address,
        reuse,
    )


def register(cli: click.Group) -> None:
    cli.add_command(ablate)
