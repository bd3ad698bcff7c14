"""The world model's filtering loop with fewer operations per step (training's hot path on a CPU).

``RMIOWorldModel.observe_stepwise`` runs ``transition`` and ``latent`` at every step: about a
hundred small tensor operations, each of which pays PyTorch's dispatch and autograd cost, on
tensors of a few thousand numbers. This module computes the same function with the same
parameters and the same random numbers, arranged so that less of it runs inside the loop:

* Everything that does not depend on the recurrent state is computed for the whole sequence at
  once: the observation and action tokens' share of the first fusion layer (observation, mask
  flag, agent id; previous action, agent id) and the Gumbel noise of every step's sample (one
  ``torch.rand`` call draws the same stream as the reference's one call per step).
* Concatenations followed by a linear layer become sums of products with column blocks of the same
  weight, so ``h_t`` goes through one matrix product for its three uses (observation token,
  posterior, next step's GRU gates).
* Agents are folded into the batch (2-D matrices) except inside the agent attention.
* The categoricals' softmax over K classes (posterior at every step, prior over the whole
  sequence) is a few whole-tensor operations instead of ATen's kernel, slow on so short an axis.

Only summation order changes, so results agree with the reference to float32 rounding (the tests
compare losses and every gradient); the exported ``wm_step`` graph still comes from ``step``, so
bundles do not change.

Measured on the 2-core CPU (``bench/world_model.py paths``, bench/results/world_model_paths.md),
this loop alone is no faster than the reference: the operations it saves were a few percent of
~35,000 per update. Its one step is also what ``torch.compile`` compiles when
``world_model.train.compile`` is on (RMIOWorldModel.observe_path ``compiled``), which is faster but
costs a compilation of about a minute per process; so the reference loop stays the default.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn


class _Softmax(torch.autograd.Function):
    """Softmax over a short last axis (the K classes of a latent). ATen's kernel vectorises along
    that axis and, at K = 8, took 3-4x longer than these few whole-tensor operations, forward and
    backward; the results agree to a float32 rounding."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor) -> torch.Tensor:
        e = (x - x.amax(-1, keepdim=True)).exp_()
        y = e.div_(e.sum(-1, keepdim=True))
        ctx.save_for_backward(y)
        return y

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        (y,) = ctx.saved_tensors
        gy = grad * y
        return gy - y * gy.sum(-1, keepdim=True)


def categorical_probs(logits: torch.Tensor, classes: int, unimix: float) -> torch.Tensor:
    """``Categorical``'s mixed probabilities (..., C, K) from flat logits (..., C * K)."""
    probs = _Softmax.apply(logits.reshape(*logits.shape[:-1], -1, classes))
    if unimix > 0:
        probs = (1 - unimix) * probs + unimix / classes
    return probs


_compiled_step: Any = None


def _fusion_tail(fusion: nn.Module, x: torch.Tensor, B: int, n: int) -> torch.Tensor:
    """The fusion module after its first linear layer: LayerNorm, SiLU, then its blocks."""
    _, norm, act = fusion.embed
    x = act(norm(x)).view(B, n, -1)
    for block in fusion.blocks:
        x = block(x)
    return x.reshape(B * n, -1)


def _step(
    model: Any,  # an RMIOWorldModel (not imported: it imports this module)
    h: torch.Tensor | None,
    z: torch.Tensor | None,
    gh: torch.Tensor | None,
    a_t: torch.Tensor,
    o_t: torch.Tensor,
    noise_t: torch.Tensor | None,
    w_az: torch.Tensor,
    w_ge: torch.Tensor,
    w_h: torch.Tensor,
    w_pg: torch.Tensor,
    B: int,
    n: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """One filtering step on (B * n, ...) rows: h_t, z_t, h_t's share of the next GRU gates and
    the posterior's log-probs. Module-level, with the weight blocks as arguments, so that
    ``torch.compile`` can cache it across calls."""
    cfg = model.cfg
    rows, K = B * n, cfg.classes
    n_o, n_p = cfg.fusion_dim, model.posterior_net[0].weight.shape[0]
    # transition (Eq. 2b, 2c)
    x = a_t if z is None else torch.addmm(a_t, z, w_az.t())
    e = _fusion_tail(model.action_fusion, x, B, n)
    gates = e @ w_ge.t() if gh is None else torch.addmm(gh, e, w_ge.t())
    reset, cand, update = model.rnn.norm(gates).chunk(3, -1)
    reset = torch.sigmoid(reset)
    cand = torch.tanh(reset * cand)
    update = torch.sigmoid(update - 1.0)
    h = update * cand if h is None else update * cand + (1 - update) * h
    # posterior (Eq. 2a, 2d)
    hp = h @ w_h.t()
    g = _fusion_tail(model.obs_fusion, o_t + hp[:, :n_o], B, n)
    first = torch.addmm(hp[:, n_o : n_o + n_p] + model.posterior_net[0].bias, g, w_pg.t())
    logits = model.posterior_net[1:](first)
    probs = categorical_probs(logits, K, cfg.unimix)
    logp = torch.log(probs)
    if noise_t is not None:  # Categorical.sample: Gumbel-max, straight-through gradients
        idx = (logp - noise_t).argmax(dim=-1)
        z = F.one_hot(idx, K).to(probs.dtype) + probs - probs.detach()
    else:
        z = F.one_hot(probs.argmax(dim=-1), K).to(probs.dtype)
    return h, z.reshape(rows, -1), hp[:, n_o + n_p :], logp


def observe_fast(
    model: Any,  # an RMIOWorldModel (not imported: it imports this module)
    obs_n: torch.Tensor,
    prev_action: torch.Tensor,
    mask: torch.Tensor,
    is_first: torch.Tensor,
    sample: bool,
    compiled: bool = False,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``observe_stepwise`` for posterior latents without a correction block.

    Returns h (B, T, n, deter), z (B, T, n, stoch) and the mixed posterior log-probs
    (B, T, n, C, K).
    """
    cfg = model.cfg
    B, T, n = obs_n.shape[:3]
    C, K, S, D = cfg.groups, cfg.classes, model.stoch, cfg.deter
    A, d = model.act_width, model.obs_dim
    rows = B * n

    # Action tokens [a_{t-1}, z_{t-1}, id]: the action and id columns for every step at once.
    a_lin = model.action_fusion.embed[0]
    w = a_lin.weight
    a_pre = F.linear(prev_action, w[:, :A], a_lin.bias)
    if cfg.agent_id:
        a_pre = a_pre + F.linear(model.agent_ids, w[:, A + S :])
    a_pre = a_pre.transpose(0, 1).reshape(T, rows, -1)
    w_az = w[:, A : A + S]

    # Observation tokens [o~_t * m, h_t, m, id]: all but the h columns at once.
    o_lin = model.obs_fusion.embed[0]
    w = o_lin.weight
    m = mask.unsqueeze(-1)
    o_pre = F.linear(obs_n * m, w[:, :d], o_lin.bias)
    col = d + D
    if cfg.mask_flag:
        o_pre = o_pre + m * w[:, col]
        col += 1
    if cfg.agent_id:
        o_pre = o_pre + F.linear(model.agent_ids, w[:, col:])
    o_pre = o_pre.transpose(0, 1).reshape(T, rows, -1)
    w_oh = w[:, d : d + D]

    # Posterior [g_t, h_t] and GRU [e_{t-1}, h_{t-1}]: split the columns; h_t's three products
    # (observation token, posterior, next GRU step) are one matrix product.
    fdim = cfg.fusion_dim
    w_pg, w_ph = model.posterior_net[0].weight[:, :fdim], model.posterior_net[0].weight[:, fdim:]
    w_ge, w_gh = model.rnn.linear.weight[:, :fdim], model.rnn.linear.weight[:, fdim:]
    w_h = torch.cat([w_oh, w_ph, w_gh], 0)

    keep = (1.0 - is_first.float()).transpose(0, 1).reshape(T, B, 1).expand(T, B, n)
    keep = keep.reshape(T, rows, 1)
    restarts = (keep[1:] == 0).flatten(1).any(1).tolist()  # step 0 starts from zeros anyway
    noise = None
    if sample:  # the same draws, in the same order, as one rand_like per step
        u = torch.rand(T, B, n, C, K, device=obs_n.device, dtype=obs_n.dtype)
        noise = torch.log(-torch.log(u.clamp_(1e-8, 1 - 1e-8))).reshape(T, rows, C, K)

    global _compiled_step
    run = _step
    if compiled:  # one compiled step for every model and call (guards recompile when needed)
        if _compiled_step is None:
            _compiled_step = torch.compile(_step, dynamic=False)
        run = _compiled_step
    h = z = gh = None
    hs, zs, logps = [], [], []
    for t in range(T):
        if t > 0 and restarts[t - 1]:
            h, z, gh = h * keep[t], z * keep[t], gh * keep[t]
        noise_t = None if noise is None else noise[t]
        h, z, gh, logp = (run if t > 0 else _step)(
            model, h, z, gh, a_pre[t], o_pre[t], noise_t, w_az, w_ge, w_h, w_pg, B, n
        )
        hs.append(h)
        zs.append(z)
        logps.append(logp)
    return (  # (B * n, T, ...) -> (B, T, n, ...), contiguous like the reference's
        torch.stack(hs, 1).view(B, n, T, D).transpose(1, 2).contiguous(),
        torch.stack(zs, 1).view(B, n, T, S).transpose(1, 2).contiguous(),
        torch.stack(logps, 1).view(B, n, T, C, K).transpose(1, 2).contiguous(),
    )
