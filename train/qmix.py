"""QMIX on the real environment (`rmio train qmix`): episode replay, epsilon-greedy vectorised
runners, a recurrent Q-agent, the monotonic hypernetwork mixer, target networks.

The loop mirrors `rmio train mappo`: the same run directory, progress bar, metric logs
(``qmix.jsonl``/``qmix.csv``/TensorBoard), greedy evaluations in ``eval.jsonl`` with the learning
curve, and checkpoints that hold everything needed to resume (networks, targets, optimiser, the
replay buffer, counters and every random stream) by re-running the same command. Agent inputs and
the mixer's state are normalised with fixed statistics (``qmix.normalise_inputs``). Discrete-action
tasks only.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.console import Console

from rmio.config import Config
from rmio.envs.base import EnvSpec
from rmio.envs.registry import make_env
from rmio.envs.vector import make_vector_env
from rmio.errors import RmioError
from rmio.train.common import begin_training, progress
from rmio.train.mappo import log_eval
from rmio.train.qmix_config import QMIXConfig
from rmio.train.qmix_learner import QLearner
from rmio.train.qmix_nets import RNNAgent, masked_argmax
from rmio.train.qmix_replay import EpisodeBuffer, Runner, epsilon_at
from rmio.train.runlog import MetricLog, load_checkpoint, restore_rng, rng_state, save_checkpoint
from rmio.train.wm_data import random_policy_stats

EVAL_SEED_OFFSET = 900_000
"""Evaluation episodes use seeds apart from training's (as MAPPO's evaluation does)."""


def evaluate_agent(agent: RNNAgent, cfg: Config, episodes: int, seed: int) -> dict[str, float]:
    """Greedy episodes with complete observations; episode k is seeded ``seed + k``. The hidden
    state and the previous action start from zero/none in every episode."""
    dev = next(agent.parameters()).device
    rets, lengths, won = [], [], []
    with make_env(cfg.env) as env:
        n = env.spec.n_agents
        ids = torch.arange(n, device=dev)
        for k in range(episodes):
            ts = env.reset(seed=seed + k)
            h = agent.init_hidden(n, device=dev)
            prev = torch.full((n,), -1, device=dev)
            ret, steps = 0.0, 0
            while True:
                with torch.no_grad():
                    obs = torch.as_tensor(ts.obs, dtype=torch.float32, device=dev)
                    qvals, h = agent(agent.inputs(obs, prev, ids), h)
                avail = None
                if ts.avail_actions is not None:
                    avail = torch.as_tensor(ts.avail_actions, device=dev).bool()
                action = masked_argmax(qvals, avail)
                ts = env.step(action.cpu().numpy())
                prev = action
                ret += ts.reward
                steps += 1
                if ts.done:
                    break
            rets.append(ret)
            lengths.append(steps)
            if ts.info.get("won") is not None:
                won.append(bool(ts.info["won"]))
    out = {
        "return_mean": float(np.mean(rets)),
        "return_std": float(np.std(rets)),
        "episode_length": float(np.mean(lengths)),
    }
    if won:
        out["win_rate"] = float(np.mean(won))
    return out


def _evaluate(
    cfg: Config, agent: RNNAgent, run_dir: Path, step: int, console: Console, metrics: MetricLog
) -> dict[str, float]:
    agent.eval()
    result = evaluate_agent(agent, cfg, cfg.run.eval_episodes, cfg.run.seed + EVAL_SEED_OFFSET)
    log_eval(run_dir, step, result, console)
    metrics.log_eval(step, result)
    return result


def _require_discrete(spec: EnvSpec, what: str) -> None:
    if not spec.discrete:
        raise RmioError(
            f"{what} needs discrete actions and {spec.name} has continuous ones; use "
            "`rmio train mappo` there"
        )


def check_value_task(cfg: Config, what: str = "QMIX") -> None:
    """Refuse a task QMIX's stack cannot train (continuous actions) with one RmioError line, read
    from the environment's spec: `rmio train` calls it before it makes the run directory, so a
    refused run leaves nothing behind."""
    with make_env(cfg.env) as env:
        _require_discrete(env.spec, what)


def _fix_stats(cfg: Config, learner: QLearner) -> int:
    """Input statistics from random-policy steps (as MAPPO's); the steps they cost."""
    if not cfg.qmix.normalise_inputs:
        return 0
    warm, stats = random_policy_stats(cfg)
    learner.set_stats(*stats)
    return len(warm) - warm.num_episodes


def train_qmix(cfg: Config, run_dir: Path, device: str, console: Console) -> Path:
    """Train until ``qmix.env_steps``; writes ``qmix.pt`` (the final networks and evaluation)."""
    return train_value(
        cfg, run_dir, device, console, "QMIX", lambda spec, dev: QLearner(spec, cfg.qmix, dev)
    )


def train_value(
    cfg: Config,
    run_dir: Path,
    device: str,
    console: Console,
    what: str,
    make_learner: Callable[[EnvSpec, torch.device], QLearner],
) -> Path:
    """The off-policy loop QMIX and MMSA share (``what`` names the algorithm, its files are
    ``<what>.pt``, ``ckpt_<what>.pt`` and ``<what>.jsonl``/``.csv`` in lower case): collect with
    the learner's epsilon-greedy agent, store whole episodes, update on sampled batches, evaluate,
    log and checkpoint on ``qmix:``'s schedule, until ``qmix.env_steps``."""
    stem = what.lower()
    final = run_dir / f"{stem}.pt"
    dev = begin_training(cfg, final, device, what, console)
    if dev is None:
        return final
    q = cfg.qmix
    ckpt_path = run_dir / f"ckpt_{stem}.pt"
    start = load_checkpoint(ckpt_path, dev) if ckpt_path.exists() else None
    rng = np.random.default_rng(cfg.run.seed)
    c = {"steps": 0, "episodes": 0, "updates": 0, "next_eval": 0}
    c.update(next_ckpt=q.checkpoint_every, next_log=q.log_every, since_update=0)
    with make_vector_env(cfg.env, cfg.run.num_envs, cfg.run.vector_mode) as venv:
        spec = venv.spec
        _require_discrete(spec, what)
        learner = make_learner(spec, dev)
        buffer = EpisodeBuffer(q.buffer_size, spec)
        if start is None:
            c["steps"] = _fix_stats(cfg, learner)
        else:
            learner.load_state_dict(start["learner"])
            buffer.load_state_dict(start["replay"])
            c.update(start["counters"])
            rng.bit_generator.state = start["np_rng"]
            restore_rng(start["torch_rng"])
            console.print(f"resuming {what} at {c['steps']} env steps ({c['episodes']} episodes)")
        metrics = MetricLog(run_dir, stem, config=cfg.to_dict())
        runner = Runner(venv, learner.agent, rng, dev)
        runner.reset(seed=cfg.run.seed + c["steps"])
        returns: deque[float] = deque(maxlen=100)
        window: dict[str, list[float]] = {}
        t0, steps0 = time.perf_counter(), c["steps"]
        with progress(console, what, q.env_steps) as (bar, task):
            bar.update(task, completed=c["steps"])
            while c["steps"] < q.env_steps:
                if c["steps"] >= c["next_eval"]:
                    _evaluate(cfg, learner.agent, run_dir, c["steps"], console, metrics)
                    c["next_eval"] += q.eval_every
                learner.agent.train()
                finished = runner.step(epsilon_at(q, c["steps"]))
                c["steps"] += venv.num_envs
                for ep in finished:
                    buffer.add(ep)
                    returns.append(ep.ret)
                c["episodes"] += len(finished)
                c["since_update"] += len(finished)
                while buffer.count >= q.batch_size and c["since_update"] >= q.update_every_episodes:
                    c["since_update"] -= q.update_every_episodes
                    batch = buffer.sample(q.batch_size, rng, dev)
                    for key, value in learner.update(batch, c["episodes"]).items():
                        window.setdefault(key, []).append(value)
                    c["updates"] += 1
                bar.update(task, completed=min(c["steps"], q.env_steps))
                if c["steps"] >= c["next_log"]:
                    c["next_log"] = (c["steps"] // q.log_every + 1) * q.log_every
                    row = _log_row(window, returns, q, c, time.perf_counter() - t0, steps0)
                    metrics.log(c["steps"], row)
                    window = {}
                    bar.update(
                        task,
                        info=f"return {row['train_return']:.2f} eps {row['epsilon']:.2f} "
                        f"loss {row.get('loss', float('nan')):.4f}",
                    )
                if c["steps"] >= c["next_ckpt"]:
                    c["next_ckpt"] = (c["steps"] // q.checkpoint_every + 1) * q.checkpoint_every
                    save_checkpoint(ckpt_path, _state(cfg, spec, learner, buffer, c, rng))
        result = _evaluate(cfg, learner.agent, run_dir, c["steps"], console, metrics)
        metrics.close()
        state = _state(cfg, spec, learner, buffer, c, rng)
    save_checkpoint(ckpt_path, state)
    del state["replay"]
    save_checkpoint(final, {**state, "algo": stem, "final_eval": result})
    console.print(f"{what} done: {c['steps']} env steps, {c['updates']} updates; wrote {final}")
    return final


def _log_row(
    window: dict[str, list[float]],
    returns: deque[float],
    q: QMIXConfig,
    c: dict[str, int],
    seconds: float,
    steps0: int,
) -> dict[str, float]:
    row = {k: float(np.mean(v)) for k, v in window.items() if k != "target_updated"}
    row.update(
        {
            "train_return": float(np.mean(returns)) if returns else float("nan"),
            "epsilon": epsilon_at(q, c["steps"]),
            "episodes": float(c["episodes"]),
            "updates": float(c["updates"]),
            "env_steps_per_s": (c["steps"] - steps0) / max(seconds, 1e-9),
        }
    )
    return row


def _state(
    cfg: Config,
    spec: EnvSpec,
    learner: QLearner,
    buffer: EpisodeBuffer,
    counters: dict[str, int],
    rng: np.random.Generator,
) -> dict[str, Any]:
    return {
        "config": cfg.to_dict(),
        "config_hash": cfg.digest(),
        "spec": spec.to_dict(),
        "learner": learner.state_dict(),
        "replay": buffer.state_dict(),
        "counters": dict(counters),
        "env_steps": counters["steps"],
        "np_rng": rng.bit_generator.state,
        "torch_rng": rng_state(),
    }


def load_qmix_agent(path: Path, device: str = "cpu") -> tuple[RNNAgent, dict[str, Any]]:
    """The trained Q-agent of a ``qmix.pt`` or ``ckpt_qmix.pt``, in eval mode."""
    from rmio.config import build_dataclass

    ckpt = load_checkpoint(path, device)
    cfg = build_dataclass(Config, ckpt["config"], str(path))
    agent = RNNAgent(EnvSpec.from_dict(ckpt["spec"]), cfg.qmix).to(device)
    agent.load_state_dict(ckpt["learner"]["agent"])
    return agent.eval(), ckpt
