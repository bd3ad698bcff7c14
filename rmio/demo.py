"""`rmio demo`: the committed HalfCheetah 6x1 bundle run as a real swarm under observation loss.

An env host and one process per agent (each with its own onnxruntime actor) play short episodes at a
few loss probabilities, once with world-model reconstruction and once with zero-fill; the same
episodes are also evaluated in-process. The table shows what reconstruction buys (return, AUC)
and what it costs (bytes per step, reconstruction round latency).
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from rmio.cli_eval import run_robustness
from rmio.envs.loss import at_lost_fraction
from rmio.errors import RmioError
from rmio.evaluation.swarm import swarm_auc
from rmio.models import default_bundle
from rmio.runtime.validate import verify_bundle


def run_demo(
    bundle: Path | None,
    p_loss: list[float],
    episodes: int,
    steps: int,
    out_root: Path,
    console: Console,
    transport: str = "ipc",
    loss: Any = None,
) -> dict[str, Any]:
    """The demo's sweep through the swarm (``loss``: a LossConfig whose lost fraction p_loss sets,
    default Bernoulli); returns the sweep's result with the swarm's AUC and the files written."""
    if any(not 0.0 <= p <= 1.0 for p in p_loss):  # before the banner: nothing starts
        raise RmioError(f"--p-loss values must lie in [0, 1], got {', '.join(map(str, p_loss))}")
    for p in p_loss if loss is not None else []:  # an unreachable lost fraction: nothing starts
        at_lost_fraction(loss, p).validate()
    bundle = bundle or default_bundle()
    manifest = verify_bundle(bundle)
    out = Path(out_root) / f"demo-{time.strftime('%Y%m%d-%H%M%S')}"
    trained = manifest.budget.get("policy_env_steps")
    console.print(
        f"[bold]rmio demo[/]: {manifest.spec.name}, {manifest.spec.n_agents} agent processes + env "
        "host, bundle "
        f"{bundle}" + (f" (policy trained on {trained} real env steps)" if trained else "")
    )
    console.print(
        f"p_loss {', '.join(f'{p:g}' for p in p_loss)}"
        + (f" ({loss.model} loss)" if loss is not None else "")
        + f"; {episodes} episode(s) of {steps} steps per "
        "setting; world-model reconstruction vs zero-fill; every agent is its own OS process"
    )
    result = run_robustness(
        bundle,
        p_loss=p_loss,
        episodes=episodes,
        seeds=1,
        strategies=["world-model", "zero-fill"],
        out=out,
        console=console,
        swarm=True,
        episode_limit=steps,
        transport=transport,
        quiet=True,
        loss=loss,
    )
    aucs = swarm_auc(result)
    result["swarm_auc"] = aucs
    _print_table(result, aucs, console)
    console.print(
        f"results: {out}/robustness.md, robustness.png, robustness.json; one swarm report per run "
        f"in {out}/swarm/"
    )
    return result


def _print_table(result: dict[str, Any], aucs: dict[str, dict[str, Any]], console: Console) -> None:
    metric = result["metric"].replace("_", " ")
    table = Table(
        title=f"{result['scenario']} through the swarm (random policy: "
        f"{result['summary']['random']['mean']:.1f})"
    )
    table.caption = (
        f"{metric}: the swarm's, and in-process on the same seeds and loss masks; bytes/step: "
        "protocol traffic between agents; round ms: reconstruction round p50/p99"
    )
    for col in ("strategy", "p_loss", metric, "in-process", "bytes/step", "round ms"):
        table.add_column(col, justify="left" if col == "strategy" else "right", no_wrap=True)
    curves = {
        s: {c["p_loss"]: c["mean"] for c in result["summary"][s]["curve"]}
        for s in result["strategies"]
    }
    for row in result["swarm"]:
        lat = (
            "-"
            if row["round_p50_ms"] is None
            else f"{row['round_p50_ms']:.1f}/{row['round_p99_ms']:.1f}"
        )
        table.add_row(
            row["strategy"],
            f"{row['p_loss']:g}",
            f"{row['mean']:.1f}",
            f"{curves[row['strategy']][row['p_loss']]:.1f}",
            f"{row['bytes_per_step']:.0f}",
            lat,
        )
    console.print(table)
    lo, hi = result["auc_range"]
    parts = [
        f"{s} {aucs[s]['auc_mean']:.1f} ± {aucs[s]['auc_std']:.1f}"
        if math.isfinite(aucs[s]["auc_mean"])
        else f"{s} n/a"
        for s in sorted(aucs)
    ]
    console.print(
        f"AUC over p_loss {lo:g}-{hi:g} (100 = no loss at all, 0 = random policy), swarm: "
        + ", ".join(parts)
    )
