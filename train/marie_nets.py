"""MARIE's building blocks: MLPs, attention written out (so it exports to plain ONNX), the minGPT
block of the shared Transformer, the Perceiver that aggregates the team, and the VQ-VAE tokenizer
(straight-through estimator, commitment loss, EMA codebook: paper Eq. 7 and Appendix A.1).

bench/marie_spike.py builds its candidate reconstruction graphs from these modules too.

Training takes faster paths to the same values (``fast_paths``): attention over the causal
sequence in cache-sized pieces that skip the keys a query cannot see (train/marie_attention.py),
cheaper dropout draws, and rmio's context Perceiver
run once per step instead of once per agent (``Perceiver.own_masked``). Evaluation, export and the
open-loop rollout run the written-out computation, which the ONNX graph is checked against;
``reference_paths()`` forces it everywhere (tests and bench/marie_speed.py compare the two).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import nn

from rmio.train.marie_attention import chunked_attention, keep_mask


def mlp(sizes: list[int], dropout: float = 0.0) -> nn.Sequential:
    """Linear layers with GELU between them (Table 2's activation)."""
    mods: list[nn.Module] = []
    for i, (a, b) in enumerate(itertools.pairwise(sizes)):
        mods.append(nn.Linear(a, b))
        if i < len(sizes) - 2:
            mods.append(nn.GELU())
    if dropout > 0:
        mods.append(Dropout(dropout))
    return nn.Sequential(*mods)


def sinusoid(n: int, dim: int) -> torch.Tensor:
    """(n, dim) fixed sinusoidal table: the agents' positions inside the Perceiver's input."""
    pos = torch.arange(n, dtype=torch.float32)[:, None]
    div = torch.exp(torch.arange(0, dim, 2, dtype=torch.float32) * (-math.log(10000.0) / dim))
    table = torch.zeros(n, dim)
    table[:, 0::2] = torch.sin(pos * div)
    table[:, 1::2] = torch.cos(pos * div)
    return table


_REFERENCE = False


@contextmanager
def reference_paths() -> Iterator[None]:
    """Run the written-out computation in training too (the code before the fast paths)."""
    global _REFERENCE
    old, _REFERENCE = _REFERENCE, True
    try:
        yield
    finally:
        _REFERENCE = old


def fast_paths(module: nn.Module) -> bool:
    """Whether ``module`` takes the fast paths: in training, outside ``reference_paths`` and
    outside an export or trace (the exported graph stays the written-out one)."""
    exporting = torch.onnx.is_in_onnx_export() or torch.compiler.is_exporting()
    return module.training and not _REFERENCE and not exporting and not torch.jit.is_tracing()


class Dropout(nn.Dropout):
    """``nn.Dropout`` whose training fast path draws its mask with ``keep_mask``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.p == 0 or not fast_paths(self):
            return super().forward(x)
        return x * keep_mask(x.shape, self.p, x.device) * (1.0 / (1.0 - self.p))


class Attention(nn.Module):
    """Multi-head attention written out (matmul, softmax), causal or not, with an optional past."""

    def __init__(
        self,
        dim: int,
        heads: int,
        dim_head: int,
        ctx_dim: int | None = None,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        self.h, self.dh = heads, dim_head
        self.q = nn.Linear(dim, heads * dim_head)
        self.kv = nn.Linear(ctx_dim or dim, 2 * heads * dim_head)
        self.out = nn.Linear(heads * dim_head, dim)
        self.drop = Dropout(dropout)

    def forward(
        self,
        x: torch.Tensor,
        ctx: torch.Tensor | None = None,
        bias: torch.Tensor | None = None,
        past: tuple[torch.Tensor, torch.Tensor] | None = None,
        causal: bool = False,
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        """``bias``: added to the scores, (T, S) or (B, 1, T, S), -inf where a query must not
        look (causal, another episode); ``causal``: it is -inf above the diagonal at least, which
        lets training skip those keys. Returns the output and this call's keys and values."""
        ctx = x if ctx is None else ctx
        q = self.q(x).unflatten(-1, (self.h, self.dh)).transpose(1, 2)
        k, v = self.kv(ctx).unflatten(-1, (2, self.h, self.dh)).permute(2, 0, 3, 1, 4)
        if past is not None:
            k, v = torch.cat([past[0], k], 2), torch.cat([past[1], v], 2)
        elif fast_paths(self):
            p = self.drop.p if self.drop.training else 0.0
            y = chunked_attention(q, k, v, bias, p, causal).transpose(1, 2).flatten(2)
            return self.drop(self.out(y)), (k, v)
        att = q @ k.transpose(-1, -2) * self.dh**-0.5
        if bias is not None:  # an Add of a constant: a Where over the scores cost ORT far more
            att = att + bias
        y = (self.drop(F.softmax(att, -1)) @ v).transpose(1, 2).flatten(2)
        return self.drop(self.out(y)), (k, v)


class GPTBlock(nn.Module):
    """Pre-norm Transformer block of minGPT (Appendix A.2)."""

    def __init__(self, dim: int, heads: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.ln1, self.ln2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.attn = Attention(dim, heads, dim // heads, dropout=dropout)
        self.mlp = mlp([dim, 4 * dim, dim], dropout)

    def forward(
        self,
        x: torch.Tensor,
        bias: torch.Tensor | None,
        past: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        a, kv = self.attn(self.ln1(x), bias=bias, past=past, causal=True)
        x = x + a
        return x + self.mlp(self.ln2(x)), kv


class Perceiver(nn.Module):
    """``n`` latents (one per agent) cross-attend to the team's tokens of one step, then
    self-attend (Table 4); latent i is agent i's aggregated feature."""

    def __init__(
        self,
        n: int,
        dim: int,
        heads: int,
        dim_head: int,
        layers: int,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        self.latents = nn.Parameter(torch.randn(n, dim))
        self.ln_q, self.ln_ctx = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.cross = Attention(dim, heads, dim_head, dim, dropout)
        self.cross_ff = nn.Sequential(nn.LayerNorm(dim), mlp([dim, 4 * dim, dim], dropout))
        self.selfs = nn.ModuleList(
            nn.ModuleList(
                [
                    nn.LayerNorm(dim),
                    Attention(dim, heads, dim_head, dropout=dropout),
                    nn.Sequential(nn.LayerNorm(dim), mlp([dim, 4 * dim, dim], dropout)),
                ]
            )
            for _ in range(layers)
        )

    def forward(self, ctx: torch.Tensor) -> torch.Tensor:
        """(B, T, dim) tokens -> (B, n, dim) latents."""
        x = self.latents.expand(ctx.shape[0], -1, -1)
        x = x + self.cross(self.ln_q(x), self.ln_ctx(ctx))[0]
        x = x + self.cross_ff(x)
        for ln, attn, ff in self.selfs:
            x = x + attn(ln(x))[0]
            x = x + ff(x)
        return x

    def own_masked(self, ctx: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Latent i of ``forward`` over the team's tokens with agent i's replaced by its [MASK]
        token, for every i at once: ``ctx`` (N, n, m, dim) the team's tokens (agent positions
        added), ``mask`` (n, dim) agent j's [MASK] token -> (N, n, dim).

        The n inputs of a step differ only in one agent's tokens, so the keys and values are
        computed once for the team and once for the [MASK] tokens, and input i's scores take agent
        i's from the latter (same softmax, dropout and sums as ``forward``, per input); the last
        self-attention layer and its feed-forward run for latent i alone."""
        big, n, m, _ = ctx.shape
        cross, h, dh = self.cross, self.cross.h, self.cross.dh
        lat = self.latents.shape[0]
        q = cross.q(self.ln_q(self.latents)).unflatten(-1, (h, dh)).transpose(0, 1)  # (h, L, dh)
        k, v = cross.kv(self.ln_ctx(ctx)).flatten(1, 2).unflatten(-1, (2, h, dh)).unbind(2)
        km, vm = cross.kv(self.ln_ctx(mask)).unflatten(-1, (2, h, dh)).unbind(1)  # (n, h, dh)
        team = (q @ k.permute(0, 2, 3, 1)) * dh**-0.5  # (N, h, L, n*m)
        masked = (q @ km.permute(1, 2, 0)) * dh**-0.5  # (h, L, n)
        own = torch.eye(n, dtype=torch.bool, device=ctx.device)  # (input i, agent j)
        att = torch.where(
            own.view(1, 1, n, 1, n, 1),
            masked.view(1, h, 1, lat, n, 1),
            team.view(big, h, 1, lat, n, m),
        )  # (N, h, i, L, j, m)
        att = cross.drop(F.softmax(att.flatten(-2), -1))
        own_cols = own[:, :, None].expand(n, n, m).reshape(1, 1, n, 1, n * m)
        others = (~own_cols).view(torch.uint8)  # a product with uint8 is the cheapest fill
        y = (att * others).flatten(2, 3) @ v.transpose(1, 2)  # (N, h, i*L, dh)
        w = att.view(big, h, n, lat, n, m).diagonal(dim1=2, dim2=4).sum(-2)  # (N, h, L, i)
        y = (
            y.view(big, h, n, lat, dh)
            + w.transpose(-1, -2)[..., None] * vm.transpose(0, 1)[None, :, :, None]
        )
        y = y.permute(0, 2, 3, 1, 4).flatten(-2)  # (N, i, L, h*dh)
        x = self.latents + cross.drop(cross.out(y))
        x = x + self.cross_ff(x)
        for j, (ln, attn, ff) in enumerate(self.selfs):
            if j < len(self.selfs) - 1:
                x = x + attn(ln(x).flatten(0, 1))[0].view(x.shape)
                x = x + ff(x)
                continue
            mine = x.diagonal(dim1=1, dim2=2).transpose(1, 2)  # (N, i, dim): latent i of input i
            a = attn(ln(mine).reshape(big * n, 1, -1), ln(x).flatten(0, 1))[0]
            mine = mine + a.view(mine.shape)
            return mine + ff(mine)
        return x.diagonal(dim1=1, dim2=2).transpose(1, 2)


class VQTokenizer(nn.Module):
    """MARIE's VQ-VAE on vector observations: an MLP encoder to K codes, nearest-code look-up in a
    shared codebook, an MLP decoder; observations normalised per agent and feature first."""

    def __init__(
        self,
        n: int,
        obs_dim: int,
        codebook: int,
        tokens: int,
        code_dim: int,
        hidden: int,
        layers: int,
        decay: float = 0.99,
        dead_code: float = 0.0,
    ) -> None:
        super().__init__()
        self.k, self.code_dim, self.decay, self.dead_code = tokens, code_dim, decay, dead_code
        inner = [hidden] * (layers - 1)
        self.enc = mlp([obs_dim, *inner, tokens * code_dim])
        self.dec = mlp([tokens * code_dim, *inner, obs_dim])
        self.codebook = nn.Parameter(torch.randn(codebook, code_dim), requires_grad=decay == 0)
        self.register_buffer("mean", torch.zeros(n, obs_dim))
        self.register_buffer("std", torch.ones(n, obs_dim))
        self.register_buffer("ema_size", torch.ones(codebook))
        self.register_buffer("ema_sum", self.codebook.detach().clone())

    def latents(self, obs: torch.Tensor) -> torch.Tensor:
        """Raw (..., n, obs_dim) -> the encoder's (..., n, K, code_dim)."""
        return self.enc((obs - self.mean) / self.std).unflatten(-1, (self.k, self.code_dim))

    def nearest(self, z: torch.Tensor) -> torch.Tensor:
        book = self.codebook
        dist = (z * z).sum(-1, keepdim=True) - 2 * z @ book.T + (book * book).sum(-1)
        return dist.argmin(-1)

    def encode(self, obs: torch.Tensor) -> torch.Tensor:
        """Raw (..., n, obs_dim) observations -> (..., n, K) code ids."""
        return self.nearest(self.latents(obs))

    def decode(self, ids: torch.Tensor) -> torch.Tensor:
        """(..., n, K) code ids -> raw (..., n, obs_dim) observations."""
        return self.dec(self.codebook[ids].flatten(-2)) * self.std + self.mean

    def loss(self, obs: torch.Tensor, beta: float) -> tuple[torch.Tensor, torch.Tensor, dict]:
        """Eq. 7 on raw (B, S, n, obs_dim) -> (loss, ids, metrics): reconstruction (normalised
        space) + beta * commitment (+ the codebook term when it is not EMA-updated)."""
        mean, std = self.mean, self.std
        target = (obs - mean) / std
        z = self.enc(target).unflatten(-1, (self.k, self.code_dim))
        ids = self.nearest(z.detach())
        zq = self.codebook[ids]
        commit = F.mse_loss(z, zq.detach())
        book = F.mse_loss(zq, z.detach()) if self.decay == 0 else z.new_zeros(())
        st = z + (zq - z).detach()  # straight-through estimator
        recon = F.mse_loss(self.dec(st.flatten(-2)), target)
        if self.training and self.decay > 0:
            self._ema_update(z.detach().reshape(-1, self.code_dim), ids.reshape(-1))
        used = torch.unique(ids).numel() / self.codebook.shape[0]
        metrics = {"vq_recon": recon.item(), "vq_commit": commit.item(), "codebook_used": used}
        return recon + beta * commit + book, ids, metrics

    @torch.no_grad()
    def _ema_update(self, z: torch.Tensor, ids: torch.Tensor) -> None:
        """van den Oord et al.'s EMA codebook with Laplace smoothing of the cluster sizes."""
        onehot = F.one_hot(ids, self.codebook.shape[0]).type_as(z)
        self.ema_size.mul_(self.decay).add_(onehot.sum(0), alpha=1 - self.decay)
        self.ema_sum.mul_(self.decay).add_(onehot.T @ z, alpha=1 - self.decay)
        total = self.ema_size.sum()
        size = (self.ema_size + 1e-5) / (total + self.codebook.shape[0] * 1e-5) * total
        self.codebook.data.copy_(self.ema_sum / size[:, None])
        dead = self.ema_size < self.dead_code
        if dead.any():  # re-seed unused codes from this batch's encoder outputs
            pick = z[torch.randint(0, z.shape[0], (int(dead.sum()),), device=z.device)]
            self.codebook.data[dead] = pick
            self.ema_sum[dead] = pick * self.dead_code
            self.ema_size[dead] = self.dead_code
