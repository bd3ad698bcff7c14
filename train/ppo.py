"""The PPO update shared by model-free MAPPO and imagination training (RMIOv2 Eq. 13-14)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from rmio.train.policy import Actor, ValueNorm
from rmio.train.ppo_config import PPOConfig


@dataclass
class Rollout:
    """T steps of B parallel trajectories (real or imagined)."""

    obs: torch.Tensor  # (T, B, n, D) what each agent acted on (its own, or reconstructed)
    actions: torch.Tensor  # (T, B, n, A) or (T, B, n)
    logp: torch.Tensor  # (T, B, n) log-probabilities when acting
    values: torch.Tensor  # (T, B) critic's (denormalised) values of obs
    rewards: torch.Tensor  # (T, B)
    next_values: torch.Tensor  # (T, B) value of the next state; 0 where the episode truly ended
    dones: torch.Tensor  # (T, B) 1 where the episode ended (terminated or truncated) after step t
    avail: torch.Tensor | None = None  # (T, B, n, A)
    weights: torch.Tensor | None = (
        None  # (T, B) imagination: probability the trajectory is still alive
    )
    critic_in: torch.Tensor | None = None  # (T, B, ...) what the critic reads, if not ``obs``


def gae(r: Rollout, gamma: float, lam: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimates and lambda-returns; no bootstrapping across episode ends."""
    T = r.rewards.shape[0]
    adv = torch.zeros_like(r.rewards)
    running = torch.zeros_like(r.rewards[0])
    for t in reversed(range(T)):
        delta = r.rewards[t] + gamma * r.next_values[t] - r.values[t]
        running = delta + gamma * lam * (1.0 - r.dones[t]) * running
        adv[t] = running
    return adv, adv + r.values


class PPO:
    """Clipped-surrogate actor update and value regression for a shared actor and a central
    critic."""

    def __init__(
        self,
        actor: Actor,
        critic: nn.Module,
        cfg: PPOConfig,
        adv_scaling: Literal["batch", "percentile"] = "batch",
        percentile_decay: float = 0.99,
    ) -> None:
        """``adv_scaling``: per-batch standardisation of advantages (MAPPO), or division by
        max(1, S) with S an EMA of the 5th-95th percentile range of the returns (DreamerV3), which
        leaves small advantages small instead of scaling model noise up to unit size."""
        self.actor, self.critic, self.cfg = actor, critic, cfg
        self.adv_scaling, self.percentile_decay = adv_scaling, percentile_decay
        device = next(critic.parameters()).device
        self.value_norm = ValueNorm().to(device)
        self.return_range = torch.zeros((), device=device)  # EMA of P95 - P5 (0: none yet)
        self.actor_opt = torch.optim.Adam(actor.parameters(), lr=cfg.actor_lr, eps=1e-5)
        self.critic_opt = torch.optim.Adam(critic.parameters(), lr=cfg.critic_lr, eps=1e-5)

    def value(self, joint_obs: torch.Tensor) -> torch.Tensor:
        """Critic output in reward units."""
        v = self.critic(joint_obs)
        return self.value_norm.denormalize(v) if self.cfg.value_norm else v

    def update(self, r: Rollout, generator: torch.Generator | None = None) -> dict[str, float]:
        cfg = self.cfg
        adv, returns = gae(r, cfg.gamma, cfg.gae_lambda)
        T, B, n = r.logp.shape
        weights = r.weights if r.weights is not None else torch.ones_like(r.rewards)
        flat = lambda x: x.reshape(T * B, *x.shape[2:])  # noqa: E731 - (T, B, ...) -> (T*B, ...)
        obs, actions, logp_old, w = flat(r.obs), flat(r.actions), flat(r.logp), flat(weights)
        adv, returns = flat(adv), flat(returns)
        avail = flat(r.avail) if r.avail is not None else None
        crit_in = flat(r.critic_in) if r.critic_in is not None else obs
        adv = self._scale(adv, returns, w)
        if cfg.value_norm:
            self.value_norm.update(returns)
            targets = self.value_norm.normalize(returns)
        else:
            targets = returns
        ids = torch.arange(n, device=obs.device).expand(T * B, n)
        stats = {
            "policy_loss": 0.0,
            "value_loss": 0.0,
            "entropy": 0.0,
            "clip_frac": 0.0,
            "approx_kl": 0.0,
        }
        count = 0
        size = T * B
        mb = max(size // cfg.minibatches, 1)
        for _ in range(cfg.epochs):
            perm = torch.randperm(size, generator=generator, device=obs.device)
            for start in range(0, size, mb):
                i = perm[start : start + mb]
                dist = self.actor.dist(obs[i], ids[i], None if avail is None else avail[i])
                logp = self.actor.log_prob(dist, actions[i], ids[i])
                ratio = (logp - logp_old[i]).exp()
                a = adv[i].unsqueeze(-1)
                surrogate = torch.min(
                    ratio * a, ratio.clamp(1 - cfg.clip, 1 + cfg.clip) * a
                )  # Eq. 13
                wi = w[i].unsqueeze(-1)
                entropy = (self.actor.entropy(dist, ids[i]) * wi).sum() / (wi.sum() * n)
                policy_loss = -(surrogate * wi).sum() / (wi.sum() * n) - cfg.entropy_coef * entropy
                self.actor_opt.zero_grad(set_to_none=True)
                policy_loss.backward()
                nn.utils.clip_grad_norm_(self.actor.parameters(), cfg.grad_clip)
                self.actor_opt.step()
                value_loss = ((self.critic(crit_in[i]) - targets[i]) ** 2 * w[i]).sum() / w[
                    i
                ].sum()  # Eq. 14
                self.critic_opt.zero_grad(set_to_none=True)
                (cfg.value_coef * value_loss).backward()
                nn.utils.clip_grad_norm_(self.critic.parameters(), cfg.grad_clip)
                self.critic_opt.step()
                with torch.no_grad():
                    stats["policy_loss"] += policy_loss.item()
                    stats["value_loss"] += value_loss.item()
                    stats["entropy"] += entropy.item()
                    stats["clip_frac"] += ((ratio - 1).abs() > cfg.clip).float().mean().item()
                    stats["approx_kl"] += (logp_old[i] - logp).mean().item()
                count += 1
        out = {k: v / max(count, 1) for k, v in stats.items()}
        if self.adv_scaling == "percentile":
            out["return_range"] = float(self.return_range)
        return out

    @torch.no_grad()
    def _scale(self, adv: torch.Tensor, returns: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        """Advantages as the actor sees them (see ``adv_scaling``); weights ``w`` count imagined
        steps by their probability of still running."""
        if self.adv_scaling == "percentile":
            q = torch.quantile(returns.float(), torch.tensor([0.05, 0.95], device=returns.device))
            spread = q[1] - q[0]
            d = self.percentile_decay
            first = bool(self.return_range == 0)
            self.return_range = spread if first else d * self.return_range + (1 - d) * spread
            return adv / self.return_range.clamp(min=1.0)
        mean = (adv * w).sum() / w.sum()
        std = (((adv - mean) ** 2 * w).sum() / w.sum()).sqrt()
        return (adv - mean) / (std + 1e-8)

    def state_dict(self) -> dict:
        return {
            "actor": self.actor.state_dict(),
            "critic": self.critic.state_dict(),
            "value_norm": self.value_norm.state_dict(),
            "actor_opt": self.actor_opt.state_dict(),
            "critic_opt": self.critic_opt.state_dict(),
            "return_range": self.return_range,
        }

    def load_state_dict(self, state: dict) -> None:
        self.actor.load_state_dict(state["actor"])
        self.critic.load_state_dict(state["critic"])
        self.value_norm.load_state_dict(state["value_norm"])
        self.actor_opt.load_state_dict(state["actor_opt"])
        self.critic_opt.load_state_dict(state["critic_opt"])
        if "return_range" in state:  # absent from checkpoints before percentile scaling
            self.return_range = state["return_range"].to(self.return_range.device)
