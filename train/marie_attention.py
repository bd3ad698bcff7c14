"""MARIE's attention in training: the values of the written-out ``Attention`` (matmul, softmax,
dropout, matmul) computed in cache-sized pieces, with its own backward.

One update of the cpu preset attends over 96 sequences of 220 tokens; every elementwise pass over
a layer's whole map (74 MB) went to memory, and ``F.dropout``'s Bernoulli draws were a third of the
update. Here the map is cut into pieces of whole sequences and, for a causal mask, of query rows
that read only the keys up to their last row (the keys left out have weight exactly 0), so that
about 60% of it is computed and each piece stays in cache from its scores to its product; the
dropout mask is drawn from 32 random bits per entry (``keep_mask``). The backward uses the saved
probabilities and masks piece by piece, adding into the gradients of q, k and v, where
autograd's would allocate and add a full-size zero gradient for every slice.
"""

from __future__ import annotations

import math
from typing import Any

import torch

ATTENTION_CHUNK = 400_000
"""Attention-map entries per piece (1.6 MB): the fastest of 0.2-1.6 M on the 2-core VM."""
ROW_CHUNK = 44
"""Query rows per piece of causal attention (22-55 were alike on the 2-core VM)."""


def keep_mask(shape: torch.Size | tuple[int, ...], p: float, device: torch.device) -> torch.Tensor:
    """Dropout's keep mask as uint8, 1 with probability 1 - p (to 2^-32), from 32 random bits per
    entry taken two to a 64-bit draw: 2.5 ns an entry on one thread of the 2-core VM, against 8 for
    ``F.dropout``'s Bernoulli draws. A product with uint8 took 0.3 ns an entry there, with bool
    (converted to floats first) 1.1, ``torch.where`` 1.8 and ``masked_fill`` 2.3."""
    n = math.prod(shape)
    bits = torch.empty((n + 1) // 2, dtype=torch.int64, device=device).random_(-(2**63), None)
    keep = bits.view(torch.int32)[:n].view(shape) >= round(p * 2**32) - 2**31
    return keep.view(torch.uint8)


def _pieces(b: int, h: int, t: int, s: int, rows: int) -> list[tuple[int, int, int, int, int]]:
    """(first sequence, last + 1, first row, last row + 1, keys read) of each piece."""
    per = max(1, ATTENTION_CHUNK // (h * min(rows, t) * s))
    out = []
    for i in range(0, b, per):
        for r0 in range(0, t, rows):
            r1 = min(t, r0 + rows)
            out.append((i, min(b, i + per), r0, r1, r1 if rows < t else s))
    return out


class _PiecewiseAttention(torch.autograd.Function):
    """softmax(q k^T + bias) with dropout (unscaled), times v; q already scaled, all contiguous."""

    @staticmethod
    def forward(
        ctx: Any,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        bias: torch.Tensor | None,
        dropout: float,
        rows: int,
    ) -> torch.Tensor:
        b, h, t, dh = q.shape
        s = k.shape[2]
        y = torch.empty_like(q)
        probs, keeps = [], []
        pieces = _pieces(b, h, t, s, rows)
        for i, j, r0, r1, end in pieces:
            n = (j - i) * h
            q3, k3, v3 = q[i:j].view(n, t, dh), k[i:j].view(n, s, dh), v[i:j].view(n, s, dh)
            att = torch.bmm(q3[:, r0:r1], k3[:, :end].transpose(1, 2))
            if bias is not None:
                att.view(j - i, h, r1 - r0, end).add_(bias[i:j, :, r0:r1, :end])
            att = torch.softmax(att, -1)
            probs.append(att)
            if dropout > 0:
                keeps.append(keep_mask(att.shape, dropout, att.device))
                att = att * keeps[-1]
            y[i:j].view(n, t, dh)[:, r0:r1] = torch.bmm(att, v3[:, :end])
        ctx.save_for_backward(q, k, v)
        ctx.pieces, ctx.probs, ctx.keeps = pieces, probs, keeps
        return y

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx: Any, dy: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        q, k, v = ctx.saved_tensors
        _, h, t, dh = q.shape
        s = k.shape[2]
        dy = dy.contiguous()
        dq, dk, dv = torch.zeros_like(q), torch.zeros_like(k), torch.zeros_like(v)
        for c, (i, j, r0, r1, end) in enumerate(ctx.pieces):
            n = (j - i) * h
            q3, k3, v3 = q[i:j].view(n, t, dh), k[i:j].view(n, s, dh), v[i:j].view(n, s, dh)
            g = dy[i:j].view(n, t, dh)[:, r0:r1]
            p = ctx.probs[c]
            dropped = p * ctx.keeps[c] if ctx.keeps else p
            # products with a transposed map would copy it: transpose the small factor instead
            dv[i:j].view(n, s, dh)[:, :end].add_(torch.bmm(g.transpose(1, 2), dropped).mT)
            dp = torch.bmm(g, v3[:, :end].transpose(1, 2))
            if ctx.keeps:
                dp.mul_(ctx.keeps[c])
            ds = torch._softmax_backward_data(dp, p, -1, p.dtype)
            dq[i:j].view(n, t, dh)[:, r0:r1] = torch.bmm(ds, k3[:, :end])  # rows of one piece
            dk[i:j].view(n, s, dh)[:, :end].add_(torch.bmm(q3[:, r0:r1].mT, ds).mT)
        return dq, dk, dv, None, None, None


def chunked_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    bias: torch.Tensor | None,
    dropout: float,
    causal: bool,
) -> torch.Tensor:
    """softmax(q k^T / sqrt(dh) + bias) with dropout p, times v: (B, h, T, dh), keys and values
    (B, h, S, dh), ``bias`` (T, S), (1, T, S) or (B, 1, T, S), a constant; ``causal``: ``bias`` is
    -inf above the diagonal (at least), so a piece of query rows skips the keys after its last
    row. The same values as the written-out attention, computed piecewise (module docstring)."""
    b, _, t, dh = q.shape
    s = k.shape[2]
    if bias is not None:
        bias = bias.detach().expand(b, bias.shape[-3] if bias.dim() > 2 else 1, t, s)
    rows = ROW_CHUNK if causal and bias is not None and s == t else t
    y = _PiecewiseAttention.apply(
        (q * dh**-0.5).contiguous(), k.contiguous(), v.contiguous(), bias, dropout, rows
    )
    return y * (1.0 / (1.0 - dropout)) if dropout > 0 else y
