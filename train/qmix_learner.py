"""QMIX's learner: TD targets from target networks, double Q, hard target updates (pymarl's
``QLearner``, with pymarl2's TD(lambda) as an option).

The loss is the masked mean squared TD error of Q_tot over every real step of a batch of whole
episodes; agents and mixer are optimised together. Target networks are copies refreshed every
``target_update_episodes`` finished episodes.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn

from rmio.envs.base import EnvSpec
from rmio.train.qmix_config import QMIXConfig
from rmio.train.qmix_nets import RNNAgent, build_mixer, masked_argmax


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


class QLearner:
    """Online and target agents and mixers, the optimiser, and the update rule."""

    def __init__(self, spec: EnvSpec, q: QMIXConfig, device: torch.device) -> None:
        self.q, self.device = q, device
        self.agent = RNNAgent(spec, q).to(device)
        self.mixer = build_mixer(spec, q).to(device)
        self.target_agent = copy.deepcopy(self.agent)
        self.target_mixer = copy.deepcopy(self.mixer)
        for p in (*self.target_agent.parameters(), *self.target_mixer.parameters()):
            p.requires_grad_(False)
        self.params = [*self.agent.parameters(), *self.mixer.parameters()]
        if q.optimizer == "adam":
            self.opt: torch.optim.Optimizer = torch.optim.Adam(
                self.params, lr=q.lr, eps=q.optim_eps
            )
        else:
            self.opt = torch.optim.RMSprop(
                self.params, lr=q.lr, alpha=q.optim_alpha, eps=q.optim_eps
            )
        self.last_target_update = 0
        """Finished-episode count at the last hard target update."""

    def update(self, batch: dict[str, torch.Tensor], episodes: int) -> dict[str, float]:
        """One gradient step on a sampled batch, then a hard target update if ``episodes``
        (finished so far) is ``target_update_episodes`` past the last one."""
        q = self.q
        obs, actions, avail = batch["obs"], batch["actions"], batch["avail"]
        filled = batch["filled"]
        qvals = self.agent.unroll(obs, actions)  # (B, T+1, n, A)
        chosen = qvals[:, :-1].gather(-1, actions.unsqueeze(-1)).squeeze(-1)  # (B, T, n)
        with torch.no_grad():
            target_q = self.target_agent.unroll(obs, actions)[:, 1:]
            next_avail = avail[:, 1:]
            if q.double_q:
                best = masked_argmax(qvals[:, 1:].detach(), next_avail)
            else:
                best = masked_argmax(target_q, next_avail)
            target_max = target_q.gather(-1, best.unsqueeze(-1)).squeeze(-1)
            target_max = target_max * next_avail.any(-1).float()  # padding: no action, value 0
            next_value = self.target_mixer(target_max, batch["state"][:, 1:])
            targets = lambda_returns(
                batch["reward"], batch["terminated"], filled, next_value, q.gamma, q.td_lambda
            )
        q_tot = self.mixer(chosen, batch["state"][:, :-1])
        mask = filled.float()
        td = (q_tot - targets) * mask
        loss = td.pow(2).sum() / mask.sum()
        self.opt.zero_grad()
        loss.backward()
        grad_norm = nn.utils.clip_grad_norm_(self.params, q.grad_clip)
        self.opt.step()
        updated = self.maybe_update_targets(episodes)
        n_real = mask.sum().item()
        return {
            "loss": float(loss.item()),
            "grad_norm": float(grad_norm),
            "td_error_abs": float(td.abs().sum().item() / n_real),
            "q_taken_mean": float((q_tot * mask).sum().item() / n_real),
            "target_mean": float((targets * mask).sum().item() / n_real),
            "target_updated": float(updated),
        }

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
