"""MMSA's networks: SALE encoders, the SALE-augmented recurrent Q-agent, the latent world model
with its two VAEs and roll-outs, and the mixer that sees the roll-out state.

Paper: "Multi-Agent Model-Based Reinforcement Learning with Joint State-Action Learned
Embeddings" (Wang and Meger, AAMAS 2026), Sections 4.2-4.4 and Figures 1-3; SALE and AvgL1Norm
are TD7's ("For SALE: State-Action Representation Learning for Deep Reinforcement Learning",
Fujimoto et al., NeurIPS 2023). Where the paper is silent or contradicts itself, the choice made
here is stated next to the code and in docs/ARCHITECTURE.md.
"""

from __future__ import annotations

import itertools

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from rmio.envs.base import EnvSpec
from rmio.train.mmsa_config import MMSAConfig
from rmio.train.qmix_config import QMIXConfig
from rmio.train.qmix_nets import QMixer, RNNAgent


def avg_l1_norm(x: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """AvgL1Norm(x) = x / mean_i |x_i| over the last axis (TD7; the paper's Sec. 4.2): every
    embedding keeps an average absolute value of 1, whatever the encoder's scale."""
    return x / x.abs().mean(-1, keepdim=True).clamp(min=eps)


def _mlp(sizes: list[int]) -> nn.Sequential:
    """Linear layers with ELU between them (TD7's encoders and Q-function use ELU)."""
    layers: list[nn.Module] = []
    for k, (a, b) in enumerate(itertools.pairwise(sizes)):
        layers.append(nn.Linear(a, b))
        if k < len(sizes) - 2:
            layers.append(nn.ELU())
    return nn.Sequential(*layers)


class SALE(nn.Module):
    """State encoder f and state-action encoder g: z^s = AvgL1Norm(f(s)), z^sa = g(z^s, a).

    Trained only by :meth:`loss`, TD7's ``(g(f(s_t), a_t) - sg(f(s_{t+1})))^2``: the value,
    policy and world-model losses never reach f and g (the paper's "decoupled" encoders)."""

    def __init__(self, in_dim: int, act_dim: int, m: MMSAConfig) -> None:
        super().__init__()
        d, hid = m.latent_dim, m.sale_hidden
        self.f = _mlp([in_dim, hid, hid, d])
        self.g = _mlp([d + act_dim, hid, hid, d])

    def zs(self, s: torch.Tensor) -> torch.Tensor:
        return avg_l1_norm(self.f(s))

    def zsa(self, zs: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        """``action`` one-hot (or a joint action's concatenated one-hots), same leading axes."""
        return self.g(torch.cat([zs, action], -1))

    def zsa_every_action(self, zs: torch.Tensor) -> torch.Tensor:
        """z^sa for every one-hot action at once, (N, A, d) from ``zs`` (N, d): what ``zsa``
        gives on each one-hot, with g's first layer split into its state and action columns."""
        first, d = self.g[0], zs.shape[-1]
        base = F.linear(zs, first.weight[:, :d], first.bias)  # (N, hidden)
        y = base.unsqueeze(1) + first.weight[:, d:].T.unsqueeze(0)  # + column of action a
        return self.g[1:](y)

    def loss(self, s: torch.Tensor, action: torch.Tensor, s_next: torch.Tensor) -> torch.Tensor:
        """Squared error per row, (...): the prediction of the next state's embedding."""
        with torch.no_grad():
            target = self.zs(s_next)
        return (self.zsa(self.zs(s), action) - target).pow(2).mean(-1)


class MMSAAgent(RNNAgent):
    """QMIX's GRU agent with TD7's SALE Q-function on top: Q_i(a) = head([phi^oa, z^oa, z^o,
    h^i_t]) for every action a (paper Fig. 1, bottom).

    h^i_t is the GRU's state over [o, previous action, id] (the paper implements the agent
    network with an RNN but gives no layout: rmio feeds h to the head next to TD7's three
    inputs). z^o and z^oa come from ``self.sale``, a *fixed* copy of the SALE encoders refreshed at
    each target update (TD7's fixed encoders), and carry no gradient. phi^oa = AvgL1Norm(Linear(o,
    a)) is the Q-function's own first layer, trained by TD as in TD7. Inputs and outputs are
    RNNAgent's, so QMIX's runner, unroll and evaluation drive it unchanged."""

    def __init__(self, spec: EnvSpec, q: QMIXConfig, m: MMSAConfig) -> None:
        super().__init__(spec, q)
        del self.fc2  # the SALE head replaces QMIX's linear Q layer
        a = self.n_actions
        self.sale = SALE(self.obs_dim, a, m)
        self.sale.requires_grad_(False)
        self.use_sale = m.sale
        self.phi = nn.Linear(self.obs_dim + a, m.phi_dim)
        # head([phi^oa, z^oa, z^o, h]) = Linear(hidden, 1)(ELU(Linear over the concatenation))
        self.q_action = nn.Linear(m.phi_dim + m.latent_dim, q.rnn_hidden, bias=False)
        self.q_shared = nn.Linear(m.latent_dim + q.rnn_hidden, q.rnn_hidden)
        self.q_out = nn.Linear(q.rnn_hidden, 1)

    def qvalues(self, x: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        """Q (..., A) from the step's inputs ``x`` (their first obs_dim features are the
        normalised observation) and the GRU's new state ``h`` (..., hidden).

        The head's first layer on [phi^oa(a), z^oa(a), z^o, h] is split into the action's part
        and the part every action shares, which is computed once per row (the same function)."""
        lead = x.shape[:-1]
        obs = x.reshape(-1, self.input_dim)[:, : self.obs_dim]
        with torch.no_grad():  # decoupled: TD never reaches the encoders
            zo = self.sale.zs(obs)
            zoa = self.sale.zsa_every_action(zo)  # (N, A, d)
            if not self.use_sale:  # the No-SALE ablation (mmsa.sale)
                zo, zoa = torch.zeros_like(zo), torch.zeros_like(zoa)
        phi_o = F.linear(obs, self.phi.weight[:, : self.obs_dim], self.phi.bias)
        phi = avg_l1_norm(phi_o.unsqueeze(1) + self.phi.weight[:, self.obs_dim :].T.unsqueeze(0))
        shared = self.q_shared(torch.cat([zo, h.reshape(-1, self.hidden)], -1)).unsqueeze(1)
        y = F.elu(shared + self.q_action(torch.cat([phi, zoa], -1)))
        return self.q_out(y).reshape(*lead, self.n_actions)


class Gaussian(nn.Module):
    """A diagonal Gaussian over the latent state from an input: softplus std + min_std."""

    def __init__(self, in_dim: int, m: MMSAConfig) -> None:
        super().__init__()
        self.net = _mlp([in_dim, m.wm_hidden, 2 * m.latent_dim])
        self.min_std = m.min_std

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mean, raw = self.net(x).chunk(2, -1)
        return mean, F.softplus(raw) + self.min_std


def gaussian_kl(
    m1: torch.Tensor, s1: torch.Tensor, m2: torch.Tensor, s2: torch.Tensor
) -> torch.Tensor:
    """KL[N(m1, s1) || N(m2, s2)] of diagonal Gaussians, summed over the last axis."""
    var1, var2 = s1.pow(2), s2.pow(2)
    return (torch.log(s2 / s1) + (var1 + (m1 - m2).pow(2)) / (2 * var2) - 0.5).sum(-1)


def balanced_kl(
    q: tuple[torch.Tensor, torch.Tensor],
    p: tuple[torch.Tensor, torch.Tensor],
    alpha: float,
    balance: bool = True,
) -> torch.Tensor:
    """KL[q || p] with KL balancing: alpha KL[sg(q) || p] + (1 - alpha) KL[q || sg(p)]. The value
    is the plain KL; the prior p gets alpha of its gradient and the posterior q 1 - alpha
    (mmsa.kl_alpha's docstring: why alpha sits on the prior's term)."""
    if not balance:
        return gaussian_kl(*q, *p)
    q_sg = (q[0].detach(), q[1].detach())
    p_sg = (p[0].detach(), p[1].detach())
    return alpha * gaussian_kl(*q_sg, *p) + (1 - alpha) * gaussian_kl(*q, *p_sg)


class LatentWorldModel(nn.Module):
    """The imagination module (paper Sec. 4.3, Fig. 2), one latent state s^i_t per agent.

    * VAE-2, the posterior VAE: q(s^_t | h_t) from the agent's recurrent state, and a decoder
      back to h_t (the L_REC term MSE(h'_t, h_t)).
    * SALE on the latent state: z^s = AvgL1Norm(f(s^)), z^sa = g(z^s, a_joint), trained by their
      own loss, plus phi^sa = AvgL1Norm(Linear(s^, a_joint)), trained by the world-model losses.
    * VAE-1, the prior VAE: p_prior(s^_{t+1} | z^sa_t, z^s_t, phi^sa_t) and a decoder back to the
      three embeddings (the L_REC terms on z^sa, z^s, phi^sa).
    * The latent policy pi(z^s, phi^s) of Fig. 1 (top), which picks the imagined actions.

    The paper's decoder of VAE-1 "predicts the next-step embeddings" and it "sets s^_{t+1} =
    z^s_{t+1}", while L_KL makes the prior a distribution over s^_{t+1} given the step-t
    embeddings: here VAE-1's latent *is* s^_{t+1} (its mean in roll-outs), its decoder
    reconstructs the embeddings it was given (L_REC as printed), and VAE-2's decoder turns the
    imagined s^_{t+1} into h'_{t+1}."""

    def __init__(self, spec: EnvSpec, q: QMIXConfig, m: MMSAConfig) -> None:
        super().__init__()
        self.n_agents, self.n_actions = spec.n_agents, spec.action_dim
        d, joint = m.latent_dim, spec.n_agents * spec.action_dim
        self.latent_dim, self.hidden = d, q.rnn_hidden
        self.use_sale = m.sale
        self.posterior = Gaussian(q.rnn_hidden, m)
        self.decode_h = _mlp([d, m.wm_hidden, q.rnn_hidden])
        self.sale = SALE(d, joint, m)
        self.phi_sa = nn.Linear(d + joint, m.phi_dim)
        emb = 2 * d + m.phi_dim
        self.prior = Gaussian(emb, m)
        self.decode_e = _mlp([d, m.wm_hidden, emb])
        self.phi_s = nn.Linear(d, m.phi_dim)
        self.policy = _mlp([d + m.phi_dim, m.wm_hidden, spec.action_dim])

    def joint_action(self, actions: torch.Tensor) -> torch.Tensor:
        """(..., n) int64 -> (..., n, n * A): every agent sees the whole joint action."""
        flat = F.one_hot(actions, self.n_actions).float().flatten(-2)
        return flat.unsqueeze(-2).expand(*actions.shape, flat.shape[-1])

    def embed(
        self, s: torch.Tensor, joint: torch.Tensor, zs: torch.Tensor | None = None
    ) -> torch.Tensor:
        """[z^sa, z^s, phi^sa] (..., n, 2 d + phi_dim), VAE-1's input; z carries no gradient
        (``zs``: z^s of ``s`` when already computed)."""
        with torch.no_grad():
            zs = self._zs(s) if zs is None else zs
            zsa = self.sale.zsa(zs, joint) if self.use_sale else torch.zeros_like(zs)
        phi = avg_l1_norm(self.phi_sa(torch.cat([s, joint], -1)))
        return torch.cat([zsa, zs, phi], -1)

    def _zs(self, s: torch.Tensor) -> torch.Tensor:
        """z^s of latent states; zeros in the No-SALE ablation (mmsa.sale)."""
        zs = self.sale.zs(s)
        return zs if self.use_sale else torch.zeros_like(zs)

    def policy_logits(self, s: torch.Tensor, zs: torch.Tensor | None = None) -> torch.Tensor:
        """pi(z^s, phi^s) over an agent's actions, (..., A)."""
        if zs is None:
            with torch.no_grad():
                zs = self._zs(s)
        return self.policy(torch.cat([zs, avg_l1_norm(self.phi_s(s))], -1))

    def rollout(
        self, h: torch.Tensor, horizon: int, decode: bool = True
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Imagine ``horizon`` steps from every agent's recurrent state ``h`` (..., n, hidden):
        the latent states s^_t..s^_{t+j} (..., n, j + 1, d), starting at the posterior's mean,
        and (with ``decode``) h'_{t+1}..h'_{t+j} (..., n, j, hidden). Actions are the latent
        policy's argmax; each next state is the prior's mean (deterministic, so the mixer's
        input is too)."""
        s = self.posterior(h)[0]
        states, hs = [s], []
        for _ in range(horizon):
            with torch.no_grad():
                zs = self._zs(s)
            joint = self.joint_action(self.policy_logits(s, zs).argmax(-1))
            s = self.prior(self.embed(s, joint, zs))[0]
            states.append(s)
            if decode:
                hs.append(self.decode_h(s))
        return torch.stack(states, -2), torch.stack(hs, -2) if decode else None

    def losses(
        self,
        h: torch.Tensor,
        actions: torch.Tensor,
        filled: torch.Tensor,
        greedy: torch.Tensor,
        kl_alpha: float,
        kl_balance: bool,
    ) -> dict[str, torch.Tensor]:
        """The world model's terms on a batch of episodes, each a masked mean over rows.

        The reconstruction errors are squared errors summed over a vector's features (a
        unit-variance Gaussian log-likelihood, up to 1/2), as the KL is summed over the latent's:
        with the mean over features that "MSE" could also mean, the 16-dim KL outweighed the
        64-dim h's error and the posterior collapsed to the prior (rec_h stayed at h's variance).

        ``h`` (B, T+1, n, hidden) the agents' recurrent states (no gradient flows back into
        them), ``actions`` (B, T, n) taken, ``filled`` (B, T) real steps, ``greedy`` (B, T+1, n)
        the online Q-agents' greedy actions, which the latent policy learns to imitate (the
        paper gives pi no loss of its own; it should imagine what the agents would do now)."""
        h = h.detach()
        row = filled.float()  # transition t -> t+1 is real
        seen = torch.cat([row, torch.zeros_like(row[:, :1])], 1)
        seen = torch.maximum(seen, torch.cat([torch.zeros_like(row[:, :1]), row], 1))
        q_mean, q_std = self.posterior(h)
        s = q_mean + q_std * torch.randn_like(q_std)  # reparameterised s^_t ~ q(. | h_t)
        rec_h = (self.decode_h(s) - h).pow(2).sum(-1)
        joint = self.joint_action(actions)
        e = self.embed(s[:, :-1].detach(), joint)
        p_mean, p_std = self.prior(e)
        post_next = (q_mean[:, 1:], q_std[:, 1:])
        kl_post = balanced_kl(post_next, (p_mean, p_std), kl_alpha, kl_balance)
        kl_prior = gaussian_kl(p_mean, p_std, torch.zeros_like(p_mean), torch.ones_like(p_std))
        u = p_mean + p_std * torch.randn_like(p_std)
        rec_e = (self.decode_e(u) - e.detach()).pow(2).sum(-1)
        sale = self.sale.loss(q_mean[:, :-1].detach(), joint, q_mean[:, 1:].detach())
        sale = sale if self.use_sale else torch.zeros_like(sale)  # No-SALE: nothing to train
        ce = F.cross_entropy(
            self.policy_logits(q_mean.detach()).flatten(0, -2),
            greedy.flatten(),
            reduction="none",
        ).view(greedy.shape)
        return {
            "kl_post": _masked(kl_post, row),
            "kl_prior": _masked(kl_prior, row),
            "rec_emb": _masked(rec_e, row),
            "rec_h": _masked(rec_h, seen),
            "sale_latent": _masked(sale, row),
            "policy_ce": _masked(ce, seen),
        }


def _masked(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of ``x`` (B, T, n) over the agents of the rows where ``mask`` (B, T) is 1."""
    return (x.mean(-1) * mask).sum() / mask.sum().clamp(min=1.0)


class MMSAMixer(QMixer):
    """QMIX's monotonic hypernetwork mixer whose hypernetworks see [s_t, s^Rollout_t] (paper Sec.
    4.4: the agents' Q-values, the real global state and the roll-out state; either part may be
    0 wide, the paper's No-GS and No-WM ablations). The weights on the Q-values stay absolute
    values, so Q_tot is monotonic in every Q_i whatever the roll-out."""

    def __init__(self, n_agents: int, state_dim: int, rollout_dim: int, q: QMIXConfig) -> None:
        super().__init__(n_agents, state_dim + rollout_dim, q)
        self.real_state_dim, self.rollout_dim = state_dim, rollout_dim

    def set_stats(self, mean: np.ndarray, std: np.ndarray) -> None:
        """The global state's statistics (ignored when the state is left out); the roll-out
        features (O(1) latents, kept near N(0, I) by L_KL) pass unnormalised."""
        k, pad = self.real_state_dim, self.rollout_dim
        mean = np.concatenate([np.asarray(mean)[:k], np.zeros(pad)])
        std = np.concatenate([np.asarray(std)[:k], np.ones(pad)])
        super().set_stats(mean, std)


def rollout_dim(spec: EnvSpec, m: MMSAConfig) -> int:
    """Size of the flattened roll-out state: every agent's j + 1 latent states, concatenated
    (the paper "aggregates" them without saying how; concatenation keeps their order)."""
    return spec.n_agents * (m.horizon + 1) * m.latent_dim
