"""From a real-trajectory buffer to training batches, and the world-model loss (Eq. 8-9)."""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from rmio.config import Config
from rmio.envs.collect import collect
from rmio.envs.loss import LossConfig
from rmio.envs.trajectory import TrajectoryBuffer
from rmio.errors import RmioError
from rmio.train.smoothing import SmoothingConfig, smooth_buffer_rewards
from rmio.train.world_model import RMIOWorldModel


def observation_stats(
    buf: TrajectoryBuffer,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per agent and feature mean/std of observations (padding: 0/1), and of the global state."""
    obs = buf.data["obs"].astype(np.float64)
    mean = obs.mean(axis=0)
    std = np.maximum(obs.std(axis=0), 1e-2)
    pad = ~buf.spec.obs_feature_mask
    mean[pad], std[pad] = 0.0, 1.0
    state = buf.data["state"].astype(np.float64)
    s_mean = state.mean(axis=0) if len(state) else np.zeros(buf.spec.state_dim)
    s_std = np.maximum(state.std(axis=0), 1e-2) if len(state) else np.ones(buf.spec.state_dim)
    return (
        mean.astype(np.float32),
        std.astype(np.float32),
        s_mean.astype(np.float32),
        s_std.astype(np.float32),
    )


def random_policy_stats(
    cfg: Config,
) -> tuple[TrajectoryBuffer, tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]]:
    """The input statistics of model-free learners (MAPPO, QMIX) before any policy exists:
    ``policy.stats_steps`` random-policy steps in one env seeded apart from training."""
    warm, _ = collect(
        cfg.env,
        LossConfig("none"),
        steps=cfg.policy.stats_steps,
        num_envs=1,
        seed=cfg.run.seed + 50_000,
    )
    return warm, observation_stats(warm)


@dataclass
class Batch:
    obs: torch.Tensor  # (B, T, n, D) raw
    prev_action: torch.Tensor  # (B, T, n, A) encoded
    state: torch.Tensor  # (B, T, S) raw
    reward: torch.Tensor  # (B, T) smoothed
    is_first: torch.Tensor  # (B, T)
    is_terminal: torch.Tensor  # (B, T)
    avail: torch.Tensor | None  # (B, T, n, A)
    raw_reward: torch.Tensor | None = (
        None  # (B, T) the true reward (smoothing is a training target only)
    )
    is_last: torch.Tensor | None = None  # (B, T) last row of an episode


class SequenceSampler:
    """Uniformly sampled windows of L consecutive rows; windows may straddle episodes, and the model
    restarts its state at every ``is_first`` inside a window, so nothing leaks across episodes."""

    def __init__(
        self, buf: TrajectoryBuffer, smoothing: SmoothingConfig, device: str | torch.device = "cpu"
    ) -> None:
        data = buf.data
        if len(buf) < 2:
            raise RmioError("the trajectory buffer holds fewer than 2 rows; collect more data")
        self.spec = buf.spec
        self.device = torch.device(device)
        is_first = data["is_first"]
        actions = data["action"]
        prev = np.zeros_like(actions)
        prev[1:] = actions[:-1]
        prev[is_first] = 0  # no action led to an episode's first observation
        if self.spec.discrete:
            prev = np.eye(self.spec.action_dim, dtype=np.float32)[prev.astype(np.int64)]
            prev[is_first] = 0.0
        self.arrays = {
            "obs": data["obs"].astype(np.float32),
            "prev_action": prev.astype(np.float32),
            "state": data["state"].astype(np.float32),
            "reward": smooth_buffer_rewards(data["reward"], is_first, smoothing),
            "is_first": is_first.astype(np.float32),
            "is_terminal": data["is_terminal"].astype(np.float32),
            "raw_reward": data["reward"].astype(np.float32),
            "is_last": data["is_last"].astype(np.float32),
        }
        if self.spec.discrete:
            self.arrays["avail"] = data["avail_actions"].astype(np.float32)
        self.tensors = {k: torch.as_tensor(v, device=self.device) for k, v in self.arrays.items()}
        self.rows = len(buf)

    def sample(
        self, rng: np.random.Generator, batch: int, length: int, end_mid_episode: bool = False
    ) -> Batch:
        """``end_mid_episode``: resample windows whose last row ends an episode (imagination starts
        from there, and nothing was ever learned about what follows an episode's last row)."""
        length = min(length, self.rows)
        starts = rng.integers(0, self.rows - length + 1, size=batch)
        if end_mid_episode:
            last = self.arrays["is_last"]
            for _ in range(100):
                bad = last[starts + length - 1] > 0
                if not bad.any():
                    break
                starts[bad] = rng.integers(0, self.rows - length + 1, size=int(bad.sum()))
        idx = torch.as_tensor(starts[:, None] + np.arange(length)[None, :], device=self.device)
        return self._gather(idx, first_is_start=True)

    def episodes(self) -> list[Batch]:
        """Every whole episode as a batch of one (for evaluation)."""
        firsts = [*np.flatnonzero(self.arrays["is_first"]).tolist(), self.rows]
        return [
            self._gather(torch.arange(a, b, device=self.device)[None], first_is_start=True)
            for a, b in itertools.pairwise(firsts)
        ]

    def _gather(self, idx: torch.Tensor, first_is_start: bool) -> Batch:
        t = {k: v[idx] for k, v in self.tensors.items()}
        if first_is_start:  # the first row of a window starts from the zero state
            t["is_first"] = t["is_first"].clone()
            t["is_first"][:, 0] = 1.0
        return Batch(
            t["obs"],
            t["prev_action"],
            t["state"],
            t["reward"],
            t["is_first"],
            t["is_terminal"],
            t.get("avail"),
            t["raw_reward"],
            t["is_last"],
        )


def sample_masks(
    rng: torch.Generator, shape: tuple[int, ...], p_mask: float, device: torch.device
) -> torch.Tensor:
    """m_t ~ Bernoulli(1 - p_mask)^n for every step (Algorithm 2, line 22): 1 = observed."""
    if p_mask <= 0:
        return torch.ones(shape, device=device)
    return (torch.rand(shape, generator=rng, device=device) >= p_mask).float()


def world_model_loss(
    model: RMIOWorldModel, batch: Batch, mask: torch.Tensor, policy_term: Any = None
) -> tuple[torch.Tensor, dict[str, float]]:
    """L_M = L_rec + beta * L_KL (Eq. 8-9), with KL balancing and free nats.

    The observation target is always the true observation, also for agents whose input was masked:
    that is what teaches the model to reconstruct them (Algorithm 2, line 24).
    """
    cfg = model.cfg
    obs_n = model.normalize_obs(batch.obs)
    post = model.observe(obs_n, batch.prev_action, mask, batch.is_first, sample=True)
    out = model.heads(post.h, post.z)
    fm = model.feature_mask
    per_feature = F.smooth_l1_loss(out["obs"], obs_n, reduction="none") * fm
    per_agent = per_feature.sum(-1) / fm.sum(-1)  # (B, T, n)
    obs_loss = per_agent.mean()
    lost = 1.0 - mask
    reward_loss = F.smooth_l1_loss(out["reward"], batch.reward)
    term_loss = F.binary_cross_entropy_with_logits(out["term_logit"], batch.is_terminal)
    rec = obs_loss + reward_loss + term_loss
    metrics = {"obs": obs_loss.item(), "reward": reward_loss.item(), "term": term_loss.item()}
    if lost.sum() > 0:
        metrics["obs_masked"] = ((per_agent * lost).sum() / lost.sum()).item()
    if batch.avail is not None and "avail_logit" in out:
        per = F.binary_cross_entropy_with_logits(
            out["avail_logit"], batch.avail, reduction="none"
        ).mean(-1)
        keep = (
            1.0 - batch.is_last.unsqueeze(-1) if batch.is_last is not None else torch.ones_like(per)
        )
        avail_loss = (per * keep).sum() / (keep.expand_as(per).sum()).clamp(min=1.0)
        rec = rec + avail_loss
        metrics["avail"] = avail_loss.item()
    if "state" in out:
        state_n = (batch.state - model.state_mean) / model.state_std
        state_loss = F.smooth_l1_loss(out["state"], state_n.unsqueeze(-2).expand_as(out["state"]))
        rec = rec + cfg.state_loss_weight * state_loss
        metrics["state"] = state_loss.item()
    dyn = post.post.detach().kl(post.prior).mean()  # trains the prior towards the posterior
    rep = post.post.kl(
        post.prior.detach()
    ).mean()  # keeps the posterior close to what is predictable
    # Free nats on the batch mean (DreamerV2). Clamping every step instead (DreamerV3) was tried: in
    # fine-tuning it pulled the KL from ~1 to ~0.5 nats and made reconstructions of lost agents
    # worse.
    kl = cfg.kl_balance * dyn.clamp(min=cfg.free_nats) + (1 - cfg.kl_balance) * rep.clamp(
        min=cfg.free_nats
    )
    total = rec + cfg.kl_beta * kl
    if policy_term is not None:  # rmio's policy-aware fine-tuning (train/policy_aware.py)
        extra, policy_metrics = policy_term(model, out["obs"], batch.obs, lost, batch.avail)
        total = total + extra
        metrics.update(policy_metrics)
    metrics.update({"kl": dyn.item(), "rec": rec.item(), "loss": total.item()})
    return total, metrics
