"""MARIE's world-model settings (`--algo marie`; torch-free, so the CLI validates without torch).

MARIE (Zhang et al. 2024, "Decentralized Transformers with Centralized Aggregation are
Sample-Efficient Multi-Agent World Models") tokenises each agent's observation with a VQ-VAE, models
each agent's token sequence with a shared causal Transformer and aggregates the team with a
Perceiver.
The sizes come in named presets: ``faithful`` is the paper's Tables 2-4, ``cpu`` the size the swarm
can run within a step on a 2-core machine (bench/results/marie_spike.md), ``tiny`` for tests.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from rmio.errors import ConfigError

MarieSizes = dict[str, int]
MARIE_PRESETS: dict[str, MarieSizes] = {
    # Tables 2 (VQ-VAE), 3 (Transformer) and 4 (Perceiver) of the paper.
    "faithful": {
        "codebook": 512,
        "tokens": 16,
        "code_dim": 128,
        "vq_hidden": 512,
        "vq_layers": 3,
        "dim": 256,
        "layers": 10,
        "heads": 4,
        "perc_heads": 8,
        "perc_dim_head": 64,
        "perc_layers": 2,
    },
    # The spike's CPU size: one all-lost round of 6 agents at l = 20 in 19 ms p50 / 33 ms p99.
    "cpu": {
        "codebook": 256,
        "tokens": 8,
        "code_dim": 32,
        "vq_hidden": 128,
        "vq_layers": 3,
        "dim": 64,
        "layers": 2,
        "heads": 4,
        "perc_heads": 4,
        "perc_dim_head": 16,
        "perc_layers": 1,
    },
    "tiny": {
        "codebook": 16,
        "tokens": 3,
        "code_dim": 4,
        "vq_hidden": 16,
        "vq_layers": 2,
        "dim": 16,
        "layers": 1,
        "heads": 2,
        "perc_heads": 2,
        "perc_dim_head": 8,
        "perc_layers": 1,
    },
}


@dataclass
class MarieConfig:
    """`--algo marie` (``marie.enabled``): MARIE's world model instead of RMIOv2's, trained by
    `rmio train world-model` on the same collected data with ``world_model.train``'s updates,
    batch size, learning rate, clipping, logging, checkpointing and threads."""

    enabled: bool = False
    """Train MARIE's world model (set by ``--algo marie``)."""
    preset: Literal["faithful", "cpu", "tiny"] = "cpu"
    """Model sizes (MARIE_PRESETS): the paper's (faithful), the swarm's CPU size (cpu), tests'."""
    seq_len: int = 20
    """Steps per training sequence, and the size of the learned position table: the longest
    window the model can read (at least world_model.history_window, which the swarm replays)."""
    context_token: bool = True
    """rmio's masked-token extension, not the paper's: each step's block starts with c_s, a second
    Perceiver over the team's observation tokens of that step with the agent's own (and lost
    agents') tokens as [MASK], so a lost agent's step can be reconstructed from the others'
    current observations. False is MARIE's block [x, a, e] as published."""
    action_bins: int = 256
    """Continuous actions: bins per action dimension over the action box (Appendix E.1)."""
    commitment: float = 10.0
    """beta of Eq. 7: weight of the commitment loss ||sg[z_q] - E(o)||^2 (Table 2)."""
    codebook_decay: float = 0.99
    """Codebook updated by exponential moving averages with this decay (the paper's remedy for
    codebook collapse); 0 trains it by the codebook loss ||sg[E(o)] - z_q||^2 of Eq. 7 instead."""
    dead_code: float = 2.0
    """A code whose EMA cluster size falls under this is re-seeded from a random encoder output of
    the batch (vector-quantize-pytorch's threshold_ema_dead_code, the EMA library the paper cites):
    without it the CPU preset's codebook collapsed to one code in 20 updates. 0 disables."""
    dropout: float = 0.1
    """Embedding, attention and residual dropout of the Transformer and Perceivers (Tables 3-4)."""
    weight_decay: float = 0.01
    """AdamW weight decay of the Transformer (Table 3)."""
    reward_weight: float = 1.0
    """Weight of the smooth-L1 reward loss (Eq. 6 weighs every term 1)."""
    avail_weight: float = 1.0
    """Weight of the available-action head's loss (SMAC-like tasks, Section 5.1)."""

    def sizes(self) -> MarieSizes:
        """The preset's model sizes."""
        return dict(MARIE_PRESETS[self.preset])


def validate_marie(m: MarieConfig, history_window: int, src: str) -> None:
    """Ranges and names; a bad value is one ConfigError line naming the key."""
    if m.preset not in MARIE_PRESETS:
        raise ConfigError(
            f"{src}: marie.preset must be one of {', '.join(MARIE_PRESETS)}, got '{m.preset}'"
        )
    checks: list[tuple[str, Any, bool, str]] = [
        ("seq_len", m.seq_len, m.seq_len >= 2, ">= 2"),
        ("action_bins", m.action_bins, m.action_bins >= 2, ">= 2"),
        ("commitment", m.commitment, m.commitment >= 0, ">= 0"),
        ("codebook_decay", m.codebook_decay, 0.0 <= m.codebook_decay < 1.0, "in [0, 1)"),
        ("dead_code", m.dead_code, m.dead_code >= 0, ">= 0"),
        ("dropout", m.dropout, 0.0 <= m.dropout < 1.0, "in [0, 1)"),
        ("weight_decay", m.weight_decay, m.weight_decay >= 0, ">= 0"),
        ("reward_weight", m.reward_weight, m.reward_weight >= 0, ">= 0"),
        ("avail_weight", m.avail_weight, m.avail_weight >= 0, ">= 0"),
    ]
    for key, value, ok, want in checks:
        if not ok:
            raise ConfigError(f"{src}: marie.{key} must be {want}, got {value}")
    if m.enabled and m.seq_len < history_window:
        raise ConfigError(
            f"{src}: marie.seq_len ({m.seq_len}) must be >= world_model.history_window "
            f"({history_window}): the model cannot read a longer window than it was trained on"
        )
