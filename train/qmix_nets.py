"""QMIX's networks: a recurrent Q-agent shared by all agents and the monotonic mixer.

The agent (pymarl's ``RNNAgent``) sees only its own observation, its previous action and its id,
so execution stays decentralised. The mixer (pymarl's ``QMixer``) combines the chosen agents'
Q-values into Q_tot with weights generated from the global state and made non-negative by an
absolute value, so dQ_tot/dQ_a >= 0 everywhere: the argmax of Q_tot is every agent's own argmax.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from rmio.envs.base import EnvSpec
from rmio.train.qmix_config import QMIXConfig

NEG_INF = -1e9
"""The Q-value given to unavailable actions before an argmax."""


class RNNAgent(nn.Module):
    """Linear + ReLU, a GRU cell, then one Q-value per action."""

    def __init__(self, spec: EnvSpec, q: QMIXConfig) -> None:
        super().__init__()
        self.n_agents, self.n_actions, self.obs_dim = spec.n_agents, spec.action_dim, spec.obs_dim
        self.last_action, self.agent_id = q.obs_last_action, q.obs_agent_id
        width = self.obs_dim
        width += self.n_actions if self.last_action else 0
        width += self.n_agents if self.agent_id else 0
        self.input_dim, self.hidden = width, q.rnn_hidden
        self.fc1 = nn.Linear(width, q.rnn_hidden)
        self.rnn = nn.GRUCell(q.rnn_hidden, q.rnn_hidden)
        self.fc2 = nn.Linear(q.rnn_hidden, self.n_actions)
        self.normalise = q.normalise_inputs
        self.register_buffer("obs_mean", torch.zeros(self.n_agents, self.obs_dim))
        self.register_buffer("obs_std", torch.ones(self.n_agents, self.obs_dim))
        self.register_buffer(
            "feature_mask", torch.as_tensor(spec.obs_feature_mask, dtype=torch.float32)
        )

    def set_stats(self, mean: np.ndarray, std: np.ndarray) -> None:
        """Per agent and feature statistics the observations are normalised with."""
        self.obs_mean.copy_(torch.as_tensor(mean, dtype=torch.float32))
        self.obs_std.copy_(torch.as_tensor(std, dtype=torch.float32))

    def normalise_obs(self, obs: torch.Tensor, agent_id: torch.Tensor) -> torch.Tensor:
        """``obs`` (..., obs_dim) in the units the network sees (unchanged without
        ``normalise_inputs``); the first ``obs_dim`` features of :meth:`inputs`."""
        if not self.normalise:
            return obs
        obs = (obs - self.obs_mean[agent_id]) / self.obs_std[agent_id]
        return obs.clamp(-10.0, 10.0) * self.feature_mask[agent_id]

    def inputs(
        self, obs: torch.Tensor, last_action: torch.Tensor, agent_id: torch.Tensor
    ) -> torch.Tensor:
        """[obs, one-hot previous action, one-hot id]: ``obs`` (..., obs_dim), ``last_action``
        (...) int64 with -1 for none (an episode's first step), ``agent_id`` (...) int64."""
        parts = [self.normalise_obs(obs, agent_id)]
        if self.last_action:
            prev = F.one_hot(last_action.clamp(min=0), self.n_actions).float()
            parts.append(prev * (last_action >= 0).unsqueeze(-1).float())
        if self.agent_id:
            parts.append(F.one_hot(agent_id, self.n_agents).float())
        return torch.cat(parts, -1)

    def forward(self, x: torch.Tensor, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(Q (..., n_actions), h_next (..., hidden)) from inputs ``x`` and hidden state ``h``."""
        h_next = self.recur(x, h)
        return self.qvalues(x, h_next), h_next

    def recur(self, x: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        """The GRU's next state (..., hidden) from inputs ``x`` and state ``h``."""
        lead = x.shape[:-1]
        y = F.relu(self.fc1(x.reshape(-1, self.input_dim)))
        return self.rnn(y, h.reshape(-1, self.hidden)).reshape(*lead, self.hidden)

    def qvalues(self, x: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        """Q (..., n_actions) from the step's inputs ``x`` and the GRU's new state ``h`` (QMIX
        reads only ``h``; any leading axes, so a whole unroll is one call)."""
        return self.fc2(h)

    def init_hidden(self, *lead: int, device: torch.device | None = None) -> torch.Tensor:
        return torch.zeros(*lead, self.hidden, device=device)

    def unroll(self, obs: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        """Q-values along whole episodes: ``obs`` (B, T+1, n, obs_dim), ``actions`` (B, T, n)
        int64 taken; returns (B, T+1, n, n_actions) from a zero hidden state."""
        return self.unroll_hidden(obs, actions)[0]

    def unroll_hidden(
        self, obs: torch.Tensor, actions: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """:meth:`unroll`'s Q-values and the hidden state after each step, (B, T+1, n, hidden):
        h_t summarises o_0..o_t and a_0..a_{t-1} (MMSA's world model starts from it)."""
        b, t1, n, _ = obs.shape
        prev = torch.cat([torch.full_like(actions[:, :1], -1), actions], 1)  # (B, T+1, n)
        ids = torch.arange(n, device=obs.device).expand(b, n)
        h = self.init_hidden(b, n, device=obs.device)
        xs, hs = [], []
        for t in range(t1):  # only the recurrence is sequential
            xs.append(self.inputs(obs[:, t], prev[:, t], ids))
            h = self.recur(xs[-1], h)
            hs.append(h)
        h_all = torch.stack(hs, 1)
        return self.qvalues(torch.stack(xs, 1), h_all), h_all


def masked_argmax(q: torch.Tensor, avail: torch.Tensor | None) -> torch.Tensor:
    """Greedy actions among the available ones (``avail`` bool, same shape as ``q``)."""
    if avail is not None:
        q = q.masked_fill(~avail, NEG_INF)
    return q.argmax(-1)


def _hyper(state_dim: int, out: int, q: QMIXConfig) -> nn.Module:
    if q.hypernet_layers == 1:
        return nn.Linear(state_dim, out)
    return nn.Sequential(
        nn.Linear(state_dim, q.hypernet_embed), nn.ReLU(), nn.Linear(q.hypernet_embed, out)
    )


class QMixer(nn.Module):
    """Q_tot = w2 . elu(W1 q + b1) + V(s), with W1, w2 = |hypernetworks(s)| (QMIX Eq. in Sec. 4)."""

    def __init__(self, n_agents: int, state_dim: int, q: QMIXConfig) -> None:
        super().__init__()
        self.n_agents, self.state_dim, self.embed = n_agents, state_dim, q.mixing_embed
        self.hyper_w1 = _hyper(state_dim, q.mixing_embed * n_agents, q)
        self.hyper_w2 = _hyper(state_dim, q.mixing_embed, q)
        self.hyper_b1 = nn.Linear(state_dim, q.mixing_embed)
        self.v = nn.Sequential(
            nn.Linear(state_dim, q.mixing_embed), nn.ReLU(), nn.Linear(q.mixing_embed, 1)
        )
        self.normalise = q.normalise_inputs
        self.register_buffer("state_mean", torch.zeros(state_dim))
        self.register_buffer("state_std", torch.ones(state_dim))

    def set_stats(self, mean: np.ndarray, std: np.ndarray) -> None:
        """Per feature statistics the global state is normalised with."""
        self.state_mean.copy_(torch.as_tensor(mean, dtype=torch.float32))
        self.state_std.copy_(torch.as_tensor(std, dtype=torch.float32))

    def forward(self, agent_qs: torch.Tensor, state: torch.Tensor) -> torch.Tensor:
        """``agent_qs`` (..., n), ``state`` (..., state_dim) -> Q_tot (...)."""
        lead = agent_qs.shape[:-1]
        qs = agent_qs.reshape(-1, 1, self.n_agents)
        s = state.reshape(-1, self.state_dim)
        if self.normalise:
            s = ((s - self.state_mean) / self.state_std).clamp(-10.0, 10.0)
        w1 = self.hyper_w1(s).abs().view(-1, self.n_agents, self.embed)
        b1 = self.hyper_b1(s).view(-1, 1, self.embed)
        hidden = F.elu(torch.bmm(qs, w1) + b1)
        w2 = self.hyper_w2(s).abs().view(-1, self.embed, 1)
        y = torch.bmm(hidden, w2) + self.v(s).view(-1, 1, 1)
        return y.reshape(lead)


class VDNMixer(nn.Module):
    """Q_tot = sum of the agents' Q-values (VDN)."""

    def forward(self, agent_qs: torch.Tensor, state: torch.Tensor) -> torch.Tensor:
        return agent_qs.sum(-1)


def build_mixer(spec: EnvSpec, q: QMIXConfig) -> nn.Module:
    return QMixer(spec.n_agents, spec.state_dim, q) if q.mixer == "qmix" else VDNMixer()
