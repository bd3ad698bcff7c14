"""Deterministic evaluation of a policy in the real environment, and learning-curve plots."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from rmio.config import load_config
from rmio.envs.loss import LossConfig
from rmio.envs.registry import EnvConfig
from rmio.envs.rollout import run_episodes
from rmio.errors import RmioError
from rmio.train.policy import Actor, actor_policy


def evaluate_policy(actor: Actor, env_cfg: EnvConfig, episodes: int, seed: int) -> dict[str, float]:
    """Greedy actions, complete observations; the seed family is disjoint from training's."""
    records = run_episodes(
        env_cfg,
        LossConfig("none"),
        lambda spec: actor_policy(actor, deterministic=True),
        episodes=episodes,
        seed=seed,
    )
    rets = np.array([r.ret for r in records])
    out = {
        "return_mean": float(rets.mean()),
        "return_std": float(rets.std()),
        "episode_length": float(np.mean([r.steps for r in records])),
    }
    won = [r.won for r in records if r.won is not None]
    if won:
        out["win_rate"] = float(np.mean(won))
    return out


def run_label(run: Path) -> str:
    """'<algorithm> seed <s> (<dir>)', read from what the run directory holds."""
    logs = {
        "joint.jsonl": "rmiov2",
        "mappo.jsonl": "mappo",
        "qmix.jsonl": "qmix",
        "mmsa.jsonl": "mmsa",
    }
    algo = next((name for log, name in logs.items() if (run / log).exists()), "?")
    seed = "?"
    cfg_path = run / "config.yaml"
    if cfg_path.exists():
        seed = str(load_config(cfg_path).run.seed)
    return f"{algo} seed {seed} ({run.name})"


def plot_curves(run_dirs: list[Path], out: Path, metric: str = "return_mean") -> Path:
    """Learning curves (metric against real environment steps) of one or more runs, overlaid."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    curves, seen = [], set()
    for run in run_dirs:
        path = Path(run) / "eval.jsonl"
        if not path.exists():
            continue
        rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        seen |= {k for r in rows for k in r if k != "step"}
        rows = [r for r in rows if metric in r]
        if rows:
            curves.append((run, rows))
    if not curves:  # empty axes and exit 0 would pass for a plot
        raise RmioError(
            f"no run has '{metric}' in its eval.jsonl, nothing to plot (they have: "
            f"{', '.join(sorted(seen)) or 'no evaluations'})"
        )
    fig, ax = plt.subplots(figsize=(7, 4.2))
    for run, rows in curves:
        steps = [r["step"] for r in rows]
        mean = np.array([r[metric] for r in rows])
        label = run_label(Path(run))
        ax.plot(steps, mean, marker=".", label=label)
        if metric == "return_mean" and "return_std" in rows[0]:
            std = np.array([r["return_std"] for r in rows])
            ax.fill_between(steps, mean - std, mean + std, alpha=0.15)
    ax.set_xlabel("real environment steps")
    ax.set_ylabel(metric.replace("_", " "))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out
