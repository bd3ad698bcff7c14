"""MMSA's learner: QMIX's TD update with the roll-out state in the mixer, plus the world model's
and the SALE encoders' own losses (paper Sec. 4.4: L_total = L_KL + L_REC + L_TD + L(f, g)).

Parameter sets are disjoint, as the paper's notation has them: psi (agents and mixer) is trained
by L_TD only; the world model (theta) by L_KL and L_REC (and its latent policy by imitation);
each SALE pair by its own loss. So the sum is one backward pass and one optimiser step (RMSProp,
mmsa.lr), with the gradient of psi and of the rest clipped to qmix.grad_clip each. The roll-out
state enters the mixers without gradient. Target networks: the agents, the mixer and the world
model are hard-copied together every qmix.target_update_episodes, so the target mixer's roll-out
comes from the world model trained on the target agents' recurrent states; at the same moment
the agents' fixed SALE encoders move to the online ones (TD7's fixed and target encoders).
"""

from __future__ import annotations

import copy
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from rmio.envs.base import EnvSpec
from rmio.train.mmsa_config import MMSAConfig
from rmio.train.mmsa_nets import SALE, LatentWorldModel, MMSAAgent, MMSAMixer, rollout_dim
from rmio.train.qmix_config import QMIXConfig
from rmio.train.qmix_learner import QLearner
from rmio.train.qmix_nets import masked_argmax


class MMSALearner(QLearner):
    """QMIX's learner with MMSA's agent, mixer, world model and SALE encoders."""

    def __init__(self, spec: EnvSpec, q: QMIXConfig, m: MMSAConfig, device: torch.device) -> None:
        self.m = m
        super().__init__(spec, q, device, lr=m.lr)
        self.sale = SALE(spec.obs_dim, spec.action_dim, m).to(device)
        """The agents' online SALE encoders on observations (their fixed copy is agent.sale)."""
        self.agent.sale.load_state_dict(self.sale.state_dict())
        self.target_agent.sale.load_state_dict(self.sale.state_dict())
        self.wm = LatentWorldModel(spec, q, m).to(device)
        self.target_wm = copy.deepcopy(self.wm).requires_grad_(False)
        self.model_params = [*self.sale.parameters(), *self.wm.parameters()]
        self.opt.add_param_group({"params": self.model_params})

    def build_agent(self, spec: EnvSpec, q: QMIXConfig) -> MMSAAgent:
        return MMSAAgent(spec, q, self.m)

    def build_mixer(self, spec: EnvSpec, q: QMIXConfig) -> nn.Module:
        m = self.m
        state = spec.state_dim if m.mixer_state else 0
        return MMSAMixer(spec.n_agents, state, rollout_dim(spec, m) if m.mixer_rollout else 0, q)

    def rollout_state(self, wm: LatentWorldModel, h: torch.Tensor) -> torch.Tensor:
        """s^Rollout for every step: (B, T+1, n, hidden) recurrent states -> (B, T+1, R)."""
        with torch.no_grad():
            states, _ = wm.rollout(h.detach(), self.m.horizon, decode=False)
        return states.flatten(2)

    def mixer_input(
        self, state: torch.Tensor, wm: LatentWorldModel, h: torch.Tensor
    ) -> torch.Tensor:
        """What a mixer sees at every step: [s_t, s^Rollout_t], less the parts the No-GS and
        No-WM switches (mmsa.mixer_state, mmsa.mixer_rollout) leave out."""
        parts = [state] if self.m.mixer_state else []
        if self.m.mixer_rollout:
            parts.append(self.rollout_state(wm, h))
        return torch.cat(parts, -1)

    def update(self, batch: dict[str, torch.Tensor], episodes: int) -> dict[str, float]:
        """One step on L_total, then the hard target update when it is due."""
        obs, actions, state = batch["obs"], batch["actions"], batch["state"]
        qvals, hs = self.agent.unroll_hidden(obs, actions)
        with torch.no_grad():
            target_q, target_hs = self.target_agent.unroll_hidden(obs, actions)
        mix = self.mixer_input(state, self.wm, hs)
        next_mix = self.mixer_input(state, self.target_wm, target_hs)
        td, stats = self.td_loss(batch, qvals, target_q[:, 1:], mix[:, :-1], next_mix[:, 1:])
        terms = self.wm.losses(
            hs,
            actions,
            batch["filled"],
            masked_argmax(qvals.detach(), batch["avail"]),
            self.m.kl_alpha,
            self.m.kl_balance,
        )
        if self.m.sale:  # not in the No-SALE ablation, whose agents read no z^o
            terms["sale_obs"] = self.sale_loss(obs, actions, batch["filled"])
        model = sum(terms.values(), torch.zeros((), device=td.device))
        grad_norm, model_norm = self.optimise(td + model, self.params, self.model_params)
        updated = self.maybe_update_targets(episodes)
        return {
            "loss": stats.pop("loss"),
            "grad_norm": grad_norm,
            **stats,
            "model_loss": float(model.item()),
            **{k: float(v.item()) for k, v in terms.items()},
            "model_grad_norm": model_norm,
            "target_updated": float(updated),
        }

    def sale_loss(
        self, obs: torch.Tensor, actions: torch.Tensor, filled: torch.Tensor
    ) -> torch.Tensor:
        """TD7's SALE loss on every agent's own transition (o_t, a_t) -> o_{t+1}, in the
        normalised units the agents see."""
        b, t1, n, _ = obs.shape
        ids = torch.arange(n, device=obs.device).expand(b, t1, n)
        o = self.agent.normalise_obs(obs, ids)
        a = F.one_hot(actions, self.agent.n_actions).float()
        per = self.sale.loss(o[:, :-1], a, o[:, 1:])  # (B, T, n)
        mask = filled.float()
        return (per.mean(-1) * mask).sum() / mask.sum().clamp(min=1.0)

    def update_targets(self) -> None:
        """Targets <- online (the target agents' fixed encoders <- the agents' fixed ones), then
        the agents' fixed encoders <- the online SALE encoders."""
        super().update_targets()
        self.target_wm.load_state_dict(self.wm.state_dict())
        self.agent.sale.load_state_dict(self.sale.state_dict())

    def state_dict(self) -> dict[str, Any]:
        return {
            **super().state_dict(),
            "sale": self.sale.state_dict(),
            "wm": self.wm.state_dict(),
            "target_wm": self.target_wm.state_dict(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.sale.load_state_dict(state["sale"])
        self.wm.load_state_dict(state["wm"])
        self.target_wm.load_state_dict(state["target_wm"])
