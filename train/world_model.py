"""The RMIOv2 world model: an RSSM per agent with shared parameters and cross-agent fusion.

Per step t and agent i (paper Eq. 2-3, GAWM Eq. 1-2):

    e_{t-1}  = f_af(z_{t-1}, a_{t-1})        action fusion over the agents     (2b, 6)
    h_t      = f_rec(h_{t-1}, e_{t-1})       GRU                               (2c)
    g_t      = f_of(h_t, o~_t)               observation fusion over agents    (2a, 4, 5)
    z_t      ~ p_post(z_t | g_t, h_t)        posterior                         (2d)
    z^_t     ~ p_prior(z^_t | h_t)           prior                             (2e)
    o^_t^i, A^_t^i = decoders(h_t^i, z_t^i)  per agent                         (3a, 3b)
    r^_t, gamma^_t = heads(h_t, z_t)         all agents jointly (GAWM's global heads) (3c, 3d)

o~_t is the (normalised) observation with lost agents zeroed. The model works on normalised
observations internally; its buffers hold the statistics, so the exported step graph takes and
returns raw observations.

Two switches make the baselines of the paper's Fig. 8 out of the same model (``rmio.config``'s
ALGORITHMS): ``lost_latent: prior`` takes a lost agent's z_t from the prior p(z^_t | h_t) (MAMBA,
which has no observation fusion, so nothing else could inform it), and an attached correction block
(RMIO v1, `rmio.train.correction`) first fills a lost agent's row with the prior's prediction,
corrects it from the joint observation, and then encodes the corrected row like an observed one.
The actor is rmio's observation-based r-MAPPO actor for every variant (MAMBA's original acts on the
world model's latents): only the reconstruction differs between them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from rmio.envs.base import EnvSpec
from rmio.train.networks import AgentFusion, Categorical, CorrectionBlock, mlp
from rmio.train.wm_config import WorldModelConfig
from rmio.train.wm_fast import categorical_probs, observe_fast


class LayerNormGRU(nn.Module):
    """GRU cell with LayerNorm on the gates (DreamerV3); hand-written so it exports as plain ops."""

    def __init__(self, inp: int, size: int) -> None:
        super().__init__()
        self.linear = nn.Linear(inp + size, 3 * size, bias=False)
        self.norm = nn.LayerNorm(3 * size)

    def forward(self, x: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        reset, cand, update = self.norm(self.linear(torch.cat([x, h], -1))).chunk(3, -1)
        reset = torch.sigmoid(reset)
        cand = torch.tanh(reset * cand)
        update = torch.sigmoid(update - 1.0)  # bias towards keeping the state early in training
        return update * cand + (1 - update) * h


@dataclass
class Posterior:
    """Result of observing a sequence: states and distributions of every step."""

    h: torch.Tensor  # (B, T, n, deter)
    z: torch.Tensor  # (B, T, n, stoch)
    post: Categorical
    prior: Categorical


class RMIOWorldModel(nn.Module):
    def __init__(
        self,
        spec: EnvSpec,
        cfg: WorldModelConfig,
        obs_mean: np.ndarray,
        obs_std: np.ndarray,
        state_mean: np.ndarray | None = None,
        state_std: np.ndarray | None = None,
    ) -> None:
        super().__init__()
        self.spec, self.cfg = spec, cfg
        n, d = spec.n_agents, spec.obs_dim
        self.n_agents, self.obs_dim = n, d
        self.act_width = spec.action_dim  # one-hot width for discrete tasks, padded width otherwise
        self.stoch = cfg.groups * cfg.classes
        feat = cfg.deter + self.stoch
        ident = n if cfg.agent_id else 0

        self.register_buffer("obs_mean", torch.as_tensor(obs_mean, dtype=torch.float32))
        self.register_buffer("obs_std", torch.as_tensor(obs_std, dtype=torch.float32))
        self.register_buffer(
            "feature_mask", torch.as_tensor(spec.obs_feature_mask, dtype=torch.float32)
        )
        self.register_buffer("agent_ids", torch.eye(n))
        sm = np.zeros(spec.state_dim) if state_mean is None else state_mean
        ss = np.ones(spec.state_dim) if state_std is None else state_std
        self.register_buffer("state_mean", torch.as_tensor(sm, dtype=torch.float32))
        self.register_buffer("state_std", torch.as_tensor(ss, dtype=torch.float32))

        self.obs_fusion = AgentFusion(
            d + cfg.deter + int(cfg.mask_flag) + ident,
            cfg.fusion_dim,
            cfg.fusion_layers,
            cfg.fusion_heads,
            enabled=cfg.obs_fusion,
        )
        self.posterior_net = mlp(cfg.fusion_dim + cfg.deter, cfg.hidden, self.stoch)
        self.prior_net = mlp(cfg.deter, cfg.hidden, self.stoch)
        self.action_fusion = AgentFusion(
            self.act_width + self.stoch + ident,
            cfg.fusion_dim,
            cfg.fusion_layers if cfg.action_fusion_layers is None else cfg.action_fusion_layers,
            cfg.fusion_heads,
            enabled=cfg.action_fusion,
        )
        self.rnn = LayerNormGRU(cfg.fusion_dim, cfg.deter)
        self.obs_decoder = mlp(feat, cfg.hidden, d)
        self.avail_head = mlp(feat, cfg.hidden, spec.action_dim) if spec.discrete else None
        self.state_head = (
            mlp(feat, cfg.hidden, spec.state_dim) if cfg.state_head and spec.state_dim else None
        )
        self.reward_head = mlp(n * feat, cfg.hidden, 1)
        self.term_head = mlp(n * feat, cfg.hidden, 1)
        self.observe_path: Literal["stepwise", "fast", "compiled"] = "stepwise"
        """How ``observe`` runs its loop (``world_model.train.compile`` chooses ``compiled`` for
        the updates of ``rmio train world-model``); not part of the state dict."""
        self.correction: CorrectionBlock | None = None
        """RMIO v1's block, attached (``attach_correction``) once it is trained on top of the frozen
        world model; the pre-trained model has none."""

    def attach_correction(self) -> CorrectionBlock:
        """Add an (untrained) correction block; its parameters join the state dict."""
        cfg = self.cfg
        self.correction = CorrectionBlock(
            self.n_agents, self.obs_dim, cfg.hidden, cfg.fusion_dim, cfg.fusion_heads
        ).to(self.obs_mean.device)
        return self.correction

    # ---------------------------------------------------------------- normalisation

    def normalize_obs(self, obs: torch.Tensor) -> torch.Tensor:
        return ((obs - self.obs_mean) / self.obs_std).clamp(-10.0, 10.0) * self.feature_mask

    def denormalize_obs(self, obs_n: torch.Tensor) -> torch.Tensor:
        return (obs_n * self.obs_std + self.obs_mean) * self.feature_mask

    def encode_actions(self, actions: torch.Tensor) -> torch.Tensor:
        """Joint actions -> (..., n, act_width): one-hot for discrete tasks."""
        if self.spec.discrete:
            return F.one_hot(actions.long(), self.act_width).float()
        return actions.float()

    # ---------------------------------------------------------------- one step

    def _with_id(self, x: torch.Tensor) -> torch.Tensor:
        if not self.cfg.agent_id:
            return x
        return torch.cat([x, self.agent_ids.expand(*x.shape[:-2], -1, -1)], -1)

    def initial(self, batch: int) -> tuple[torch.Tensor, torch.Tensor]:
        dev = self.obs_mean.device
        return (
            torch.zeros(batch, self.n_agents, self.cfg.deter, device=dev),
            torch.zeros(batch, self.n_agents, self.stoch, device=dev),
        )

    def transition(self, h: torch.Tensor, z: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        """h_t = f_rec(h_{t-1}, f_af(z_{t-1}, a_{t-1}))  (Eq. 2b, 2c); ``action`` already
        encoded."""
        e = self.action_fusion(self._with_id(torch.cat([action, z], -1)))
        return self.rnn(e, h)

    def prior(self, h: torch.Tensor) -> Categorical:
        """p_prior(z^_t | h_t)  (Eq. 2e)."""
        return Categorical(self.prior_net(h), self.cfg.groups, self.cfg.classes, self.cfg.unimix)

    def posterior(self, h: torch.Tensor, obs_n: torch.Tensor, mask: torch.Tensor) -> Categorical:
        """p_post(z_t | f_of(h_t, o~_t), h_t)  (Eq. 2a, 2d, 4); lost agents' observations are
        zeroed."""
        m = mask.unsqueeze(-1)
        parts = [obs_n * m, h] + ([m] if self.cfg.mask_flag else [])
        g = self.obs_fusion(self._with_id(torch.cat(parts, -1)))
        return Categorical(
            self.posterior_net(torch.cat([g, h], -1)),
            self.cfg.groups,
            self.cfg.classes,
            self.cfg.unimix,
        )

    def latent(
        self, h: torch.Tensor, obs_n: torch.Tensor, mask: torch.Tensor, sample: bool
    ) -> tuple[torch.Tensor, Categorical]:
        """z_t and the distribution it came from, for observed and lost agents alike.

        With a correction block, lost rows are first filled with the prior's decoded prediction and
        corrected from the joint observation, then encoded as observed. Otherwise, with
        ``lost_latent: prior`` a lost agent's distribution is its prior (so its KL term is zero and
        the reconstruction loss trains the prior), else the posterior over its zeroed input.
        """
        if self.correction is not None:
            obs_n, mask = self.corrected_obs(h, obs_n, mask), torch.ones_like(mask)
        dist = self.posterior(h, obs_n, mask)
        if self.cfg.lost_latent == "prior" and self.correction is None:
            m = mask.reshape(*mask.shape, 1, 1)
            mixed = Categorical.__new__(Categorical)
            mixed.groups, mixed.classes = dist.groups, dist.classes
            prior = self.prior(h)
            mixed.logits = m * dist.logits + (1 - m) * prior.logits
            mixed.probs = m * dist.probs + (1 - m) * prior.probs
            dist = mixed
        return (dist.sample() if sample else dist.mode()), dist

    def corrected_obs(
        self, h: torch.Tensor, obs_n: torch.Tensor, mask: torch.Tensor
    ) -> torch.Tensor:
        """RMIO v1: observed rows as they are, lost rows the prior's prediction corrected by the
        block (normalised units)."""
        assert self.correction is not None
        guess = self.decode_obs(h, self.prior(h).mode())
        m = mask.unsqueeze(-1)
        joint = m * obs_n + (1 - m) * guess
        return m * obs_n + (1 - m) * self.correction(joint, mask) * self.feature_mask

    def decode_obs(self, h: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """o^_t^i = p_o(h_t^i, z_t^i)  (Eq. 3a), normalised units."""
        return self.obs_decoder(torch.cat([h, z], -1)) * self.feature_mask

    def step(
        self,
        h: torch.Tensor,
        z: torch.Tensor,
        prev_action: torch.Tensor,
        obs: torch.Tensor,
        mask: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """One deterministic step in raw units: the graph that `rmio export` writes as
        wm_step.onnx."""
        h = self.transition(h, z, prev_action)
        z, _ = self.latent(h, self.normalize_obs(obs), mask, sample=False)
        return h, z, self.denormalize_obs(self.decode_obs(h, z))

    # ---------------------------------------------------------------- sequences

    def observe(
        self,
        obs_n: torch.Tensor,
        prev_action: torch.Tensor,
        mask: torch.Tensor,
        is_first: torch.Tensor,
        sample: bool = True,
    ) -> Posterior:
        """Filter a batch of sequences (B, T, n, ...); h and z restart from zeros at ``is_first``.

        The sampler marks the first row of every window as a start too, which is what the deployed
        coordinator's window replay does: zero state, but the real previous action a_{s-1} (zero
        only at a true episode start, where the data already holds zeros).

        ``observe_path`` picks how: ``stepwise`` (the default, ``observe_stepwise``), or, for
        RMIOv2's posterior latents without a correction block, ``fast`` or ``compiled``
        (``rmio.train.wm_fast``: the same function up to float32 rounding, its step optionally
        under ``torch.compile``).
        """
        if (
            self.observe_path != "stepwise"
            and self.correction is None
            and self.cfg.lost_latent == "posterior"
        ):
            h_all, z_all, logits = observe_fast(
                self, obs_n, prev_action, mask, is_first, sample, self.observe_path == "compiled"
            )
            prior = Categorical.__new__(Categorical)
            prior.groups, prior.classes = self.cfg.groups, self.cfg.classes
            c = self.cfg
            prior.probs = categorical_probs(self.prior_net(h_all), c.classes, c.unimix)
            prior.logits = torch.log(prior.probs)
            return self._posterior(h_all, z_all, logits, prior)
        return self.observe_stepwise(obs_n, prev_action, mask, is_first, sample)

    def observe_stepwise(
        self,
        obs_n: torch.Tensor,
        prev_action: torch.Tensor,
        mask: torch.Tensor,
        is_first: torch.Tensor,
        sample: bool = True,
    ) -> Posterior:
        """``observe`` one step at a time through ``transition`` and ``latent`` (the reference)."""
        B, T = obs_n.shape[:2]
        h, z = self.initial(B)
        hs, zs, post_logits = [], [], []
        for t in range(T):
            keep = (1.0 - is_first[:, t].float()).view(B, 1, 1)
            h, z, a = h * keep, z * keep, prev_action[:, t]
            h = self.transition(h, z, a)
            z, post = self.latent(h, obs_n[:, t], mask[:, t], sample)
            hs.append(h)
            zs.append(z)
            post_logits.append(post.logits)
        h_all = torch.stack(hs, 1)
        # the prior only depends on h, so all steps go through it at once
        prior = self.prior(h_all)
        return self._posterior(h_all, torch.stack(zs, 1), torch.stack(post_logits, 1), prior)

    def _posterior(
        self, h_all: torch.Tensor, z_all: torch.Tensor, logits: torch.Tensor, prior: Categorical
    ) -> Posterior:
        """States, (B, T, n, C, K) posterior log-probs (already mixed) and the prior ->
        ``Posterior``."""
        post_all = Categorical.__new__(Categorical)
        post_all.groups, post_all.classes = self.cfg.groups, self.cfg.classes
        post_all.logits, post_all.probs = logits, logits.exp()
        return Posterior(h_all, z_all, post_all, prior)

    def heads(self, h: torch.Tensor, z: torch.Tensor) -> dict[str, torch.Tensor]:
        """All predictors on states (..., n, feat): per-agent decoders and the global heads (Eq.
        3)."""
        feat = torch.cat([h, z], -1)
        joint = feat.flatten(-2)
        out = {
            "obs": self.obs_decoder(feat) * self.feature_mask,
            "reward": self.reward_head(joint).squeeze(-1),
            "term_logit": self.term_head(joint).squeeze(-1),
        }
        if self.avail_head is not None:
            out["avail_logit"] = self.avail_head(feat)
        if self.state_head is not None:
            out["state"] = self.state_head(feat)
        return out
