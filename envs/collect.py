"""Collect real trajectories with any policy on vectorised environment copies under a loss model."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from rmio.envs.base import EnvSpec
from rmio.envs.loss import LossConfig, make_loss_model
from rmio.envs.registry import EnvConfig
from rmio.envs.trajectory import EpisodeBuilder, TrajectoryBuffer
from rmio.envs.vector import make_vector_env

Policy = Callable[[np.ndarray, np.ndarray, np.ndarray | None], np.ndarray]
"""(obs (B, n, obs_dim) with lost rows zeroed, observed (B, n), avail (B, n, A) or None) ->
actions. A policy with memory (a recurrent actor) may also have an ``episode_start(k)`` method:
``collect`` calls it whenever copy k starts an episode, so it can reset that copy's state."""


def _episode_start(policy: Policy, k: int) -> None:
    start = getattr(policy, "episode_start", None)
    if start is not None:
        start(k)


def random_policy(spec: EnvSpec, seed: int) -> Policy:
    rng = np.random.default_rng(seed)

    def act(obs: np.ndarray, observed: np.ndarray, avail: np.ndarray | None) -> np.ndarray:
        return np.stack(
            [spec.random_actions(rng, None if avail is None else avail[b]) for b in range(len(obs))]
        )

    return act


@dataclass
class CollectStats:
    env_steps: int
    episodes: int
    seconds: float

    @property
    def steps_per_second(self) -> float:
        return self.env_steps / max(self.seconds, 1e-9)


def collect(
    env_cfg: EnvConfig,
    loss_cfg: LossConfig,
    *,
    steps: int,
    num_envs: int = 1,
    seed: int = 0,
    policy: Policy | None = None,
    progress: Callable[[int], None] | None = None,
    vector_mode: str = "auto",
    venv: Any = None,
) -> tuple[TrajectoryBuffer, CollectStats]:
    """Run ``policy`` for at least ``steps`` environment steps (whole episodes only).

    Each copy k has its own loss model seeded with ``seed + k``, so a collection is reproducible.
    Episodes still running when the budget is reached are finished, never cut: every stored
    episode ends where the environment ended it. ``venv``: an open vector env to reuse (and leave
    open), so a training loop that collects every iteration builds (and JIT-compiles) it once.
    """
    import time

    start = time.perf_counter()
    owned = venv is None
    if venv is not None and venv.num_envs != num_envs:
        raise ValueError(f"venv has {venv.num_envs} copies, num_envs is {num_envs}")
    with (
        make_vector_env(env_cfg, num_envs, vector_mode)
        if owned
        else contextlib.nullcontext(venv) as venv
    ):
        spec = venv.spec
        policy = policy or random_policy(spec, seed)
        losses = [
            make_loss_model(loss_cfg, spec.n_agents, seed + 1000 + k) for k in range(num_envs)
        ]
        for k, lm in enumerate(losses):
            lm.reset(seed=seed + 1000 + k)
        buf = TrajectoryBuffer(
            spec, meta={"env": env_cfg.__dict__, "loss": loss_cfg.__dict__, "seed": seed}
        )
        bstep = venv.reset(seed=seed)
        observed = np.stack([lm.sample() for lm in losses])
        builders = [EpisodeBuilder(spec) for _ in range(num_envs)]
        for k, b in enumerate(builders):
            b.start(bstep.obs[k], bstep.state[k], observed[k], _avail(bstep.avail_actions, k))
            _episode_start(policy, k)
        active = np.ones(num_envs, dtype=bool)  # copies whose current episode will be kept
        taken = 0
        while active.any():
            visible = bstep.obs * observed[..., None]
            actions = policy(visible, observed, bstep.avail_actions)
            bstep = venv.step(actions)
            taken += int(active.sum())
            if progress is not None:
                progress(int(active.sum()))
            new_observed = np.stack([lm.sample() for lm in losses])
            for k, b in enumerate(builders):
                if not active[k]:
                    continue
                done = bool(bstep.done[k])
                final_state = (
                    bstep.final_state[k] if bstep.final_state is not None else bstep.state[k]
                )
                obs_k = bstep.final_obs[k] if done else bstep.obs[k]
                state_k = final_state if done else bstep.state[k]
                b.add(
                    spec.executed_actions(actions[k]),
                    obs_k,
                    state_k,
                    float(bstep.reward[k]),
                    bool(bstep.terminated[k]),
                    bool(bstep.truncated[k]),
                    new_observed[k],
                    None if done else _avail(bstep.avail_actions, k),
                )
                if done:
                    buf.add_episode(b.finish())
                    losses[k].reset()
                    new_observed[k] = losses[k].sample()
                    _episode_start(policy, k)  # the vector env already reset copy k
                    if taken >= steps:
                        active[k] = False
                    else:
                        b.start(
                            bstep.obs[k],
                            bstep.state[k],
                            new_observed[k],
                            _avail(bstep.avail_actions, k),
                        )
            observed = new_observed
    stats = CollectStats(
        env_steps=taken, episodes=buf.num_episodes, seconds=time.perf_counter() - start
    )
    return buf, stats


def _avail(avail: np.ndarray | None, k: int) -> np.ndarray | None:
    return None if avail is None else avail[k]
