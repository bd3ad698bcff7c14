"""In-process conditional-CTDE evaluation of a bundle, with exactly the swarm's semantics and
seeding.

It is the yardstick for the swarm: same env seeds (episode k uses seed + k) and loss masks as
rmio.envs.rollout and the env host, the same per-agent batch-1 actor calls, the same windows and
the same incremental continuation rule as the coordinator. With no deadline missed and no process
fault the swarm's returns equal these exactly; ``recon="zero-fill"`` and ``"hold-last"`` give the
baselines that show what reconstruction buys.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from rmio.envs.loss import LossConfig, LossyEnv, make_loss_model
from rmio.envs.registry import EnvConfig, make_env
from rmio.runtime.bundle import load_manifest
from rmio.runtime.history import ActionCodec, replay_plan
from rmio.runtime.models import ActorRunner, LatentState, carries_state, world_model_runner
from rmio.runtime.vocabulary import STRATEGIES


@dataclass
class _Chain:
    t: int
    state: LatentState


class ReferencePolicy:
    """Joint policy of n agents under loss: own observation, else reconstruction / zeros /
    hold-last."""

    def __init__(
        self, bundle: str | Path, recon: str = "world-model", wm_mode: str = "window"
    ) -> None:
        self.manifest = load_manifest(bundle)
        self.spec = self.manifest.spec
        self.actor = ActorRunner(bundle, self.manifest)
        if recon not in STRATEGIES:
            raise ValueError(f"recon must be one of {STRATEGIES}, got {recon!r}")
        self.wm = world_model_runner(bundle, self.manifest) if recon == "world-model" else None
        self.recon = recon
        # a window graph (MARIE's) has no state to continue: every round reads its whole window
        self.wm_mode = wm_mode if carries_state(self.manifest) else "window"
        self.codec = ActionCodec.of(self.spec)
        self.l = self.manifest.history_window
        self.reset()

    def reset(self) -> None:
        self.obs: list[np.ndarray] = []
        self.masks: list[np.ndarray] = []
        self.acts: list[np.ndarray] = []
        self.last_real = np.zeros((self.spec.n_agents, self.spec.obs_dim), np.float32)
        self.chain: _Chain | None = None
        self.recons: dict[int, np.ndarray] = {}
        # a recurrent actor's hidden state, one per agent (batch 1, as each agent process keeps it)
        self.actor_states = [self.actor.initial_state(1) for _ in range(self.spec.n_agents)]

    def window(self, t: int, start: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """obs (T, n, d), prev actions a_{start-1..t-1} (T, n, ...), masks (T, n) for steps
        start..t."""
        obs = np.stack(self.obs[start : t + 1])
        masks = np.stack(self.masks[start : t + 1]).astype(np.float32)
        none = np.stack([self.codec.none()] * self.spec.n_agents)
        prev = [self.acts[h] if h >= 0 else none for h in range(start - 1, t)]
        return obs, np.stack(prev), masks

    def reconstruct(self, t: int) -> np.ndarray:
        assert self.wm is not None
        chain = self.chain
        cont, start = replay_plan(
            t, self.l, None if chain is None else chain.t, self.wm_mode == "incremental"
        )
        obs, prev, masks = self.window(t, start)
        state, recons = self.wm.replay(
            obs, prev, masks, chain.state if cont and chain is not None else None
        )
        if self.wm_mode == "incremental":
            self.chain = _Chain(t, state)
        return recons[-1]

    def act(self, obs: np.ndarray, observed: np.ndarray, avail: np.ndarray | None) -> np.ndarray:
        t = len(self.obs)
        self.obs.append(np.asarray(obs, np.float32) * observed[:, None])
        self.masks.append(np.asarray(observed, bool))
        seen_obs = self.obs[-1]
        self.last_real = np.where(observed[:, None], seen_obs, self.last_real)
        inputs = seen_obs.copy()
        if not observed.all():
            if self.recon == "world-model":
                recon = self.reconstruct(t)
                self.recons[t] = recon
                inputs[~observed] = recon[~observed]
            elif self.recon == "hold-last":
                inputs[~observed] = self.last_real[~observed]
        actions = []
        for i in range(self.spec.n_agents):
            action, self.actor_states[i] = self.actor.step(
                inputs[i], i, None if avail is None else avail[i], self.actor_states[i]
            )
            actions.append(self.codec.check(action))
        joint = np.stack(actions)
        self.acts.append(joint)
        return joint


def evaluate(
    bundle: str | Path,
    env_cfg: EnvConfig,
    loss_cfg: LossConfig,
    *,
    episodes: int,
    seed: int = 0,
    recon: str = "world-model",
    wm_mode: str = "window",
    trace: bool = False,
) -> list[dict[str, Any]]:
    """Episode k seeded with seed + k, loss model seeded with seed (as
    rmio.envs.rollout.run_episodes). With ``trace``, each row also holds the episode's joint actions
    and observation masks, step by step (what a swarm run's env host records), so a swarm can be
    compared with it action for action."""
    policy = ReferencePolicy(bundle, recon, wm_mode)
    out = []
    with make_env(env_cfg) as base:
        env = LossyEnv(base, make_loss_model(loss_cfg, base.spec.n_agents, seed))
        for k in range(episodes):
            start = time.perf_counter()
            policy.reset()
            ts = env.reset(seed=seed + k)
            ret, steps, lost = 0.0, 0, 0
            actions, masks = [], []
            while True:
                lost += int((~ts.observed).sum())
                joint = policy.act(ts.obs, ts.observed, ts.avail_actions)
                if trace:
                    actions.append(joint)
                    masks.append(ts.observed.copy())
                ts = env.step(joint)
                ret += ts.reward
                steps += 1
                if ts.done:
                    break
            out.append(
                {
                    "episode": k,
                    "seed": seed + k,
                    "return": ret,
                    "steps": steps,
                    "lost_fraction": lost / (steps * base.spec.n_agents),
                    "seconds": time.perf_counter() - start,
                }
            )
            if trace:
                out[-1].update(actions=np.stack(actions), observed=np.stack(masks))
    return out
