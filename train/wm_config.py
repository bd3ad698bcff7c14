"""World-model and training settings (torch-free, so the CLI can validate configs without torch)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from rmio.train.smoothing import SmoothingConfig


@dataclass
class WorldModelConfig:
    """Architecture of the RMIOv2 world model (paper section 4.1)."""

    deter: int = 256
    """Width of each agent's deterministic GRU state h."""
    groups: int = 16
    """C: number of categorical latents per agent."""
    classes: int = 16
    """K: classes per categorical latent."""
    hidden: int = 256
    """Width of the MLPs (posterior, prior, predictors)."""
    fusion_dim: int = 128
    """Token width inside the observation- and action-fusion Transformers."""
    fusion_layers: int = 1
    fusion_heads: int = 4
    obs_fusion: bool = True
    """Cross-agent observation fusion (Eq. 2a, 4, 5); False is the Table 1 ablation."""
    action_fusion: bool = True
    """Cross-agent action fusion (Eq. 2b, 6); False is the Table 1 ablation."""
    action_fusion_layers: int | None = None
    """Layers of the action fusion alone (default ``fusion_layers``); MAMBA's transition attends
    over the agents with three."""
    lost_latent: Literal["posterior", "prior"] = "posterior"
    """Where a lost agent's latent z_t comes from: the posterior over its zeroed observation and,
    through observation fusion, the other agents' (RMIOv2), or the prior p(z_t | h_t) alone
    (MAMBA, and RMIO v1 before its correction)."""
    correction: bool = False
    """RMIO v1: fine-tuning trains a correction block over the joint observation with the world
    model frozen (`rmio.train.correction`) instead of masked fine-tuning of the world model."""
    agent_id: bool = True
    """Append a one-hot agent id to every token, since parameters are shared across agents."""
    mask_flag: bool = True
    """Append the observed/lost flag to observation tokens (a lost observation is zero; after
    normalisation a real observation can be zero too, so the flag removes the ambiguity)."""
    state_head: bool = True
    """Each agent also decodes the global state from its own latent (needed for GAWM's GCI)."""
    kl_beta: float = 1.0
    """beta of Eq. 9."""
    kl_balance: float = 0.8
    """Share of the KL that trains the prior (the rest regularises the posterior)."""
    free_nats: float = 1.0
    """KL below this many nats is not penalised."""
    unimix: float = 0.01
    state_loss_weight: float = 0.1


@dataclass
class WMTrainConfig:
    """Pre-training of the world model on real trajectories (Algorithm 1, lines 2-9)."""

    updates: int = 10_000
    """Gradient updates."""
    batch_size: int = 16
    seq_len: int = 32
    """L: length of the sequences sampled from the real buffer."""
    lr: float = 3e-4
    grad_clip: float = 100.0
    holdout_episodes: int = 4
    """Episodes collected separately (other seeds) to evaluate reconstruction on unseen data."""
    log_every: int = 50
    checkpoint_every: int = 500
    threads: int = 2
    """torch intra-op threads on the CPU."""
    compile: bool = False
    """Run the world model's filtering step under ``torch.compile`` in these updates (the same
    loss and gradients to float32 rounding). On the 2-core CPU it made an update 1.1-1.2x faster
    after a compilation of about 75 s per process (bench/results/world_model_paths.md)."""


@dataclass
class FinetuneConfig:
    """Masked fine-tuning (Algorithm 2, lines 20-27)."""

    p_mask: float = 0.5
    """Probability that an agent's observation is zeroed at a step, per agent and step."""
    updates: int = 5_000
    """Upper bound on fine-tuning updates."""
    lr: float = 1e-4
    patience: int = 1_000
    """Stop early when the smoothed joint loss has not improved by ``min_delta`` for this many
    updates."""
    min_delta: float = 0.002
    """Relative improvement of the smoothed loss that counts as progress."""
    mask_models: list[str] = field(default_factory=lambda: ["bernoulli"])
    """Loss models the fine-tuning masks come from, one drawn per training sequence: bernoulli
    (Algorithm 2, line 22), burst, blackout (train/masks.py)."""
    p_mask_range: list[float] | None = None
    """[low, high]: draw each sequence's mask rate from U[low, high] instead of the fixed p_mask,
    e.g. [0, 1] to cover the whole loss range, total loss included (rmio's, not the paper's)."""
    mean_burst_length: float = 4.0
    """Mean run of consecutive lost steps of the burst masks."""
    policy_weight: float = 0.0
    """lambda of rmio's policy-aware fine-tuning (train/policy_aware.py): the frozen actor's
    disagreement between true and reconstructed observations of lost agents, added to the loss. 0
    is the paper's objective."""
    policy: str | None = None
    """The actor of that term: a policy.pt or a bundle (default: run.data_policy)."""


@dataclass
class EvalConfig:
    """Reconstruction evaluation (`rmio eval reconstruction`)."""

    p_masks: list[float] = field(default_factory=lambda: [0.0, 0.125, 0.25, 0.375, 0.5, 0.75])
    seeds: int = 3
    """Independent mask draws per p_mask."""
    loss_model: str = "bernoulli"
    """Loss model of the test-time masks: bernoulli, burst or blackout (train/masks.py)."""
    mean_burst_length: float = 4.0
    """Mean run of consecutive lost steps of burst masks."""
    gci_reward_eps: float = 0.05
    gci_discount_eps: float = 0.05
    mode: Literal["window", "episode"] = "window"
    """How a filtering world model (RMIOv2's and its variants') reconstructs step t: ``window``
    replays steps t - history_window..t from the zero state, as every round of the deployed swarm
    does (runtime/history.py); ``episode`` filters the whole episode in one pass from step 0, which
    the swarm never runs (a model fine-tuned on short windows can drift over long filtering). A
    window model (MARIE's) always scores windows."""
    window_stride: int = 1
    """In ``window`` mode, every ``window_stride``-th step of an episode is reconstructed (one
    window each) and scored. 1 (every step) scores the same steps as the baselines and MARIE, so
    the hold-last warnings and tables compare like with like; a larger stride is faster
    (HalfCheetah's 4 held-out episodes: about 5 min on one thread at 1, 2 at 3) but the world
    models then average over fewer, differently weighted steps than the baselines."""


@dataclass
class WorldModelSection:
    """Everything the world-model commands read: one `world_model:` section of a scenario YAML."""

    model: WorldModelConfig = field(default_factory=WorldModelConfig)
    train: WMTrainConfig = field(default_factory=WMTrainConfig)
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)
    smoothing: SmoothingConfig = field(default_factory=SmoothingConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    history_window: int = 20
    """l of Algorithm 2: steps of history the deployed coordinator replays."""
