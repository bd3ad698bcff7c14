"""Diagnostics of joint pre-training, logged at every evaluation (``diag_*`` in joint.jsonl/csv and
TensorBoard's ``joint/diag_*``).

They separate "the world model is too weak" from "the policy update is too greedy" long before
the learning curve does:

- ``diag_obs_err_K`` / ``diag_reward_err_K``: open-loop error K steps ahead on the newest real
  episodes: the posterior filters ``context`` real steps, then the prior (its mode) rolls forward
  under the *real* actions. Observation error is the mean squared error in normalised units (1.0:
  as far off as one standard deviation), averaged over agents and real features; reward error is
  the absolute error against the smoothed reward the head is trained on. A window stops counting
  where its real episode ended.
- ``diag_imagined_return`` / ``diag_real_return`` / ``diag_return_gap``: the discounted return over
  the imagination horizon from the same real start states, imagined under the current policy
  exactly as training imagines it, against what the real episode that policy collected got (true
  rewards). A gap that grows positive while real returns do not is the policy exploiting the model.
- ``diag_saturated``: continuous actions, the share of sampled action components the box clips
  (``diag_mean_saturated``: of means within 1% of a bound); discrete, the share of near-greedy
  states (top probability above 0.99). ``diag_std`` (continuous) or ``diag_entropy`` (discrete):
  the policy's spread on those real observations.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch

from rmio.envs.trajectory import TrajectoryBuffer
from rmio.train.imagination import imagine, start_batch
from rmio.train.ppo import PPO
from rmio.train.wm_data import Batch, SequenceSampler
from rmio.train.world_model import RMIOWorldModel

DIAG_STEPS = (1, 5, 15)


def slice_batch(batch: Batch, start: int, stop: int) -> Batch:
    """Rows [start, stop) of every window."""
    return dataclasses.replace(
        batch,
        **{
            f.name: getattr(batch, f.name)[:, start:stop]
            for f in dataclasses.fields(batch)
            if getattr(batch, f.name) is not None
        },
    )


@torch.no_grad()
def prior_rollout(
    model: RMIOWorldModel, batch: Batch, context: int, horizon: int
) -> Iterator[tuple[int, dict[str, torch.Tensor]]]:
    """The posterior filters rows [0, context), then the prior's mode rolls forward under the real
    actions: yields (k, the heads at row context - 1 + k) for k = 1..horizon while rows remain
    (also `rmio eval open-loop`'s RMIOv2 side, rmio.train.open_loop)."""
    h, z, _ = start_batch(model, slice_batch(batch, 0, context))
    for k in range(1, horizon + 1):
        t = context - 1 + k
        if t >= batch.obs.shape[1]:
            return
        h = model.transition(h, z, batch.prev_action[:, t])
        z = model.prior(h).mode()
        yield k, model.heads(h, z)


@torch.no_grad()
def open_loop_errors(
    model: RMIOWorldModel, batch: Batch, context: int, steps: tuple[int, ...] = DIAG_STEPS
) -> dict[str, float]:
    """Open-loop observation and reward error ``steps`` ahead of the last context row (see the
    module docstring); a step no window reaches is left out."""
    obs_n = model.normalize_obs(batch.obs)
    fm = model.feature_mask
    alive = torch.ones(batch.obs.shape[0], device=batch.obs.device)
    out: dict[str, float] = {}
    for k, heads in prior_rollout(model, batch, context, max(steps)):
        t = context - 1 + k
        alive = alive * (1.0 - batch.is_first[:, t])  # the real episode ended before row t
        if k not in steps or alive.sum() == 0:
            continue
        err = (((heads["obs"] - obs_n[:, t]) ** 2 * fm).sum(-1) / fm.sum(-1)).mean(-1)
        reward_err = (heads["reward"] - batch.reward[:, t]).abs()
        out[f"diag_obs_err_{k}"] = float((err * alive).sum() / alive.sum())
        out[f"diag_reward_err_{k}"] = float((reward_err * alive).sum() / alive.sum())
    return out


@torch.no_grad()
def return_gap(
    model: RMIOWorldModel,
    ppo: PPO,
    batch: Batch,
    context: int,
    horizon: int,
    gamma: float,
    real_start_obs: bool = False,
    latent_critic: bool = False,
) -> dict[str, float]:
    """Imagined against real discounted return over ``horizon`` steps from the last context row of
    each window (the windows must hold ``context + horizon`` rows)."""
    h, z, ctx = start_batch(model, slice_batch(batch, 0, context))
    first = ctx.obs[:, -1] if real_start_obs else None
    first_avail = ctx.avail[:, -1] if real_start_obs and ctx.avail is not None else None
    roll = imagine(model, ppo, h, z, horizon, first, latent_critic, first_avail)
    disc = gamma ** torch.arange(horizon, device=h.device, dtype=torch.float32)
    weights = roll.weights if roll.weights is not None else torch.ones_like(roll.rewards)
    imagined = (disc[:, None] * weights * roll.rewards).sum(0)
    rows = slice(context, context + horizon)
    real_alive = torch.cumprod(1.0 - batch.is_first[:, rows], 1)
    raw = batch.raw_reward if batch.raw_reward is not None else batch.reward
    real = (disc[None] * real_alive * raw[:, rows]).sum(1)
    return {
        "diag_imagined_return": float(imagined.mean()),
        "diag_real_return": float(real.mean()),
        "diag_return_gap": float((imagined - real).mean()),
    }


@torch.no_grad()
def policy_spread(
    actor: Any, obs: torch.Tensor, avail: torch.Tensor | None = None
) -> dict[str, float]:
    """Saturation and spread of the policy on real joint observations (..., n, D)."""
    n = obs.shape[-2]
    ids = torch.arange(n, device=obs.device).expand(obs.shape[:-1])
    dist = actor.dist(obs, ids, avail)
    if actor.spec.discrete:
        return {
            "diag_entropy": float(dist.entropy().mean()),
            "diag_saturated": float((dist.probs.max(-1).values > 0.99).float().mean()),
        }
    m = actor.action_mask[ids]
    low, high = actor.low, actor.high
    sample = dist.sample()
    clipped = ((sample < low) | (sample > high)).float()
    edge = 0.01 * (high - low)
    at_bound = ((dist.mean <= low + edge) | (dist.mean >= high - edge)).float()
    return {
        "diag_saturated": float((clipped * m).sum() / m.sum()),
        "diag_mean_saturated": float((at_bound * m).sum() / m.sum()),
        "diag_std": float((dist.stddev * m).sum() / m.sum()),
    }


def joint_diagnostics(
    model: RMIOWorldModel, ppo: PPO, newest: TrajectoryBuffer, cfg: Any, seed: int
) -> dict[str, float]:
    """Every diagnostic on ``newest`` (the latest real episodes, collected by ``ppo.actor``); the
    caller's random streams are left untouched."""
    im = cfg.policy.imagination
    dev = model.obs_mean.device
    if len(newest) < im.context + 1:
        return {}
    sampler = SequenceSampler(newest, cfg.world_model.smoothing, dev)
    rng = np.random.default_rng(seed)
    length = im.context + max(max(DIAG_STEPS), im.horizon)
    devices = [dev] if dev.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        batch = sampler.sample(rng, im.diag_windows, length)
        out = open_loop_errors(model, batch, im.context)
        if batch.obs.shape[1] >= im.context + im.horizon:
            out.update(
                return_gap(
                    model,
                    ppo,
                    batch,
                    im.context,
                    im.horizon,
                    cfg.policy.ppo.gamma,
                    im.real_start_obs,
                    im.critic == "latent",
                )
            )
        tensors = sampler.tensors
        out.update(policy_spread(ppo.actor, tensors["obs"], tensors.get("avail")))
    return out
