"""MARIE's world model (paper Section 3): the VQ tokenizer, the Perceiver aggregation and the shared
causal Transformer over each agent's token sequence, with the observation-token, reward,
termination (discount) and available-action heads, and its training loss (Eqs. 6-7).

Each agent's sequence is made of one block per step, ``[c_s, x_{s,1..K}, a_{s,1..A}, e_s]``:
MARIE's observation tokens x, action tokens a and Perceiver output e over the team's tokens and
actions of step s, plus ``c_s`` when ``marie.context_token`` is on: rmio's masked-token extension
(not the paper's), a second Perceiver over the team's observation tokens of step s in which the
agent's own tokens (and lost agents') are the [MASK] id (id N, one past the codebook), so that a
lost agent's step can be reconstructed from the others' current observations without leaking its
own tokens into their prediction. A token is predicted from the hidden state of the position before
it; the reward and termination of step s+1 from e_s; the available actions of step s from x_{s,K}.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from rmio.envs.base import EnvSpec
from rmio.train.marie_config import MarieConfig
from rmio.train.marie_nets import (
    Dropout,
    GPTBlock,
    Perceiver,
    VQTokenizer,
    fast_paths,
    mlp,
    sinusoid,
)


class MarieWorldModel(nn.Module):
    """Tokenizer, embeddings, the Perceivers, the shared causal Transformer and the heads."""

    def __init__(self, mcfg: MarieConfig, spec: EnvSpec, obs_mean: np.ndarray, obs_std: np.ndarray):
        super().__init__()
        z = mcfg.sizes()
        self.mcfg, self.n, self.k = mcfg, spec.n_agents, z["tokens"]
        self.codebook, self.dim, self.discrete = z["codebook"], z["dim"], spec.discrete
        self.mask_id = z["codebook"]  # rmio's [MASK]
        self.act_tokens = 1 if spec.discrete else spec.action_dim
        self.act_vocab = spec.action_dim if spec.discrete else mcfg.action_bins
        self.no_action = self.act_vocab  # before an episode's first step
        self.register_buffer("act_low", torch.tensor(spec.action_low or [-1.0] * spec.action_dim))
        self.register_buffer("act_high", torch.tensor(spec.action_high or [1.0] * spec.action_dim))
        self.ctx = 1 if mcfg.context_token else 0
        self.block = self.ctx + self.k + self.act_tokens + 1
        d, drop = z["dim"], mcfg.dropout
        self.tok = VQTokenizer(
            self.n,
            spec.obs_dim,
            z["codebook"],
            z["tokens"],
            z["code_dim"],
            z["vq_hidden"],
            z["vq_layers"],
            mcfg.codebook_decay,
            mcfg.dead_code if mcfg.codebook_decay > 0 else 0.0,
        )
        self.tok.mean.copy_(torch.as_tensor(obs_mean))
        self.tok.std.copy_(torch.as_tensor(obs_std))
        self.obs_emb = nn.Embedding(z["codebook"] + 1, d)
        self.act_emb = nn.Embedding(self.act_vocab + 1, d)
        self.act_slot = nn.Parameter(torch.zeros(self.act_tokens, d))
        self.pos = nn.Embedding(mcfg.seq_len * self.block, d)
        self.register_buffer("agent_pos", sinusoid(self.n, d))
        perc = (self.n, d, z["perc_heads"], z["perc_dim_head"], z["perc_layers"], drop)
        self.aggregate = Perceiver(*perc)  # MARIE's e_s
        self.context = Perceiver(*perc) if self.ctx else None  # rmio's c_s
        self.drop = Dropout(drop)
        self.blocks = nn.ModuleList(GPTBlock(d, z["heads"], drop) for _ in range(z["layers"]))
        self.ln_f = nn.LayerNorm(d)
        self.obs_head = mlp([d, d, z["codebook"]])
        self.reward_head = mlp([d, d, 1])
        self.term_head = mlp([d, d, 1])
        self.avail_head = mlp([d, d, spec.action_dim]) if spec.discrete else None

    # ------------------------------------------------------------------------------- tokens

    def action_ids(self, actions: torch.Tensor, none: torch.Tensor) -> torch.Tensor:
        """Actions as the buffer encodes them (one-hot if discrete, raw in the box if not),
        (..., n, action_dim) -> (..., n, A) ids; ``none`` (...) marks 'no action' rows."""
        if self.discrete:
            ids = actions.argmax(-1, keepdim=True)
            none = none[..., None] | (actions.sum(-1) < 0.5)
        else:
            unit = (actions - self.act_low) / (self.act_high - self.act_low).clamp_min(1e-6)
            ids = (unit * self.act_vocab).floor().clamp(0, self.act_vocab - 1).long()
            none = none[..., None].expand(*actions.shape[:-1])
        return torch.where(none[..., None], self.no_action, ids)

    def team(self, perceiver: Perceiver, emb: torch.Tensor) -> torch.Tensor:
        """(..., n, m, D) embedded tokens of one step -> (..., n, D): latent i for agent i."""
        lead, (n, m, d) = emb.shape[:-3], emb.shape[-3:]
        ctx = (emb + self.agent_pos[:, None]).reshape(-1, n * m, d)
        return perceiver(ctx).reshape(*lead, n, d)

    def contexts(self, ids: torch.Tensor) -> torch.Tensor:
        """rmio's c_s: (..., n, K) ids, [MASK] where lost -> (..., n, D), agent i's from the team's
        tokens with its own masked too (one Perceiver input per agent)."""
        n = self.n
        if fast_paths(self) and self.context is not None:  # the same values, one input per step
            emb = self.obs_emb(ids) + self.agent_pos[:, None]  # (..., n, K, D)
            mask = self.obs_emb.weight[self.mask_id] + self.agent_pos  # (n, D)
            lat = self.context.own_masked(emb.reshape(-1, *emb.shape[-3:]), mask)
            return lat.reshape(*ids.shape[:-1], self.dim)
        own = torch.eye(n, dtype=torch.bool, device=ids.device)[:, :, None]  # (i, j, 1)
        masked = torch.where(own, self.mask_id, ids[..., None, :, :])  # (..., i, j, K)
        lat = self.team(self.context, self.obs_emb(masked))  # (..., i, n latents, D)
        return lat.diagonal(dim1=-3, dim2=-2).movedim(-1, -2)  # latent i of input i

    def sequences(self, ids: torch.Tensor, acts: torch.Tensor) -> torch.Tensor:
        """ids (B, S, n, K) ([MASK] where lost), action ids (B, S, n, A) -> each agent's embedded
        blocks (B, n, S, block, D)."""
        xe = self.obs_emb(ids)
        ae = self.act_emb(acts) + self.act_slot
        e = self.team(self.aggregate, torch.cat([xe, ae], -2))
        parts = [xe, ae, e[..., None, :]]
        if self.ctx:
            parts.insert(0, self.contexts(ids)[..., None, :])
        return torch.cat(parts, -2).transpose(1, 2)

    def transform(self, x: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        """(B', T, D) embedded tokens, (B', 1, T, T) or (T, T) additive mask -> hidden states."""
        x = self.drop(x + self.pos.weight[: x.shape[1]])
        for block in self.blocks:
            x, _ = block(x, bias)
        return self.ln_f(x)

    def attention_bias(self, episode: torch.Tensor) -> torch.Tensor:
        """Causal, and no look across an episode start: episode ids (B, S) -> (B*n, 1, T, T)."""
        seg = episode.repeat_interleave(self.block, 1)  # (B, T)
        t = seg.shape[1]
        causal = torch.ones(t, t, dtype=torch.bool, device=seg.device).tril()
        ok = causal & (seg[:, :, None] == seg[:, None, :])
        bias = torch.zeros(ok.shape, device=seg.device).masked_fill(~ok, float("-inf"))
        return bias.repeat_interleave(self.n, 0)[:, None]

    # ------------------------------------------------------------------------------- loss

    def loss(self, batch: Any) -> tuple[torch.Tensor, dict[str, float]]:
        """Eq. 7 (tokenizer) + Eq. 6 (tokens, reward, discount) + the available-action head, on a
        sampled Batch of S + 1 rows (the last row gives step S's targets only)."""
        mcfg = self.mcfg
        vq_loss, ids_all, metrics = self.tok.loss(batch.obs, mcfg.commitment)
        s = batch.obs.shape[1] - 1
        ids = ids_all[:, :s].detach()
        first = batch.is_first > 0.5
        acts = self.action_ids(batch.prev_action[:, 1:], first[:, 1:])
        h = self.transform(
            self.sequences(ids, acts).flatten(2, 3).flatten(0, 1),
            self.attention_bias(first[:, :s].long().cumsum(1)),
        ).reshape(-1, self.n, s, self.block, self.dim)
        x0 = self.ctx
        # token k of step s is predicted at the position before it
        if self.ctx:
            before = h[:, :, :, x0 - 1 : x0 + self.k - 1]
            valid = torch.ones(h.shape[0], 1, s, self.k, dtype=torch.bool, device=h.device)
        else:  # MARIE: x_{s,1} from e_{s-1}, none at an episode's first step
            prev_e = torch.cat([h[:, :, :1, -1:], h[:, :, :-1, -1:]], 2)
            before = torch.cat([prev_e, h[:, :, :, : self.k - 1]], 3)
            valid = torch.ones(h.shape[0], 1, s, self.k, dtype=torch.bool, device=h.device)
            valid = valid.clone()
            valid[:, :, :, 0] = ~first[:, None, :s]
        logits = self.obs_head(before)  # (B, n, S, K, N)
        target = ids.transpose(1, 2)
        ce = F.cross_entropy(logits.flatten(0, -2), target.flatten(), reduction="none")
        weight = valid.expand_as(target).flatten().float()
        obs_ce = (ce * weight).sum() / weight.sum().clamp_min(1)
        acc = ((logits.argmax(-1) == target).flatten().float() * weight).sum() / weight.sum()
        e = h[:, :, :, -1]  # (B, n, S, D)
        nxt = (~first[:, 1:]).float()[:, None].expand(-1, self.n, -1)  # step s+1 in the episode
        rew = F.smooth_l1_loss(
            self.reward_head(e)[..., 0],
            batch.raw_reward[:, None, 1:].expand(-1, self.n, -1),
            reduction="none",
        )
        term = F.binary_cross_entropy_with_logits(
            self.term_head(e)[..., 0],
            batch.is_terminal[:, None, 1:].expand(-1, self.n, -1),
            reduction="none",
        )
        denom = nxt.sum().clamp_min(1)
        rew, term = (rew * nxt).sum() / denom, (term * nxt).sum() / denom
        loss = vq_loss + obs_ce + mcfg.reward_weight * rew + term
        metrics.update(obs_ce=obs_ce.item(), token_acc=acc.item(), reward=rew.item())
        metrics["termination"] = term.item()
        if self.avail_head is not None and batch.avail is not None:
            av = F.binary_cross_entropy_with_logits(
                self.avail_head(h[:, :, :, x0 + self.k - 1]),
                batch.avail[:, :s].transpose(1, 2),
            )
            loss = loss + mcfg.avail_weight * av
            metrics["avail"] = av.item()
        metrics["loss"] = loss.item()
        return loss, metrics
