"""r-MAPPO networks: a parameter-shared actor on each agent's local observation, a centralised
critic.

The actor never sees another agent's observation: its input is one agent's observation (raw units,
normalised inside with that agent's statistics) and the agent's id. That is what makes execution
decentralised, and it is the graph exported as ``actor.onnx``.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import distributions as D
from torch import nn

from rmio.envs.base import EnvSpec
from rmio.train.networks import mlp


class Actor(nn.Module):
    def __init__(
        self,
        spec: EnvSpec,
        hidden: int,
        log_std_init: float,
        obs_mean: np.ndarray,
        obs_std: np.ndarray,
    ) -> None:
        super().__init__()
        self.spec = spec
        self.n_agents, self.obs_dim, self.act_dim = spec.n_agents, spec.obs_dim, spec.action_dim
        self.net = mlp(self.obs_dim + self.n_agents, hidden, self.act_dim, layers=2)
        self.register_buffer("obs_mean", torch.as_tensor(obs_mean, dtype=torch.float32))
        self.register_buffer("obs_std", torch.as_tensor(obs_std, dtype=torch.float32))
        self.register_buffer(
            "feature_mask", torch.as_tensor(spec.obs_feature_mask, dtype=torch.float32)
        )
        self.register_buffer(
            "action_mask", torch.as_tensor(spec.action_feature_mask, dtype=torch.float32)
        )
        if not spec.discrete:
            self.log_std = nn.Parameter(torch.full((self.act_dim,), float(log_std_init)))
            self.register_buffer("low", torch.as_tensor(spec.action_low, dtype=torch.float32))
            self.register_buffer("high", torch.as_tensor(spec.action_high, dtype=torch.float32))
        # [flag, std_min, std_max]: flag 1 squashes the mean into the box (tanh) and the std into
        # [std_min, std_max]; a buffer, so a loaded checkpoint brings its own (set_bounds)
        self.register_buffer("bounds", torch.zeros(3))
        self.bounded = False
        with torch.no_grad():  # small initial outputs: near-uniform / near-zero-mean policies
            self.net[-1].weight.mul_(0.01)
            self.net[-1].bias.zero_()

    def set_bounds(self, std_min: float, std_max: float) -> None:
        """Bounded actions: a tanh-squashed mean inside the action box and a std in [std_min,
        std_max] (sigmoid), so a saturated policy still gets gradient through imagination (an
        unbounded mean past the box is clipped at execution, which has none). The std keeps its
        current value where the range allows it."""
        if self.spec.discrete:
            return
        with torch.no_grad():
            std = self.log_std.exp().clamp(std_min + 1e-3, std_max - 1e-3)
            frac = (std - std_min) / (std_max - std_min)
            self.log_std.copy_(torch.log(frac) - torch.log1p(-frac))  # the sigmoid's inverse
            self.bounds.copy_(torch.tensor([1.0, std_min, std_max]))
        self.bounded = True

    def _load_from_state_dict(self, state_dict: dict, prefix: str, *args, **kwargs) -> None:
        key = prefix + "bounds"
        if key not in state_dict:  # checkpoints from before bounded actions: unbounded
            state_dict[key] = torch.zeros(3)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        self.bounded = bool(self.bounds[0] > 0) and not self.spec.discrete

    def _mean_std(self, out: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Continuous actions: the Gaussian's mean and std from the network's output."""
        if not self.bounded:
            return out, self.log_std.exp().expand_as(out)
        mean = self.low + (self.high - self.low) * (torch.tanh(out) + 1.0) / 2.0
        lo, hi = self.bounds[1], self.bounds[2]
        return mean, (lo + (hi - lo) * torch.sigmoid(self.log_std)).expand_as(out)

    def _head(self, obs: torch.Tensor, agent_id: torch.Tensor) -> torch.Tensor:
        agent_id = agent_id.long()
        x = (obs - self.obs_mean[agent_id]) / self.obs_std[agent_id]
        x = x.clamp(-10.0, 10.0) * self.feature_mask[agent_id]
        return self.net(torch.cat([x, F.one_hot(agent_id, self.n_agents).float()], -1))

    def dist(
        self, obs: torch.Tensor, agent_id: torch.Tensor, avail: torch.Tensor | None = None
    ) -> D.Distribution:
        """The action distribution of agent ``agent_id`` given only its own observation."""
        out = self._head(obs, agent_id)
        if self.spec.discrete:
            if avail is not None:
                out = out.masked_fill(avail < 0.5, -1e9)
            return D.Categorical(logits=out)
        return D.Normal(*self._mean_std(out))

    def log_prob(
        self, dist: D.Distribution, action: torch.Tensor, agent_id: torch.Tensor
    ) -> torch.Tensor:
        if self.spec.discrete:
            return dist.log_prob(action.long())
        return (dist.log_prob(action) * self.action_mask[agent_id.long()]).sum(
            -1
        )  # padding dims ignored

    def entropy(self, dist: D.Distribution, agent_id: torch.Tensor) -> torch.Tensor:
        if self.spec.discrete:
            return dist.entropy()
        return (dist.entropy() * self.action_mask[agent_id.long()]).sum(-1)

    def act(
        self,
        obs: torch.Tensor,
        agent_id: torch.Tensor,
        avail: torch.Tensor | None = None,
        deterministic: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Sampled (or greedy) action and its log-probability."""
        dist = self.dist(obs, agent_id, avail)
        action = (
            (dist.probs.argmax(-1) if self.spec.discrete else dist.mean)
            if deterministic
            else dist.sample()
        )
        return action, self.log_prob(dist, action, agent_id)

    def executed(self, action: torch.Tensor) -> torch.Tensor:
        """Joint action (..., n, A) as the environment applies it: clipped to the box, padding
        zeroed. The world model must learn from these, not from the raw Gaussian samples."""
        if self.spec.discrete:
            return action
        return torch.minimum(torch.maximum(action, self.low), self.high) * self.action_mask

    def forward(
        self, obs: torch.Tensor, agent_id: torch.Tensor, avail: torch.Tensor | None = None
    ) -> torch.Tensor:
        """The exported greedy policy: best available action, or the mean clipped to the action
        box."""
        out = self._head(obs, agent_id)
        if self.spec.discrete:
            if avail is not None:
                out = out.masked_fill(~avail.bool(), -1e9)
            return out.argmax(-1)
        mean = self._mean_std(out)[0]
        return (
            torch.minimum(torch.maximum(mean, self.low), self.high)
            * self.action_mask[agent_id.long()]
        )


def joint_act(
    actor: Actor, obs: torch.Tensor, avail: torch.Tensor | None = None, deterministic: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """Every agent acts on its own row of ``obs`` (..., n, D); returns actions and log-probs (...,
    n)."""
    n = obs.shape[-2]
    ids = torch.arange(n, device=obs.device).expand(obs.shape[:-1])
    return actor.act(obs, ids, avail, deterministic)


def actor_policy(actor: Actor, deterministic: bool = False):
    """The actor as a ``collect``/``run_episodes`` policy: (obs, observed, avail) numpy in, joint
    action out."""
    device = next(actor.parameters()).device

    @torch.no_grad()
    def act(obs: np.ndarray, observed: np.ndarray, avail: np.ndarray | None) -> np.ndarray:
        a = None if avail is None else torch.as_tensor(avail, device=device).float()
        action, _ = joint_act(actor, torch.as_tensor(obs, device=device), a, deterministic)
        return action.cpu().numpy()

    return act


class Critic(nn.Module):
    """V(s) from all agents' observations (centralised training, Eq. 14)."""

    def __init__(
        self, spec: EnvSpec, hidden: int, obs_mean: np.ndarray, obs_std: np.ndarray
    ) -> None:
        super().__init__()
        self.net = mlp(spec.n_agents * spec.obs_dim, hidden, 1, layers=2)
        self.register_buffer("obs_mean", torch.as_tensor(obs_mean, dtype=torch.float32))
        self.register_buffer("obs_std", torch.as_tensor(obs_std, dtype=torch.float32))

    def forward(self, joint_obs: torch.Tensor) -> torch.Tensor:
        x = ((joint_obs - self.obs_mean) / self.obs_std).clamp(-10.0, 10.0)
        return self.net(x.flatten(-2)).squeeze(-1)


class LatentCritic(nn.Module):
    """V(s) from all agents' world-model states (h, z), as DreamerV3's and MAMBA's critics: it
    reads what the model carries rather than its decoded guess of the observations. Training-only
    (imagination); nothing deployed needs a critic."""

    def __init__(self, n_agents: int, feat: int, hidden: int) -> None:
        super().__init__()
        self.net = mlp(n_agents * feat, hidden, 1, layers=2)

    def forward(self, latent: torch.Tensor) -> torch.Tensor:
        return self.net(latent.flatten(-2)).squeeze(-1)


class ValueNorm(nn.Module):
    """Running mean and variance of value targets (debiased EMA), as in MAPPO."""

    def __init__(self, beta: float = 0.99999) -> None:
        super().__init__()
        self.beta = beta
        self.register_buffer("mean", torch.zeros(()))
        self.register_buffer("mean_sq", torch.zeros(()))
        self.register_buffer("debias", torch.zeros(()))

    @torch.no_grad()
    def update(self, x: torch.Tensor) -> None:
        w = self.beta ** x.numel()
        self.mean.mul_(w).add_(x.mean() * (1 - w))
        self.mean_sq.mul_(w).add_((x**2).mean() * (1 - w))
        self.debias.mul_(w).add_(1 - w)

    def _stats(self) -> tuple[torch.Tensor, torch.Tensor]:
        d = self.debias.clamp(min=1e-5)
        mean = self.mean / d
        var = (self.mean_sq / d - mean**2).clamp(min=1e-2)
        return mean, var.sqrt()

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        mean, std = self._stats()
        return (x - mean) / std

    def denormalize(self, x: torch.Tensor) -> torch.Tensor:
        mean, std = self._stats()
        return x * std + mean
