"""`rmio demo`: episodes of the default scenario with observation loss, summarised for a person.

Until a trained bundle and the swarm exist, the demo drives every agent with a uniform random
policy in one process; it says so in its output rather than pretending to be more.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

from rmio.config import Config, save_config
from rmio.envs.rollout import EpisodeRecord, run_episodes

log = logging.getLogger(__name__)


def _random_policy(seed: int):
    def factory(spec):
        rng = np.random.default_rng(seed)
        return lambda obs, observed, avail: spec.random_actions(rng, avail)

    return factory


def plot_loss_masks(records: list[EpisodeRecord], path: Path, title: str) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(records), 1, figsize=(10, 1.2 + 0.35 * records[0].observed.shape[1] * len(records)),
                             squeeze=False)
    for ax, rec in zip(axes[:, 0], records, strict=True):
        ax.imshow(~rec.observed.T, aspect="auto", interpolation="nearest", cmap="Reds", vmin=0, vmax=1)
        ax.set_ylabel("agent")
        ax.set_yticks(range(rec.observed.shape[1]))
        ax.set_title(f"episode {rec.episode}: return {rec.ret:.1f}, {100 * rec.lost_fraction:.0f}% observations lost",
                     fontsize=9)
    axes[-1, 0].set_xlabel("step (red = observation lost)")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def run_demo(cfg: Config, episodes: int, out_root: Path, console: Console) -> Path:
    out = out_root / f"demo-{time.strftime('%Y%m%d-%H%M%S')}"
    out.mkdir(parents=True, exist_ok=True)
    save_config(cfg, out)
    console.print(
        f"[bold]rmio demo[/]: {cfg.env.family} {cfg.env.scenario}, loss model {cfg.loss.model} "
        f"p_loss={cfg.loss.p_loss}, {episodes} episode(s) of at most {cfg.env.episode_limit or 'the task limit'} steps"
    )
    console.print("policy: uniform random actions, in one process (no trained bundle or swarm in this build yet)")
    with console.status("running episodes...") as status:
        def on_step(ep: int, step: int, ret: float, observed: np.ndarray) -> None:
            if step % 25 == 0:
                status.update(f"episode {ep + 1}/{episodes}, step {step}, return {ret:.1f}, "
                              f"lost now: {int((~observed).sum())} agent(s)")

        records = run_episodes(cfg.env, cfg.loss, _random_policy(cfg.run.seed), episodes=episodes,
                               seed=cfg.run.seed, on_step=on_step)
    table = Table(title="episodes")
    for col in ("episode", "seed", "steps", "return", "lost obs", "longest outage", "steps/s"):
        table.add_column(col, justify="right")
    for r in records:
        table.add_row(str(r.episode), str(r.seed), str(r.steps), f"{r.ret:.2f}", f"{100 * r.lost_fraction:.1f}%",
                      f"{r.longest_outage} steps", f"{r.steps / r.seconds:.0f}")
    console.print(table)
    rets = np.array([r.ret for r in records])
    report = {
        "scenario": f"{cfg.env.family}/{cfg.env.scenario}",
        "policy": "uniform-random",
        "loss": cfg.loss.__dict__,
        "config_hash": cfg.digest(),
        "episodes": [
            {"episode": r.episode, "seed": r.seed, "steps": r.steps, "return": r.ret, "terminated": r.terminated,
             "won": r.won, "lost_fraction": r.lost_fraction, "longest_outage": r.longest_outage,
             "steps_per_second": r.steps / r.seconds}
            for r in records
        ],
        "mean_return": float(rets.mean()),
        "std_return": float(rets.std()),
    }
    (out / "report.json").write_text(json.dumps(report, indent=2))
    np.savez_compressed(out / "loss_masks.npz", **{f"episode_{r.episode}": r.observed for r in records})
    plot_loss_masks(records, out / "loss_masks.png", f"{cfg.env.scenario}: who lost their observation, step by step")
    console.print(f"mean return {rets.mean():.2f} ± {rets.std():.2f}; "
                  f"report, loss masks and plot written to [bold]{out}[/]")
    return out
