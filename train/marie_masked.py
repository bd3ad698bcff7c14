"""rmio's masked-token extension of MARIE (not the paper's): the masked fine-tuning loss and the
window graph the swarm runs.

MARIE only predicts a step it has not seen. To reconstruct a lost agent from the others' current
observations, a lost agent's K observation ids become the [MASK] id (one past the codebook) at
every lost step, its step is predicted all K tokens at once from the positions before them in its
own block ``[c_s, x_s, a_s, e_s]`` (c_s, rmio's context token, holds the team's tokens of step s
with its own masked), and masked fine-tuning (the analogue of RMIOv2's Algorithm 2) trains that:
masks drawn as for RMIOv2 (train/masks.py), cross-entropy on the masked positions, plus MARIE's
pre-training terms on the rest so that fine-tuning keeps what pre-training learned. The tokenizer
is frozen: its ids are the targets.

The window graph (``MarieWindow``) is that prediction for step t of a raw window, the design
chosen in docs/ARCHITECTURE.md ("MARIE in the swarm"): no state is carried between rounds; the
prediction is the training one, position for position. ``LostRowsWindow``, exported as
``wm_window.onnx``, gives the same outputs with the Transformer run for the lost agents alone.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from rmio.train.marie_model import MarieWorldModel


def before_positions(model: MarieWorldModel, h: torch.Tensor) -> torch.Tensor:
    """Hidden states (B, n, S, block, D) -> those that predict each step's K tokens
    (B, n, S, K, D): the position before each token (with MARIE's block as published, x_{s,1}
    comes from e_{s-1})."""
    x0, k = model.ctx, model.k
    if model.ctx:
        return h[:, :, :, x0 - 1 : x0 + k - 1]
    prev_e = torch.cat([h[:, :, :1, -1:], h[:, :, :-1, -1:]], 2)
    return torch.cat([prev_e, h[:, :, :, : k - 1]], 3)


def hidden(
    model: MarieWorldModel, ids: torch.Tensor, acts: torch.Tensor, episode: torch.Tensor
) -> torch.Tensor:
    """ids (B, S, n, K), action ids (B, S, n, A), episode ids (B, S) -> (B, n, S, block, D)."""
    b, s = ids.shape[:2]
    h = model.transform(
        model.sequences(ids, acts).flatten(2, 3).flatten(0, 1), model.attention_bias(episode)
    )
    return h.reshape(b, model.n, s, model.block, model.dim)


def normalised_error(
    model: MarieWorldModel, pred: torch.Tensor, obs: torch.Tensor, fm: torch.Tensor
) -> torch.Tensor:
    """SmoothL1 per agent-step in normalised units over the real features (rmio's L_rec)."""
    mean, std = model.tok.mean, model.tok.std
    err = F.smooth_l1_loss((pred - mean) / std, (obs - mean) / std, reduction="none")
    return (err * fm).sum(-1) / fm.sum(-1).clamp_min(1)


def masked_predictions(
    model: MarieWorldModel, batch: Any, mask: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The first S of a Batch's S + 1 rows with masks (B, S + 1, n), 1 = observed: hidden states
    (B, n, S, block, D), token logits (B, n, S, K, N), the tokenizer's ids of the true observations
    (B, S, n, K) and the lost flags (B, S, n). A lost agent's ids are [MASK] in the input."""
    s = batch.obs.shape[1] - 1
    with torch.no_grad():
        target = model.tok.encode(batch.obs[:, :s])  # the frozen tokenizer's ids
    lost = mask[:, :s] < 0.5
    ids = torch.where(lost[..., None], model.mask_id, target)
    first = batch.is_first > 0.5
    acts = model.action_ids(batch.prev_action[:, 1:], first[:, 1:])
    h = hidden(model, ids, acts, first[:, :s].long().cumsum(1))
    return h, model.obs_head(before_positions(model, h)), target, lost


def masked_loss(
    model: MarieWorldModel, batch: Any, mask: torch.Tensor, fm: torch.Tensor
) -> tuple[torch.Tensor, dict[str, float]]:
    """The masked fine-tuning loss on a Batch of S + 1 rows and its masks (B, S + 1, n), 1 =
    observed: cross-entropy of the lost agents' tokens, from [MASK] inputs at every lost step,
    plus the observed tokens' cross-entropy and the reward, termination and available-action
    heads. Also L_rec on the lost agents (the argmax tokens decoded), which is not optimised."""
    mcfg = model.mcfg
    s = batch.obs.shape[1] - 1
    h, logits, target, lost = masked_predictions(model, batch, mask)
    first = batch.is_first > 0.5
    tgt = target.transpose(1, 2)
    ce = F.cross_entropy(logits.flatten(0, -2), tgt.flatten(), reduction="none").view(tgt.shape)
    valid = torch.ones_like(tgt, dtype=torch.bool)
    if not model.ctx:  # MARIE: no x_{s,1} at an episode's first step
        valid[..., 0] = ~first[:, None, :s]
    lost_k = lost.transpose(1, 2)[..., None] & valid
    seen_k = ~lost.transpose(1, 2)[..., None] & valid
    n_lost, n_seen = lost_k.sum().clamp_min(1), seen_k.sum().clamp_min(1)
    ce_lost = (ce * lost_k).sum() / n_lost
    ce_seen = (ce * seen_k).sum() / n_seen
    right = logits.argmax(-1) == tgt
    e = h[:, :, :, -1]
    nxt = (~first[:, 1:]).float()[:, None].expand(-1, model.n, -1)
    rew = F.smooth_l1_loss(
        model.reward_head(e)[..., 0],
        batch.raw_reward[:, None, 1:].expand(-1, model.n, -1),
        reduction="none",
    )
    term = F.binary_cross_entropy_with_logits(
        model.term_head(e)[..., 0],
        batch.is_terminal[:, None, 1:].expand(-1, model.n, -1),
        reduction="none",
    )
    denom = nxt.sum().clamp_min(1)
    rew, term = (rew * nxt).sum() / denom, (term * nxt).sum() / denom
    loss = ce_lost + ce_seen + mcfg.reward_weight * rew + term
    metrics = {
        "obs_ce_masked": ce_lost.item(),
        "obs_ce_observed": ce_seen.item(),
        "token_acc_masked": ((right & lost_k).sum() / n_lost).item(),
        "reward": rew.item(),
        "termination": term.item(),
        "lost_fraction": lost.float().mean().item(),
    }
    if model.avail_head is not None and batch.avail is not None:
        av = F.binary_cross_entropy_with_logits(
            model.avail_head(h[:, :, :, model.ctx + model.k - 1]),
            batch.avail[:, :s].transpose(1, 2),
        )
        loss = loss + mcfg.avail_weight * av
        metrics["avail"] = av.item()
    with torch.no_grad():
        codes = torch.where(lost.transpose(1, 2)[..., None], logits.argmax(-1), tgt)
        recon = model.tok.decode(codes.transpose(1, 2))  # (B, S, n, d)
        err = normalised_error(model, recon, batch.obs[:, :s], fm)
        metrics["lrec_masked"] = ((err * lost).sum() / lost.sum().clamp_min(1)).item()
    metrics["loss"] = loss.item()
    return loss, metrics


class LostRowsWindow(nn.Module):
    """``MarieWindow``'s round computing the Transformer only for the rows it has to predict (the
    graph exported as ``wm_window.onnx``): same inputs, same outputs, value for value.

    MARIE's Transformer is shared but runs each agent's sequence on its own, so an agent's
    prediction needs only its own blocks: its tokens, actions and context tokens c_s, and the
    team's e_s. The tokenizer and the aggregating Perceiver (e_s, over the whole team) still run
    for every agent; the context Perceiver (c_s, one input per agent) and the Transformer run for
    the rows lost at step t alone (``mask`` at the window's last step is 0), which the graph reads
    off ``mask`` and ``valid``, so the inputs are those of ``MarieWindow``. A round with one lost
    agent runs one row of the Transformer instead of n. When no row of the batch is lost, row 0 runs
    and is discarded (a graph of zero rows is avoided); observed rows are their own tokens decoded,
    as in ``MarieWindow``.
    """

    def __init__(self, model: MarieWorldModel, steps: int) -> None:
        super().__init__()
        self.m = model
        causal = model.attention_bias(torch.zeros(1, steps, dtype=torch.long))[0]  # (1, T, T)
        self.register_buffer("causal", causal, persistent=False)

    def forward(
        self, obs: torch.Tensor, actions: torch.Tensor, mask: torch.Tensor, valid: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        m = self.m
        b, n, steps, w = actions.shape[0], actions.shape[1], obs.shape[2], actions.shape[3]
        enc = m.tok.encode(obs.transpose(1, 2))  # (B, L, n, K)
        seen = mask.transpose(1, 2)[..., None] > 0.5
        ids = torch.where(seen, enc, m.mask_id)
        act = torch.cat([actions.transpose(1, 2), actions.new_zeros(b, 1, n, w)], 1)
        last = valid * (1.0 - torch.cat([valid[:, 1:], valid.new_zeros(b, 1)], 1))  # step t
        none = (valid < 0.5) | (last > 0.5)  # no action on padding, and a_t is not chosen yet
        xe = m.obs_emb(ids)  # (B, L, n, K, D)
        ae = m.act_emb(m.action_ids(act, none)) + m.act_slot  # (B, L, n, A, D)
        e = m.team(m.aggregate, torch.cat([xe, ae], -2))  # (B, L, n, D): the whole team's
        seen_t = (mask * last[:, None]).sum(-1) > 0.5  # (B, n)
        lost = ~seen_t.flatten()
        first = torch.arange(b * n, device=obs.device) == 0
        rows = (lost | (first & ~lost.any())).nonzero()[:, 0]  # (R,) rows b * n + i
        bi, ai = rows // n, rows % n

        def pick(t: torch.Tensor) -> torch.Tensor:  # (B, L, n, ...) -> (R, L, ...)
            return t.transpose(1, 2).flatten(0, 1).index_select(0, rows)

        parts = [pick(xe), pick(ae), pick(e)[:, :, None]]
        if m.ctx:  # c_s of agent i: the team's ids with agent i's masked, latent i (m.contexts)
            own = ai[:, None] == torch.arange(n, device=obs.device)  # (R, n)
            masked = torch.where(own[:, None, :, None], m.mask_id, ids.index_select(0, bi))
            lat = m.team(m.context, m.obs_emb(masked))  # (R, L, n, D)
            index = ai[:, None, None, None].expand(-1, steps, 1, m.dim)
            parts.insert(0, lat.gather(2, index))  # (R, L, 1, D)
        x = torch.cat(parts, 2).flatten(1, 2)  # (R, L * block, D)
        h = m.transform(x, self.causal).reshape(-1, 1, steps, m.block, m.dim)
        at = before_positions(m, h)[:, 0] * last.index_select(0, bi)[:, :, None, None]
        pred = m.obs_head(at.sum(1)).argmax(-1)  # (R, K)
        enc_t = (enc * last[:, :, None, None].long()).sum(1)  # (B, n, K)
        codes = enc_t.flatten(0, 1).index_copy(0, rows, pred).reshape(enc_t.shape)
        codes = torch.where(seen_t[..., None], enc_t, codes)
        return m.tok.decode(codes), codes


class MarieWindow(nn.Module):
    """The swarm's reconstruction round as one module, every agent's row computed (the reference
    that ``LostRowsWindow``, exported as ``wm_window.onnx``, is checked against): the raw window of
    up to L steps ending at t in, step t's observations out, for every agent (a lost agent's from
    [MASK] tokens, an observed agent's own tokens decoded).

    Inputs: ``obs`` (B, n, L, obs_dim) raw, zero rows where lost; ``actions`` (B, n, L-1, act_width)
    the actions taken on the window's steps before t, encoded as for ``wm_step`` (one-hot for
    discrete tasks); ``mask`` (B, n, L), 1 observed; ``valid`` (B, L), 1 for the window's steps. A
    window of k < L steps (an episode's first steps) fills positions 0..k-1 and ends at k-1, as a
    training sequence that starts with its episode; causal attention never looks at the padding
    after it, so the attention mask is a constant. Outputs ``obs_recon`` (B, n, obs_dim) raw and
    ``tokens_t`` (B, n, K) int64.
    """

    def __init__(self, model: MarieWorldModel, steps: int) -> None:
        super().__init__()
        self.m = model
        causal = model.attention_bias(torch.zeros(1, steps, dtype=torch.long))[0]  # (1, T, T)
        self.register_buffer("causal", causal, persistent=False)

    def forward(
        self, obs: torch.Tensor, actions: torch.Tensor, mask: torch.Tensor, valid: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        recon, codes, _ = self.round(obs, actions, mask, valid)
        return recon, codes

    def round(
        self, obs: torch.Tensor, actions: torch.Tensor, mask: torch.Tensor, valid: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``forward``'s outputs and the hidden states (B, n, L, block, D) they come from (the
        reconstruction evaluation reads MARIE's reward and termination heads off them)."""
        m = self.m
        b, n, steps, w = actions.shape[0], actions.shape[1], obs.shape[2], actions.shape[3]
        enc = m.tok.encode(obs.transpose(1, 2))  # (B, L, n, K)
        seen = mask.transpose(1, 2)[..., None] > 0.5
        ids = torch.where(seen, enc, m.mask_id)
        act = torch.cat([actions.transpose(1, 2), actions.new_zeros(b, 1, n, w)], 1)
        last = valid * (1.0 - torch.cat([valid[:, 1:], valid.new_zeros(b, 1)], 1))  # step t
        none = (valid < 0.5) | (last > 0.5)  # no action on padding, and a_t is not chosen yet
        x = m.sequences(ids, m.action_ids(act, none)).flatten(2, 3).flatten(0, 1)
        h = m.transform(x, self.causal).reshape(b, n, steps, m.block, m.dim)
        pred = self.step_logits(h, valid).argmax(-1)
        enc_t = (enc * last[:, :, None, None].long()).sum(1)  # (B, n, K)
        seen_t = (mask * last[:, None]).sum(-1)[..., None] > 0.5
        codes = torch.where(seen_t, enc_t, pred)
        return m.tok.decode(codes), codes, h

    def step_logits(self, h: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """The observation head's token logits (B, n, K, codebook) at each window's step t, from
        ``round``'s hidden states (what its [MASK] predictions are the argmax of)."""
        last = valid * (1.0 - torch.cat([valid[:, 1:], valid.new_zeros(valid.shape[0], 1)], 1))
        at_t = (before_positions(self.m, h) * last[:, None, :, None, None]).sum(2)  # (B, n, K, D)
        return self.m.obs_head(at_t)
