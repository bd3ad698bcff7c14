"""Deterministic evaluation of a policy in the real environment (`rmio eval policy`), and
learning-curve plots."""

from __future__ import annotations

import json
import os
import platform
import time
from pathlib import Path
from typing import Any

import numpy as np

from rmio.config import Config, build_dataclass, load_config
from rmio.envs.loss import LossConfig
from rmio.envs.registry import EnvConfig
from rmio.envs.rollout import EpisodeRecord, run_episodes
from rmio.errors import RmioError
from rmio.runtime.models import ActorRunner
from rmio.runtime.settings import env_config_for
from rmio.runtime.validate import verify_bundle
from rmio.train.common import load_actor
from rmio.train.policy import Actor, actor_policy
from rmio.train.qmix_config import QMIXConfig


def evaluate_policy(actor: Actor, env_cfg: EnvConfig, episodes: int, seed: int) -> dict[str, float]:
    """Greedy actions, complete observations; the seed family is disjoint from training's."""
    records = run_episodes(
        env_cfg,
        LossConfig("none"),
        lambda spec: actor_policy(actor, deterministic=True),
        episodes=episodes,
        seed=seed,
    )
    return summarise(records)


def summarise(records: list[EpisodeRecord]) -> dict[str, float]:
    """Mean and std of the return, mean length and (where the env reports wins) win rate."""
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


POLICY_FILES = ("policy.pt", "ckpt_joint.pt", "ckpt_mappo.pt")
"""What ``rmio eval policy`` reads from a run directory, in this order: the final actor, else the
latest checkpoint of joint pre-training or MAPPO."""


def policy_file(target: Path) -> Path:
    """A run directory's actor checkpoint (POLICY_FILES), or the file itself."""
    if target.is_file():
        return target
    found = next((target / f for f in POLICY_FILES if (target / f).is_file()), None)
    if found is None:
        raise RmioError(
            f"'{target}' holds no actor checkpoint ({', '.join(POLICY_FILES)}); QMIX and MMSA "
            "runs are evaluated during training only"
        )
    return found


def evaluate_checkpoints(
    targets: list[Path], episodes: int, seed: int, progress: Any = None
) -> list[dict[str, Any]]:
    """Greedy evaluation of each actor (a run's checkpoint or a bundle's ``actor.onnx``) on the same
    ``episodes`` environment seeds (from ``seed``), with standard errors: the 20 episodes logged
    during training tell two policies apart only when they differ by more than about 0.2 in win
    rate."""
    rows = []
    for target in targets:
        if target.suffix == ".onnx":  # a bundle's actor.onnx: the bundle it belongs to
            target = target.parent
        if target.is_dir() and (target / "manifest.json").is_file():
            row = _evaluate_bundle(target, episodes, seed)
        else:
            row = _evaluate_checkpoint(policy_file(target), episodes, seed)
        row["return_sem"] = row["return_std"] / np.sqrt(episodes)
        if "win_rate" in row:
            row["win_rate_sem"] = float(np.sqrt(row["win_rate"] * (1 - row["win_rate"]) / episodes))
        rows.append(row)
        if progress is not None:
            progress(row)
    return rows


def _evaluate_checkpoint(path: Path, episodes: int, seed: int) -> dict[str, Any]:
    try:
        actor, ckpt = load_actor(path)
    except (KeyError, TypeError) as exc:
        raise RmioError(f"'{path}' is not an actor checkpoint (missing {exc})") from None
    cfg = build_dataclass(Config, ckpt["config"], str(path))
    res = evaluate_policy(actor, cfg.env, episodes, seed)
    return {
        "run": run_label(path.parent),
        "file": path.name,
        "env_steps": ckpt.get("env_steps"),
        "episodes": episodes,
        **res,
    }


def _evaluate_bundle(bundle: Path, episodes: int, seed: int) -> dict[str, Any]:
    """The shipped ``actor.onnx`` under onnxruntime, as the swarm's agents run it, on the same
    episodes as a checkpoint would be: a bundle's actor and a newly trained one compare directly."""
    manifest = verify_bundle(bundle)
    if "actor" not in manifest.files:
        raise RmioError(f"bundle '{bundle}' has no actor.onnx: export a run that trained a policy")
    if manifest.actor_state is not None:
        raise RmioError(
            f"the actor of bundle '{bundle}' is recurrent; `rmio eval robustness {bundle} "
            "--p-loss 0` evaluates it with its hidden state"
        )
    runner = ActorRunner(bundle, manifest)
    ids = np.arange(manifest.spec.n_agents)

    def factory(spec: object):
        def act(obs: np.ndarray, observed: np.ndarray, avail: np.ndarray | None) -> np.ndarray:
            return runner.step(obs, ids, avail)[0]

        return act

    # the training run's episode length (its spec's), as a checkpoint of that run is evaluated
    env_cfg = EnvConfig(**env_config_for(manifest, manifest.spec.episode_limit))
    records = run_episodes(env_cfg, LossConfig("none"), factory, episodes=episodes, seed=seed)
    return {
        "run": f"bundle ({bundle.name})",
        "file": manifest.files["actor"],
        "env_steps": manifest.budget.get("policy_env_steps"),
        "episodes": episodes,
        **summarise(records),
    }


def checkpoints_markdown(rows: list[dict[str, Any]], seed: int) -> str:
    """The table of ``evaluate_checkpoints``."""
    wins = any("win_rate" in r for r in rows)
    head = "| run | file | real env steps | episodes | return (± s.e.) |" + (
        " win rate (± s.e.) |" if wins else ""
    )
    machine = f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}"
    lines = [
        f"Greedy evaluation ({machine}, {time.strftime('%Y-%m-%d')}), complete observations, the "
        f"same {rows[0]['episodes']} episodes (environment seeds from {seed}) for every actor.",
        "",
        head,
        "|---|---|---|---|---|" + ("---|" if wins else ""),
    ]
    for r in rows:
        steps = "-" if r["env_steps"] is None else f"{r['env_steps']:,}"
        cells = [r["run"], r["file"], steps, str(r["episodes"])]
        cells.append(f"{r['return_mean']:.2f} ± {r['return_sem']:.2f}")
        if wins:
            cells.append(
                f"{r['win_rate']:.2f} ± {r['win_rate_sem']:.2f}" if "win_rate" in r else "-"
            )
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


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
        cfg = load_config(cfg_path)
        seed = str(cfg.run.seed)
        if algo == "mmsa":  # the paper's Fig. 5b ablations, named as it names them
            m = cfg.mmsa
            off = {"WM": m.mixer_rollout, "SALE": m.sale, "KLB": m.kl_balance}
            off["GS"] = m.mixer_state
            algo += "".join(f" No-{name}" for name, on in off.items() if not on)
        if algo == "qmix":
            algo += _qmix_recipe(cfg.qmix)
    return f"{algo} seed {seed} ({run.name})"


_RECIPE = {
    "optimizer": "{}",
    "lr": "lr {:g}",
    "td_lambda": "λ {:g}",
    "batch_size": "B {}",
    "epsilon_anneal_steps": "ε {}",
    "update_every_episodes": "1 upd/{} ep",
}
"""QMIX settings that make a recipe (pymarl's defaults against pymarl2's, say), in the short form
a label names them when they differ from the defaults, so runs of two recipes never read as one:
optimiser, learning rate, TD(lambda), batch in episodes, epsilon's anneal steps, finished episodes
per update."""


def _qmix_recipe(q: QMIXConfig) -> str:
    default = QMIXConfig()
    changed = [
        f.format(getattr(q, k)) for k, f in _RECIPE.items() if getattr(q, k) != getattr(default, k)
    ]
    return f" [{', '.join(changed)}]" if changed else ""


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
