"""Model-free r-MAPPO on the real environment (`rmio train mappo`): the paper's baseline.

Vectorised copies collect ``rollout`` steps each, then PPO updates the shared actor (local
observations only) and the centralised critic. Observation statistics are fixed from the first
random-policy steps (counted in the budget), so the actor's input scale never drifts and the
exported graph can carry them. Resumable: re-run the same command on the same run directory.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.console import Console

from rmio.config import Config
from rmio.envs.vector import BatchStep, make_vector_env
from rmio.train.common import begin_training, progress
from rmio.train.evaluate import evaluate_policy, plot_curves
from rmio.train.policy import Actor, Critic, joint_act
from rmio.train.ppo import PPO, Rollout
from rmio.train.runlog import MetricLog, load_checkpoint, restore_rng, rng_state, save_checkpoint
from rmio.train.wm_data import random_policy_stats


def build_agents(
    cfg: Config, spec: Any, obs_mean: np.ndarray, obs_std: np.ndarray, device: torch.device
) -> PPO:
    p = cfg.policy.ppo
    actor = Actor(spec, p.hidden, p.log_std_init, obs_mean, obs_std).to(device)
    critic = Critic(spec, p.hidden, obs_mean, obs_std).to(device)
    return PPO(actor, critic, p)


def log_eval(run_dir: Path, step: int, result: dict[str, float], console: Console) -> None:
    with open(run_dir / "eval.jsonl", "a") as fh:
        fh.write(json.dumps({"step": step, **result}) + "\n")
    plot_curves([run_dir], run_dir / "learning_curve.png")
    extra = f", win rate {result['win_rate']:.2f}" if "win_rate" in result else ""
    console.print(
        f"eval @ {step} env steps: return {result['return_mean']:.2f} ± "
        f"{result['return_std']:.2f}{extra}"
    )


def evaluate_and_log(
    cfg: Config,
    actor: Any,
    run_dir: Path,
    step: int,
    console: Console,
    metrics: MetricLog | None = None,
) -> dict[str, float]:
    """Deterministic evaluation episodes (seed family apart from training's), appended to
    eval.jsonl and, with ``metrics``, in TensorBoard as ``eval/*``."""
    result = evaluate_policy(actor, cfg.env, cfg.run.eval_episodes, cfg.run.seed + 900_000)
    log_eval(run_dir, step, result, console)
    if metrics is not None:
        metrics.log_eval(step, result)
    return result


def _tensors(b: BatchStep, device: torch.device) -> tuple[torch.Tensor, torch.Tensor | None]:
    obs = torch.as_tensor(b.obs, device=device)
    avail = (
        None if b.avail_actions is None else torch.as_tensor(b.avail_actions, device=device).float()
    )
    return obs, avail


def train_mappo(cfg: Config, run_dir: Path, device: str, console: Console) -> Path:
    final = run_dir / "policy.pt"
    dev = begin_training(cfg, final, device, "MAPPO", console)
    if dev is None:
        return final
    m = cfg.policy.mappo
    ckpt_path = run_dir / "ckpt_mappo.pt"
    start = load_checkpoint(ckpt_path, dev) if ckpt_path.exists() else None
    if start is None:
        warm, (mean, std, _, _) = random_policy_stats(cfg)
        steps_done, next_eval, next_ckpt = len(warm) - warm.num_episodes, 0, m.checkpoint_every
    else:
        mean, std = (
            np.asarray(start["obs_mean"], np.float32),
            np.asarray(start["obs_std"], np.float32),
        )
        steps_done, next_eval, next_ckpt = (
            start["env_steps"],
            start["next_eval"],
            start["next_ckpt"],
        )
    gen = torch.Generator(device=dev).manual_seed(cfg.run.seed)
    with make_vector_env(cfg.env, cfg.run.num_envs, cfg.run.vector_mode) as venv:
        ppo = build_agents(cfg, venv.spec, mean, std, dev)
        if start is not None:
            ppo.load_state_dict(start["ppo"])
            restore_rng(start["torch_rng"])
            gen.set_state(start["gen_rng"].cpu())
            console.print(f"resuming MAPPO at {steps_done} env steps")
        metrics = MetricLog(run_dir, "mappo", config=cfg.to_dict())
        b = venv.reset(seed=cfg.run.seed + steps_done)
        episode_returns: list[float] = []
        running = np.zeros(venv.num_envs)
        t0, steps0 = time.perf_counter(), steps_done  # this process's share, on resume
        with progress(console, "MAPPO", m.env_steps) as (bar, task):
            bar.update(task, completed=steps_done)
            while steps_done < m.env_steps:
                if steps_done >= next_eval:
                    evaluate_and_log(cfg, ppo.actor, run_dir, steps_done, console, metrics)
                    next_eval += m.eval_every
                cols: dict[str, list[torch.Tensor]] = {
                    k: []
                    for k in (
                        "obs",
                        "actions",
                        "logp",
                        "values",
                        "rewards",
                        "next",
                        "dones",
                        "avail",
                    )
                }
                for _ in range(m.rollout):
                    obs, avail = _tensors(b, dev)
                    with torch.no_grad():
                        act, logp = joint_act(ppo.actor, obs, avail)
                        value = ppo.value(obs)
                    b = venv.step(act.cpu().numpy())
                    with torch.no_grad():
                        boot = ppo.value(
                            torch.as_tensor(b.final_obs, device=dev)
                        )  # V of the true next state
                    term = torch.as_tensor(b.terminated, device=dev).float()
                    for k, v in (
                        ("obs", obs),
                        ("actions", act),
                        ("logp", logp),
                        ("values", value),
                        ("rewards", torch.as_tensor(b.reward, device=dev)),
                        ("next", boot * (1 - term)),
                        ("dones", torch.as_tensor(b.done, device=dev).float()),
                    ):
                        cols[k].append(v)
                    if avail is not None:
                        cols["avail"].append(avail)
                    running += b.reward
                    for k in np.flatnonzero(b.done):
                        episode_returns.append(float(running[k]))
                        running[k] = 0.0
                    steps_done += venv.num_envs
                    bar.update(task, completed=min(steps_done, m.env_steps))
                roll = Rollout(
                    *(
                        torch.stack(cols[k])
                        for k in ("obs", "actions", "logp", "values", "rewards", "next", "dones")
                    ),
                    avail=torch.stack(cols["avail"]) if cols["avail"] else None,
                )
                stats = ppo.update(roll, gen)
                recent = episode_returns[-20:]
                stats.update(
                    {
                        "train_return": float(np.mean(recent)) if recent else float("nan"),
                        "env_steps_per_s": (steps_done - steps0)
                        / max(time.perf_counter() - t0, 1e-9),
                    }
                )
                metrics.log(steps_done, stats)
                bar.update(
                    task,
                    info=f"return {stats['train_return']:.1f} value loss {stats['value_loss']:.3f}",
                )
                if steps_done >= next_ckpt:
                    next_ckpt += m.checkpoint_every
                    save_checkpoint(
                        ckpt_path,
                        _state(
                            cfg, venv.spec, ppo, mean, std, steps_done, next_eval, next_ckpt, gen
                        ),
                    )
        result = evaluate_and_log(cfg, ppo.actor, run_dir, steps_done, console, metrics)
        metrics.close()
        state = _state(cfg, venv.spec, ppo, mean, std, steps_done, next_eval, next_ckpt, gen)
    save_checkpoint(ckpt_path, state)
    save_checkpoint(final, {**state, "algo": "mappo", "final_eval": result})
    console.print(f"MAPPO done: {steps_done} env steps; wrote {final}")
    return final


def _state(
    cfg: Config,
    spec: Any,
    ppo: PPO,
    mean: np.ndarray,
    std: np.ndarray,
    steps: int,
    next_eval: int,
    next_ckpt: int,
    gen: torch.Generator,
) -> dict[str, Any]:
    return {
        "config": cfg.to_dict(),
        "config_hash": cfg.digest(),
        "spec": spec.to_dict(),
        "ppo": ppo.state_dict(),
        "obs_mean": mean.tolist(),
        "obs_std": std.tolist(),
        "env_steps": steps,
        "next_eval": next_eval,
        "next_ckpt": next_ckpt,
        "torch_rng": rng_state(),
        "gen_rng": gen.get_state(),
    }
