"""r-MAPPO settings (torch-free so configs validate without torch)."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class PPOConfig:
    """Policy optimisation (RMIOv2 Eq. 13-14, MAPPO)."""

    hidden: int = 128
    """Width of the actor and critic MLPs."""
    actor_lr: float = 5e-4
    critic_lr: float = 5e-4
    gamma: float = 0.99
    gae_lambda: float = 0.95
    clip: float = 0.2
    """epsilon of the clipped surrogate (Eq. 13)."""
    epochs: int = 5
    """Passes over each batch of rollouts."""
    minibatches: int = 4
    entropy_coef: float = 0.01
    value_coef: float = 1.0
    grad_clip: float = 10.0
    value_norm: bool = True
    """Normalise value targets with running statistics (MAPPO's ValueNorm)."""
    log_std_init: float = -0.5
    """Continuous actions: initial log standard deviation of the Gaussian policy."""


@dataclass
class MAPPOConfig:
    """Model-free MAPPO on the real environment (`rmio train mappo`)."""

    env_steps: int = 200_000
    """Total real environment steps (summed over the parallel copies)."""
    rollout: int = 100
    """Steps per copy between updates."""
    eval_every: int = 20_000
    """Real environment steps between deterministic evaluations."""
    checkpoint_every: int = 20_000


@dataclass
class ImaginationConfig:
    """Joint pre-training (Algorithm 1): world-model updates and policy updates in imagination."""

    env_steps: int = 100_000
    """Total real environment steps (the sample-efficiency budget)."""
    collect_steps: int = 1_000
    """Real steps collected with the current policy per iteration (line 1); whole episodes are
    finished."""
    num_envs: int = 1
    """Parallel real environments while collecting: one keeps an iteration at about one episode."""
    warmup_steps: int = 5_000
    """Random-policy steps before the first update."""
    wm_updates: int = 100
    """E_M: world-model updates per iteration (lines 2-9)."""
    policy_updates: int = 4
    """E_pi: imagination rounds per iteration (lines 10-19)."""
    horizon: int = 15
    """H: imagined steps from each real start observation."""
    starts: int = 256
    """Start observations sampled from the real buffer per imagination round."""
    context: int = 8
    """Real steps filtered before each start, so h and z carry history (as at deployment)."""
    eval_every: int = 10_000
    checkpoint_every: int = 10_000


@dataclass
class PolicySection:
    """Everything the policy commands read: the `policy:` section of a scenario YAML."""

    ppo: PPOConfig = field(default_factory=PPOConfig)
    mappo: MAPPOConfig = field(default_factory=MAPPOConfig)
    imagination: ImaginationConfig = field(default_factory=ImaginationConfig)
    stats_steps: int = 2_000
    """Model-free MAPPO: random-policy steps (counted in the budget) that fix observation
    statistics."""
