"""QMIX's learner: TD targets from target networks, double Q, hard target updates (pymarl's
``QLearner``, with pymarl2's TD(lambda) as an option).

The loss is the masked mean squared TD error of Q_tot over every real step of a batch of whole
episodes; agents and mixer are optimised together. Target networks are copies refreshed every
``target_update_episodes`` finished episodes.
"""

from __future__ import annotations

import copy
from typing import Any

import numpy as np
import torch
from torch import nn

from rmio.envs.base import EnvSpec
from rmio.train.qmix_config import QMIXConfig
from rmio.train.qmix_nets import QMixer, RNNAgent, build_mixer, masked_argmax


def lambda_returns(
    reward: torch.Tensor,
    terminated: torch.Tensor,
    filled: torch.Tensor,
    next_value: torch.Tensor,
    gamma: float,
    lam: float,
) -> torch.Tensor:
    """TD(lambda) targets (B, T); lam = 0 gives 1-step targets.

    ``next_value[:, t]`` is the target network's Q_tot at step t + 1. G_t = r_t + gamma (1 - d_t)
    ((1 - lam) V_{t+1} + lam G_{t+1}), where an episode's last real step bootstraps on V alone, so
    padding after a truncated episode never leaks into its targets.
    """
    b, t_len = reward.shape
    term = terminated.float()
    out = torch.zeros_like(reward)
    nxt = torch.zeros(b, device=reward.device)
    for t in reversed(range(t_len)):
        last = filled[:, t] & ~filled[:, t + 1] if t + 1 < t_len else filled[:, t]
        boot = torch.where(last, next_value[:, t], (1 - lam) * next_value[:, t] + lam * nxt)
        out[:, t] = reward[:, t] + gamma * (1 - term[:, t]) * boot
        nxt = out[:, t]
    return out * filled.float()


def make_optimizer(params: list[nn.Parameter], q: QMIXConfig, lr: float) -> torch.optim.Optimizer:
    """pymarl's RMSProp or pymarl2's Adam (``qmix.optimizer``) at ``lr``."""
    if q.optimizer == "adam":
        return torch.optim.Adam(params, lr=lr, eps=q.optim_eps)
    return torch.optim.RMSprop(params, lr=lr, alpha=q.optim_alpha, eps=q.optim_eps)


class QLearner:
    """Online and target agents and mixers, the optimiser, and the update rule.

    Subclasses (MMSA's learner) swap the networks through :meth:`build_agent` and
    :meth:`build_mixer`, add their own losses to :meth:`td_loss`'s and train more parameters
    through :meth:`optimise`."""

    def __init__(
        self, spec: EnvSpec, q: QMIXConfig, device: torch.device, lr: float | None = None
    ) -> None:
        self.q, self.device = q, device
        self.agent = self.build_agent(spec, q).to(device)
        self.mixer = self.build_mixer(spec, q).to(device)
        self.target_agent = copy.deepcopy(self.agent)
        self.target_mixer = copy.deepcopy(self.mixer)
        for p in (*self.target_agent.parameters(), *self.target_mixer.parameters()):
            p.requires_grad_(False)
        self.params = [
            p for p in (*self.agent.parameters(), *self.mixer.parameters()) if p.requires_grad
        ]
        self.opt = make_optimizer(self.params, q, q.lr if lr is None else lr)
        self.last_target_update = 0
        """Finished-episode count at the last hard target update."""

    def build_agent(self, spec: EnvSpec, q: QMIXConfig) -> RNNAgent:
        return RNNAgent(spec, q)

    def build_mixer(self, spec: EnvSpec, q: QMIXConfig) -> nn.Module:
        return build_mixer(spec, q)

    def set_stats(
        self, mean: np.ndarray, std: np.ndarray, s_mean: np.ndarray, s_std: np.ndarray
    ) -> None:
        """Fixed input statistics: observations (agents) and global state (QMIX's mixer)."""
        for net in (self.agent, self.target_agent):
            net.set_stats(mean, std)
        for mixer in (self.mixer, self.target_mixer):
            if isinstance(mixer, QMixer):
                mixer.set_stats(s_mean, s_std)

    def update(self, batch: dict[str, torch.Tensor], episodes: int) -> dict[str, float]:
        """One gradient step on a sampled batch, then a hard target update if ``episodes``
        (finished so far) is ``target_update_episodes`` past the last one."""
        qvals = self.agent.unroll(batch["obs"], batch["actions"])  # (B, T+1, n, A)
        with torch.no_grad():
            target_q = self.target_agent.unroll(batch["obs"], batch["actions"])[:, 1:]
        state = batch["state"]
        loss, stats = self.td_loss(batch, qvals, target_q, state[:, :-1], state[:, 1:])
        (grad_norm,) = self.optimise(loss, self.params)
        updated = self.maybe_update_targets(episodes)
        return {
            "loss": stats.pop("loss"),
            "grad_norm": grad_norm,
            **stats,
            "target_updated": float(updated),
        }

    def td_loss(
        self,
        batch: dict[str, torch.Tensor],
        qvals: torch.Tensor,
        target_q: torch.Tensor,
        mix_state: torch.Tensor,
        next_mix_state: torch.Tensor,
    ) -> tuple[torch.Tensor, dict[str, float]]:
        """The masked mean squared TD error of Q_tot and its statistics. ``qvals`` (B, T+1, n, A)
        online, ``target_q`` (B, T, n, A) the target agents' at steps 1..T; ``mix_state`` and
        ``next_mix_state`` (B, T, ...) what the online and target mixers see at t and t + 1."""
        q = self.q
        actions, avail, filled = batch["actions"], batch["avail"], batch["filled"]
        chosen = qvals[:, :-1].gather(-1, actions.unsqueeze(-1)).squeeze(-1)  # (B, T, n)
        with torch.no_grad():
            next_avail = avail[:, 1:]
            if q.double_q:
                best = masked_argmax(qvals[:, 1:].detach(), next_avail)
            else:
                best = masked_argmax(target_q, next_avail)
            target_max = target_q.gather(-1, best.unsqueeze(-1)).squeeze(-1)
            target_max = target_max * next_avail.any(-1).float()  # padding: no action, value 0
            next_value = self.target_mixer(target_max, next_mix_state)
            targets = lambda_returns(
                batch["reward"], batch["terminated"], filled, next_value, q.gamma, q.td_lambda
            )
        q_tot = self.mixer(chosen, mix_state)
        mask = filled.float()
        td = (q_tot - targets) * mask
        loss = td.pow(2).sum() / mask.sum()
        n_real = mask.sum().item()
        return loss, {
            "loss": float(loss.item()),
            "td_error_abs": float(td.abs().sum().item() / n_real),
            "q_taken_mean": float((q_tot * mask).sum().item() / n_real),
            "target_mean": float((targets * mask).sum().item() / n_real),
        }

    def optimise(self, loss: torch.Tensor, *groups: list[nn.Parameter]) -> list[float]:
        """One optimiser step on ``loss``; each group's gradient is clipped to ``grad_clip`` on
        its own (their norms before clipping)."""
        self.opt.zero_grad()
        loss.backward()
        norms = [float(nn.utils.clip_grad_norm_(g, self.q.grad_clip)) for g in groups]
        self.opt.step()
        return norms

    def maybe_update_targets(self, episodes: int) -> bool:
        if episodes - self.last_target_update < self.q.target_update_episodes:
            return False
        self.update_targets()
        self.last_target_update = episodes
        return True

    def update_targets(self) -> None:
        """Hard copy of the online networks into the targets."""
        self.target_agent.load_state_dict(self.agent.state_dict())
        self.target_mixer.load_state_dict(self.mixer.state_dict())

    def state_dict(self) -> dict[str, Any]:
        return {
            "agent": self.agent.state_dict(),
            "mixer": self.mixer.state_dict(),
            "target_agent": self.target_agent.state_dict(),
            "target_mixer": self.target_mixer.state_dict(),
            "opt": self.opt.state_dict(),
            "last_target_update": self.last_target_update,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.agent.load_state_dict(state["agent"])
        self.mixer.load_state_dict(state["mixer"])
        self.target_agent.load_state_dict(state["target_agent"])
        self.target_mixer.load_state_dict(state["target_mixer"])
        self.opt.load_state_dict(state["opt"])
        self.last_target_update = int(state["last_target_update"])
