"""MMSA under observation loss: an observation decoder on MMSA's latent world model and the
one-step graph the swarm runs (rmio's extension, not the paper's: MMSA never reconstructs
observations).

The bundle's world-model contract (docs/BUNDLE.md, ``wm_step.onnx``) carries a state ``h, z`` per
agent. MMSA's latent model fits it: ``h`` is the Q-agent's GRU state (MMSA's posterior reads it)
and ``z`` = [s^_t, o~_t], the agent's latent state (``mmsa.latent_dim``) and the observation it
last acted on (normalised, ``obs_dim``), so the step graph is MMSA's own networks plus a decoder,
with no window (MARIE's kind) needed:

1. s^prior_t = mean of VAE-1's prior p(s^_t | z^sa, z^s, phi^sa of (s^_{t-1}, a_{t-1})), the
   latent transition MMSA's roll-outs use;
2. o^prior_t = o~_{t-1} + D(s^prior_t, o~_{t-1}), the new observation decoder D predicting the
   change since the last observation (normalised units): o_t before seeing it. D = 0 is hold-last,
   so the latent transition is what the decoder adds to it (a decoder of s^ alone, tried first,
   was 4-14x worse than hold-last on debug LBF runs, whose observations change little per step);
3. o~_t is the agent's own observation where it arrived and o^prior_t where it was lost (in the
   units the actor sees once the runtime hands it the reconstruction), then
   h_t = GRU(h_{t-1}, [o~_t, a_{t-1}, id]) with the agent's frozen weights: exactly the step the
   blind actor takes on the reconstruction, so ``h`` stays the actor's own state;
4. s^_t = mean of VAE-2's posterior q(s^_t | h_t);
5. ``obs_recon`` = o^prior_t for lost agents, o~_{t-1} + D(s^_t, o~_{t-1}) (the posterior's
   decode) for observed ones, in raw units.

A lost agent's observation is thus predicted from its own history and the joint action: MMSA's
latent transition has no other path between agents (every agent sees the joint action).
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from rmio.train.mmsa_config import MMSAConfig
from rmio.train.mmsa_nets import LatentWorldModel, MMSAAgent, _mlp


class MMSAObsModel(nn.Module):
    """The agent's GRU (frozen), MMSA's latent world model and the observation decoder D, run one
    step at a time over the bundle's contract (``step``) or over whole episodes (``unroll``)."""

    def __init__(self, agent: MMSAAgent, wm: LatentWorldModel, m: MMSAConfig) -> None:
        super().__init__()
        self.agent = copy.deepcopy(agent).requires_grad_(False)
        self.wm = copy.deepcopy(wm)
        self.n_agents, self.n_actions, self.obs_dim = agent.n_agents, agent.n_actions, agent.obs_dim
        self.hidden, self.latent_dim = agent.hidden, wm.latent_dim
        self.stoch = wm.latent_dim + agent.obs_dim
        """z's width: s^ and the observation the agent last acted on (normalised)."""
        d = agent.obs_dim
        self.decode_o = _mlp([wm.latent_dim + d, m.wm_hidden, m.wm_hidden, d])
        self.register_buffer("ids", torch.eye(agent.n_agents))
        self.register_buffer("agent_index", torch.arange(agent.n_agents))

    def finetuned_parameters(self) -> list[nn.Parameter]:
        """What masked fine-tuning trains: D, the posterior, the prior and its phi^sa layer (the
        SALE encoders keep their own loss's weights, the GRU stays the actor's)."""
        wm = self.wm
        mods = (self.decode_o, wm.posterior, wm.prior, wm.phi_sa)
        return [p for mod in mods for p in mod.parameters()]

    def initial(self, batch: int, device: torch.device | None = None) -> tuple[torch.Tensor, ...]:
        n = self.n_agents
        return (
            torch.zeros(batch, n, self.hidden, device=device),
            torch.zeros(batch, n, self.stoch, device=device),
        )

    def _parts(
        self,
        h: torch.Tensor,
        z: torch.Tensor,
        prev_action: torch.Tensor,
        obs: torch.Tensor,
        mask: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """(h_t, z_t, o^prior_t, the posterior's decode), the decodes in normalised units;
        ``prev_action`` (B, n, A) one-hot (zeros before the first step), ``obs`` raw, ``mask``
        (B, n)."""
        wm, a = self.wm, self.agent
        s_prev, o_last = z.split([self.latent_dim, self.obs_dim], -1)
        joint = prev_action.flatten(-2).unsqueeze(-2).expand(*prev_action.shape[:-1], -1)
        s_prior = wm.prior(wm.embed(s_prev, joint))[0]
        o_prior = o_last + self.decode_o(torch.cat([s_prior, o_last], -1))
        # the blind actor normalises the raw reconstruction as it would its own observation
        fill = o_prior.clamp(-10.0, 10.0) * a.feature_mask if a.normalise else o_prior
        seen = a.normalise_obs(obs, self.agent_index)
        m = mask.unsqueeze(-1)
        acted = m * seen + (1.0 - m) * fill
        parts = [acted]
        if a.last_action:
            parts.append(prev_action)
        if a.agent_id:
            parts.append(self.ids.expand(*obs.shape[:-2], -1, -1))
        h_next = a.recur(torch.cat(parts, -1), h)
        s = wm.posterior(h_next)[0]
        o_post = o_last + self.decode_o(torch.cat([s, o_last], -1))
        return h_next, torch.cat([s, acted], -1), o_prior, o_post

    def to_raw(self, o: torch.Tensor) -> torch.Tensor:
        """Normalised units -> the raw observation the runtime hands the actor."""
        a = self.agent
        if not a.normalise:
            return o
        return (o * a.obs_std + a.obs_mean) * a.feature_mask

    def step(
        self,
        h: torch.Tensor,
        z: torch.Tensor,
        prev_action: torch.Tensor,
        obs: torch.Tensor,
        mask: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``wm_step.onnx``: (h_next, z_next, obs_recon raw)."""
        h_next, z_next, o_prior, o_post = self._parts(h, z, prev_action, obs, mask)
        m = mask.unsqueeze(-1)
        return h_next, z_next, self.to_raw(m * o_post + (1.0 - m) * o_prior)

    def unroll(
        self, obs: torch.Tensor, actions: torch.Tensor, mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Whole episodes as the graph runs them: ``obs`` (B, T+1, n, obs_dim) raw, ``actions``
        (B, T, n) taken, ``mask`` (B, T+1, n) 1 observed (lost rows of ``obs`` are ignored).
        Returns (o^prior, D(s^), the targets), each (B, T+1, n, obs_dim) normalised."""
        b, t1 = obs.shape[:2]
        onehot = F.one_hot(actions, self.n_actions).float()
        prev = torch.cat([torch.zeros_like(onehot[:, :1]), onehot], 1)
        h, z = self.initial(b, obs.device)
        priors, posts = [], []
        for t in range(t1):
            h, z, o_prior, o_post = self._parts(h, z, prev[:, t], obs[:, t], mask[:, t])
            priors.append(o_prior)
            posts.append(o_post)
        target = self.agent.normalise_obs(obs, self.agent_index)
        return torch.stack(priors, 1), torch.stack(posts, 1), target


def reconstruction_terms(
    model: MMSAObsModel,
    obs: torch.Tensor,
    actions: torch.Tensor,
    filled: torch.Tensor,
    mask: torch.Tensor,
    lost_only: bool,
) -> dict[str, torch.Tensor]:
    """Squared errors summed over features, averaged over real rows (``filled`` (B, T)):
    ``rec_prior`` of the prediction o^prior (on the lost agents alone when ``lost_only``, the
    fine-tuning loss; on every agent otherwise, the decoder stage's), ``rec_post`` of the
    posterior's decode on the observed agents."""
    o_prior, o_post, target = model.unroll(obs, actions, mask)
    row = filled.float()
    seen = torch.cat([torch.ones_like(row[:, :1]), row], 1)  # o_0 and every o_{t+1} of a real step
    lost = seen.unsqueeze(-1) * (1.0 - mask if lost_only else torch.ones_like(mask))
    observed = seen.unsqueeze(-1) * mask
    err_prior = (o_prior - target).pow(2).sum(-1)
    err_post = (o_post - target).pow(2).sum(-1)
    return {
        "rec_prior": (err_prior * lost).sum() / lost.sum().clamp(min=1.0),
        "rec_post": (err_post * observed).sum() / observed.sum().clamp(min=1.0),
    }
