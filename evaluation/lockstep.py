"""The batched in-process rollouts of the robustness sweep: a seed family's episodes step in
lockstep (``Lockstep``), one actor call serves every agent of every environment and one world-model
call per window step every environment with a blind agent (``BatchedPolicy``), with the swarm's
semantics and seeding (rmio.evaluation.reference)."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from rmio.envs.loss import LossConfig, LossyEnv, make_loss_model
from rmio.envs.registry import EnvConfig, make_env
from rmio.runtime.bundle import Manifest
from rmio.runtime.history import ActionCodec, replay_plan
from rmio.runtime.models import (
    ActorRunner,
    LatentState,
    WorldModel,
    carries_state,
    categorical_kl,
)

SEED_STRIDE = 1000
"""Seed family s runs episodes with env seeds s*SEED_STRIDE + k."""


@dataclass
class Episode:
    seed: int
    ret: float
    steps: int
    won: bool | None
    lost_fraction: float


class BatchedPolicy:
    """The joint policy of ``n_envs`` environments under loss, one strategy, batched over
    environments."""

    def __init__(
        self,
        actor: ActorRunner,
        manifest: Manifest,
        strategy: str,
        wm: WorldModel | None = None,
        wm_mode: str = "window",
    ) -> None:
        if strategy in ("world-model", "no-finetune") and wm is None:
            raise ValueError(f"strategy {strategy} needs a world model")
        self.actor, self.manifest, self.strategy, self.wm, self.wm_mode = (
            actor,
            manifest,
            strategy,
            wm,
            wm_mode if carries_state(manifest) else "window",  # a window graph has no state
        )
        self.spec = manifest.spec
        self.codec = ActionCodec.of(self.spec)
        self.l = manifest.history_window
        self.recon_calls = 0
        self.recon_seconds = 0.0
        self.truth: Any = None
        """A Lockstep whose true observations to measure against: then, on every lost agent-step,
        how far the observation the agent acted on is from the true one and how far its action is
        from the one it would have taken on the truth (issue 25); ``errors`` holds the sums."""
        self.errors = {"lost": 0.0, "obs_mae": 0.0, "action": 0.0}

    def reset(self, n_envs: int) -> None:
        n, d = self.spec.n_agents, self.spec.obs_dim
        self.obs: list[np.ndarray] = []  # per step: (E, n, d), lost rows zero
        self.masks: list[np.ndarray] = []  # per step: (E, n) bool
        self.acts: list[np.ndarray] = []  # per step: (E, n, ...) executed joint actions
        self.last_real = np.zeros((n_envs, n, d), np.float32)
        self.chain_t = np.full(n_envs, -(10**9))
        self.chain: LatentState | None = None
        self.none = np.stack([self.codec.none()] * n)
        self.actor_state = self.actor.initial_state(n_envs * n)
        """A recurrent actor's hidden state, row e * n + i for agent i of environment e."""

    def _prev_actions(self, start: int, t: int, envs: np.ndarray) -> np.ndarray:
        rows = [
            self.acts[h][envs]
            if h >= 0
            else np.broadcast_to(self.none, (len(envs), *self.none.shape))
            for h in range(start - 1, t)
        ]
        return np.stack(rows)

    def _reconstruct(self, t: int, envs: np.ndarray, out: np.ndarray) -> None:
        """Reconstructions of step t for ``envs`` into ``out`` (E, n, d), grouped by window
        start."""
        assert self.wm is not None
        incremental = self.wm_mode == "incremental"
        if incremental and self.chain is None:
            self.chain = self.wm.initial_state(len(self.last_real))
        plans = [
            replay_plan(t, self.l, int(c) if c >= 0 else None, incremental)
            for c in self.chain_t[envs]
        ]
        cont = np.array([c for c, _ in plans], bool)
        starts = np.array([s for _, s in plans], np.int64)
        began = time.perf_counter()
        for start in np.unique(starts):
            sel = starts == start
            group = envs[sel]
            obs = np.stack([o[group] for o in self.obs[start : t + 1]])
            masks = np.stack([m[group] for m in self.masks[start : t + 1]]).astype(np.float32)
            prev = self._prev_actions(int(start), t, group)
            state = None
            if incremental and cont[sel].all():
                assert self.chain is not None
                state = LatentState(self.chain.h[group], self.chain.z[group])
            final, recons = self.wm.replay_batch(obs, prev, masks, state)
            out[group] = recons[-1]
            self.recon_calls += len(group)
            if incremental:
                assert self.chain is not None
                self.chain.h[group], self.chain.z[group] = final.h, final.z
                self.chain_t[group] = t
        self.recon_seconds += time.perf_counter() - began

    def act(
        self, obs: np.ndarray, observed: np.ndarray, avail: np.ndarray | None, active: np.ndarray
    ) -> np.ndarray:
        """Joint actions (E, n, ...) for step t; rows of inactive (finished) environments are
        ignored."""
        t = len(self.obs)
        seen = np.asarray(obs, np.float32) * observed[..., None]
        self.obs.append(seen)
        self.masks.append(observed.copy())
        self.last_real = np.where(observed[..., None], seen, self.last_real)
        inputs = seen.copy()
        blind_envs = np.flatnonzero(active & ~observed.all(axis=1))
        if len(blind_envs) and self.strategy != "zero-fill":
            if self.strategy == "hold-last":
                fill = self.last_real
            else:
                fill = np.zeros_like(seen)
                self._reconstruct(t, blind_envs, fill)
            inputs = np.where(observed[..., None], seen, fill)
        E, n = observed.shape
        ids = np.tile(np.arange(n, dtype=np.int64), E)
        flat_avail = None if avail is None else avail.reshape(E * n, -1)
        before = self.actor_state
        actions, self.actor_state = self.actor.step(
            inputs.reshape(E * n, -1), ids, flat_avail, before
        )
        joint = actions.reshape(E, n, *actions.shape[1:])
        self.acts.append(joint)
        if self.truth is not None:
            envs = active & ~observed.all(axis=1)
            self._measure(self.truth.true_obs, inputs, joint, avail, envs, observed, before)
        return joint

    def _measure(
        self,
        obs: np.ndarray,
        inputs: np.ndarray,
        joint: np.ndarray,
        avail: np.ndarray | None,
        envs: np.ndarray,
        observed: np.ndarray,
        state: np.ndarray | None = None,
    ) -> None:
        """``state``: a recurrent actor's hidden state before this step (the action on the truth
        is taken from the same state, not advanced)."""
        lost = envs[:, None] & ~observed  # (E, n)
        if not lost.any():
            return
        e, i = np.nonzero(lost)
        fm = np.asarray(self.spec.obs_feature_mask, np.float32)[i]
        true = np.asarray(obs, np.float32)[e, i]
        err = (np.abs(inputs[e, i] - true) * fm).sum(-1) / np.maximum(fm.sum(-1), 1.0)
        rows = None if state is None else state[e * observed.shape[1] + i]
        on_truth, _ = self.actor.step(
            true, i.astype(np.int64), None if avail is None else avail[e, i], rows
        )
        taken = joint[e, i]
        if self.spec.discrete:
            act_err = (on_truth.reshape(-1) != taken.reshape(-1)).astype(np.float64)
            if self.actor.exports_probs:  # KL(pi(.|o) || pi(.|o^)): changes before they flip
                av = None if avail is None else avail[e, i]
                p = self.actor.probs(true, i.astype(np.int64), av, rows)
                q = self.actor.probs(inputs[e, i], i.astype(np.int64), av, rows)
                kl = categorical_kl(p, q)
                self.errors["action_kl"] = self.errors.get("action_kl", 0.0) + float(kl.sum())
        else:
            act_err = np.abs(on_truth - taken).reshape(len(e), -1).mean(-1)
        self.errors["lost"] += len(e)
        self.errors["obs_mae"] += float(err.sum())
        self.errors["action"] += float(act_err.sum())


@dataclass
class Lockstep:
    """``episodes`` environments of one scenario, stepped together; reused across the sweep."""

    env_cfg: EnvConfig
    episodes: int
    envs: list[Any] = field(default_factory=list)
    true_obs: Any = None
    """The current step's true observations (E, n, d), for measurements only."""

    def __enter__(self) -> Lockstep:
        self.envs = [make_env(self.env_cfg) for _ in range(self.episodes)]
        return self

    def __exit__(self, *exc: Any) -> None:
        for env in self.envs:
            env.close()

    @property
    def spec(self) -> Any:
        return self.envs[0].spec

    def run(
        self,
        act: Callable[[np.ndarray, np.ndarray, np.ndarray | None, np.ndarray], np.ndarray],
        loss: LossConfig,
        seed_family: int,
    ) -> list[Episode]:
        """One episode per environment; env k uses seed ``seed_family * SEED_STRIDE + k``."""
        n = self.spec.n_agents
        lossy = [LossyEnv(env, make_loss_model(loss, n, seed_family)) for env in self.envs]
        seeds = [seed_family * SEED_STRIDE + k for k in range(self.episodes)]
        steps = [env.reset(seed=s) for env, s in zip(lossy, seeds, strict=True)]
        active = np.ones(self.episodes, bool)
        ret, length, lost = (
            np.zeros(self.episodes),
            np.zeros(self.episodes, int),
            np.zeros(self.episodes),
        )
        won: list[bool | None] = [None] * self.episodes
        while active.any():
            obs = np.stack([ts.obs for ts in steps])
            # what the agents would have seen: only measurements read it, never a policy
            self.true_obs = np.stack([ts.true_obs for ts in steps])
            observed = np.stack([np.asarray(ts.observed, bool) for ts in steps])
            avail = (
                None
                if steps[0].avail_actions is None
                else np.stack([ts.avail_actions for ts in steps])
            )
            actions = act(obs, observed, avail, active)
            for k in np.flatnonzero(active):
                lost[k] += int((~observed[k]).sum())
                ts = lossy[k].step(actions[k])
                ret[k] += ts.reward
                length[k] += 1
                steps[k] = ts
                if ts.done:
                    active[k] = False
                    w = ts.info.get("won")
                    won[k] = None if w is None else bool(w)
        return [
            Episode(
                seeds[k], float(ret[k]), int(length[k]), won[k], float(lost[k] / (length[k] * n))
            )
            for k in range(self.episodes)
        ]


def random_policy(spec: Any, seed: int) -> Callable[..., np.ndarray]:
    """Uniform random joint actions: the R_random of the normalised robustness score."""
    rng = np.random.default_rng(seed)

    def act(
        obs: np.ndarray, observed: np.ndarray, avail: np.ndarray | None, active: np.ndarray
    ) -> np.ndarray:
        return np.stack(
            [spec.random_actions(rng, None if avail is None else avail[k]) for k in range(len(obs))]
        )

    return act
