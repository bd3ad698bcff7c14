"""Building blocks: MLPs, the agent-axis Transformer of the fusion modules, categorical latents."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def mlp(inp: int, hidden: int, out: int, layers: int = 2, norm: bool = True) -> nn.Sequential:
    """``layers`` hidden layers of Linear -> LayerNorm -> SiLU, then a linear head (DreamerV3
    style)."""
    mods: list[nn.Module] = []
    width = inp
    for _ in range(layers):
        mods += [
            nn.Linear(width, hidden),
            nn.LayerNorm(hidden) if norm else nn.Identity(),
            nn.SiLU(),
        ]
        width = hidden
    mods.append(nn.Linear(width, out))
    return nn.Sequential(*mods)


class AgentAttentionLayer(nn.Module):
    """One post-norm Transformer layer whose sequence axis is the agents (RMIOv2 Eq. 5).

    LayerNorm(e + [concat_m softmax(W_Q e (W_K E)^T / sqrt(d_k)) W_V E] W_O), followed by the usual
    position-wise feed-forward block. Written out by hand (rather than nn.MultiheadAttention) so the
    exported ONNX graph is plain MatMul/Softmax that every runtime supports.
    """

    def __init__(self, dim: int, heads: int, ff_mult: int = 2) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"fusion width {dim} is not divisible by {heads} heads")
        self.heads, self.d_k = heads, dim // heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.out = nn.Linear(dim, dim)  # W_O
        self.norm1 = nn.LayerNorm(dim)
        self.ff = nn.Sequential(
            nn.Linear(dim, ff_mult * dim), nn.SiLU(), nn.Linear(ff_mult * dim, dim)
        )
        self.norm2 = nn.LayerNorm(dim)

    def forward(self, e: torch.Tensor) -> torch.Tensor:
        """e: (..., n_agents, dim) -> same shape."""
        *lead, n, dim = e.shape
        q, k, v = self.qkv(e).reshape(*lead, n, 3, self.heads, self.d_k).unbind(dim=-3)
        q, k, v = (x.transpose(-2, -3) for x in (q, k, v))  # (..., heads, n, d_k)
        att = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(self.d_k), dim=-1)
        mixed = (att @ v).transpose(-2, -3).reshape(*lead, n, dim)
        e = self.norm1(e + self.out(mixed))
        return self.norm2(e + self.ff(e))


class AgentFusion(nn.Module):
    """Tokens of every agent -> fused embeddings that also carry the other agents' information.

    With ``enabled=False`` it is a per-agent MLP of the same width (the ablations of Table 1), so
    switching fusion off removes the cross-agent path and nothing else.
    """

    def __init__(self, inp: int, dim: int, layers: int, heads: int, enabled: bool = True) -> None:
        super().__init__()
        self.enabled = enabled
        self.embed = nn.Sequential(nn.Linear(inp, dim), nn.LayerNorm(dim), nn.SiLU())
        if enabled:
            self.blocks = nn.ModuleList(AgentAttentionLayer(dim, heads) for _ in range(layers))
        else:
            self.blocks = nn.ModuleList(
                nn.Sequential(nn.Linear(dim, dim), nn.LayerNorm(dim), nn.SiLU())
                for _ in range(layers)
            )

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        x = self.embed(tokens)
        for block in self.blocks:
            x = block(x)
        return x


class CorrectionBlock(nn.Module):
    """RMIO v1's correction block: every agent's token is an MLP over the concatenated joint
    observation (lost rows hold the prior's prediction), the observed flags and its own id; one
    self-attention layer mixes the tokens across agents, and a linear head adds a correction to
    each agent's own row. The head starts at zero, so an untrained block returns the prior's
    prediction unchanged.
    """

    def __init__(self, n_agents: int, obs_dim: int, hidden: int, dim: int, heads: int) -> None:
        super().__init__()
        self.n_agents, self.obs_dim = n_agents, obs_dim
        self.register_buffer("agent_ids", torch.eye(n_agents))
        self.embed = nn.Sequential(
            mlp(n_agents * (obs_dim + 1) + n_agents + obs_dim, hidden, dim, layers=2),
            nn.LayerNorm(dim),
            nn.SiLU(),
        )
        self.attention = AgentAttentionLayer(dim, heads)
        self.head = nn.Linear(dim, obs_dim)
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)

    def forward(self, joint: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """joint: (..., n, d) normalised observations with predictions in the lost rows; mask:
        (..., n) -> corrected rows (..., n, d)."""
        *lead, n, d = joint.shape
        flat = torch.cat([joint, mask.unsqueeze(-1)], -1).reshape(*lead, 1, n * (d + 1))
        ids = self.agent_ids.expand(*lead, n, n)
        tokens = self.embed(torch.cat([flat.expand(*lead, n, n * (d + 1)), ids, joint], -1))
        return joint + self.head(self.attention(tokens))


class Categorical:
    """C independent categoricals of K classes each, flattened to C*K features.

    Probabilities are mixed with 1% uniform (DreamerV3's unimix) so that no class has zero
    probability and the KL stays finite.
    """

    def __init__(
        self, logits: torch.Tensor, groups: int, classes: int, unimix: float = 0.01
    ) -> None:
        self.groups, self.classes = groups, classes
        logits = logits.reshape(*logits.shape[:-1], groups, classes)
        probs = torch.softmax(logits, dim=-1)
        if unimix > 0:
            probs = (1 - unimix) * probs + unimix / classes
        self.probs = probs
        self.logits = torch.log(probs)

    def sample(self) -> torch.Tensor:
        """Straight-through one-hot sample: the forward pass is discrete, gradients flow via
        probs."""
        u = torch.rand_like(self.probs).clamp_(1e-8, 1 - 1e-8)
        idx = (self.logits - torch.log(-torch.log(u))).argmax(dim=-1)  # Gumbel-max: an exact sample
        onehot = F.one_hot(idx, self.classes).to(self.probs.dtype)
        return self._flatten(onehot + self.probs - self.probs.detach())

    def mode(self) -> torch.Tensor:
        """Most likely class of each categorical: deterministic, used for reconstruction and
        export."""
        idx = self.probs.argmax(dim=-1)
        return self._flatten(F.one_hot(idx, self.classes).to(self.probs.dtype))

    def _flatten(self, x: torch.Tensor) -> torch.Tensor:
        return x.reshape(*x.shape[:-2], self.groups * self.classes)

    def kl(self, other: Categorical) -> torch.Tensor:
        """KL(self || other), summed over the categoricals: shape of the batch dims."""
        return (self.probs * (self.logits - other.logits)).sum(dim=(-1, -2))

    def detach(self) -> Categorical:
        out = Categorical.__new__(Categorical)
        out.groups, out.classes = self.groups, self.classes
        out.probs, out.logits = self.probs.detach(), self.logits.detach()
        return out
