"""Run whole episodes of one environment under a loss model, recording what happened at every
step."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from rmio.envs.loss import LossConfig, LossyEnv, make_loss_model
from rmio.envs.registry import EnvConfig, make_env

StepPolicy = Callable[[np.ndarray, np.ndarray, np.ndarray | None], np.ndarray]
"""(obs (n, obs_dim), lost rows zeroed; observed (n,); avail (n, A) or None) -> joint action."""


@dataclass
class EpisodeRecord:
    episode: int
    seed: int
    ret: float
    steps: int
    terminated: bool
    won: bool | None
    observed: np.ndarray
    """(steps + 1, n_agents) bool: the loss mask of every observation of the episode."""
    seconds: float

    @property
    def lost_fraction(self) -> float:
        return float(1.0 - self.observed.mean())

    @property
    def longest_outage(self) -> int:
        """Longest run of consecutive steps in which at least one agent was blind."""
        any_lost = ~self.observed.all(axis=1)
        best = run = 0
        for lost in any_lost:
            run = run + 1 if lost else 0
            best = max(best, run)
        return best


def run_episodes(
    env_cfg: EnvConfig,
    loss_cfg: LossConfig,
    policy_factory: Callable[[object], StepPolicy],
    *,
    episodes: int,
    seed: int = 0,
    on_step: Callable[[int, int, float, np.ndarray], None] | None = None,
) -> list[EpisodeRecord]:
    """Episode k is seeded with ``seed + k`` (environment and loss model), so runs are
    reproducible."""
    records = []
    with make_env(env_cfg) as base:
        env = LossyEnv(base, make_loss_model(loss_cfg, base.spec.n_agents, seed))
        policy = policy_factory(base.spec)
        for k in range(episodes):
            start = time.perf_counter()
            ts = env.reset(seed=seed + k)
            masks = [ts.observed]
            ret, steps = 0.0, 0
            while True:
                action = policy(ts.obs, ts.observed, ts.avail_actions)
                ts = env.step(action)
                ret += ts.reward
                steps += 1
                masks.append(ts.observed)
                if on_step is not None:
                    on_step(k, steps, ret, ts.observed)
                if ts.done:
                    break
            won = ts.info.get("won")
            records.append(
                EpisodeRecord(
                    k,
                    seed + k,
                    ret,
                    steps,
                    ts.terminated,
                    None if won is None else bool(won),
                    np.stack(masks),
                    time.perf_counter() - start,
                )
            )
    return records
