"""r-MAPPO settings (torch-free so configs validate without torch)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from rmio.errors import ConfigError


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
    """Real steps between evaluations; each also logs the diagnostics (``diag_*`` in joint.jsonl:
    open-loop errors, imagined minus real return, saturated actions, the policy's spread)."""
    checkpoint_every: int = 10_000
    recipe: Literal["paper", "tuned"] = "paper"
    """Named settings of the keys below (rmio.config.RECIPES), under any key a config or --set
    gives: ``paper`` is Algorithm 1 as published and as rmio first ran it (fixed E_M, decoded
    observation at step 0, unbounded Gaussian, per-batch advantages, critic on decoded
    observations); ``tuned`` is Algorithm 1 with DreamerV3/MARIE-style settings. Both are RMIOv2
    (PPO in imagination only)."""
    wm_warmup_updates: int = 0
    """World-model updates on the random warm-up data before the first collection and policy
    update (MARIE trains its model about 2000 updates first); 0: none."""
    wm_ratio: float | None = None
    """World-model updates per real environment step (fractions carry over between iterations);
    null: a fixed ``wm_updates`` per iteration (the paper's E_M)."""
    real_start_obs: bool = False
    """Actors act on the real observation at step 0 of each imagined rollout (it is at hand)
    instead of its reconstruction from the posterior state."""
    bounded_actions: bool = False
    """Continuous actions: tanh-squashed mean inside the action box and a std in [std_min,
    std_max]; false: unbounded Gaussian, clipped at execution (a mean past the box gets no
    gradient through imagination)."""
    std_min: float = 0.1
    """Lower bound of the policy's std with ``bounded_actions`` (DreamerV3: 0.1)."""
    std_max: float = 1.0
    """Upper bound of the policy's std with ``bounded_actions`` (DreamerV3: 1.0)."""
    return_scaling: Literal["batch", "percentile"] = "batch"
    """Advantages: standardised per batch (MAPPO), or divided by max(1, EMA of the 5th-95th
    percentile range of the returns) as DreamerV3, which keeps small (model-noise) advantages
    small."""
    percentile_decay: float = 0.99
    """EMA decay of that range."""
    entropy_coef: float | None = None
    """Entropy bonus of PPO in imagination; null: ``policy.ppo.entropy_coef`` (MAPPO's 0.01, sized
    for standardised advantages). With percentile scaling and returns spread less than 1 the
    advantages stay in reward units, and DreamerV3 pairs that with 3e-4."""
    critic: Literal["obs", "latent"] = "obs"
    """What the imagination critic reads: all agents' decoded observations, or their world-model
    states (h, z) as DreamerV3 and MAMBA."""
    diag_windows: int = 64
    """Windows of the newest real episodes the diagnostics score at every evaluation."""


@dataclass
class PolicySection:
    """Everything the policy commands read: the `policy:` section of a scenario YAML."""

    ppo: PPOConfig = field(default_factory=PPOConfig)
    mappo: MAPPOConfig = field(default_factory=MAPPOConfig)
    imagination: ImaginationConfig = field(default_factory=ImaginationConfig)
    stats_steps: int = 2_000
    """Model-free MAPPO: random-policy steps (counted in the budget) that fix observation
    statistics."""


# Named settings of joint pre-training (policy.imagination.recipe), merged under whatever a config
# or --set gives. "paper" is Algorithm 1 as published and first run here (the dataclass
# defaults); "tuned" keeps Algorithm 1 (PPO in imagination only, so still RMIOv2) with settings
# from DreamerV3, MAMBA and MARIE: a world model trained well before the policy starts and about
# 0.5 updates (192 replayed transitions at 16 x 24) per real step, the real observation at step 0,
# bounded actions, percentile return scaling and a critic on latent states.
RECIPES: dict[str, dict[str, Any]] = {
    "paper": {
        "wm_warmup_updates": 0,
        "wm_ratio": None,
        "real_start_obs": False,
        "bounded_actions": False,
        "return_scaling": "batch",
        "critic": "obs",
    },
    "tuned": {
        "wm_warmup_updates": 1000,
        "wm_ratio": 0.5,
        "real_start_obs": True,
        "bounded_actions": True,
        "return_scaling": "percentile",
        "critic": "latent",
    },
}


def validate_imagination(im: Any, src: str) -> None:
    """Joint pre-training's ranges: one line naming the key."""
    key = "policy.imagination."
    for name, low in (
        ("env_steps", 1),
        ("collect_steps", 1),
        ("num_envs", 1),
        ("warmup_steps", 1),
        ("wm_updates", 0),
        ("policy_updates", 1),
        ("horizon", 1),
        ("starts", 1),
        ("context", 1),
        ("eval_every", 1),
        ("checkpoint_every", 1),
        ("wm_warmup_updates", 0),
        ("diag_windows", 1),
    ):
        if getattr(im, name) < low:
            raise ConfigError(f"{src}: {key}{name} must be >= {low}, got {getattr(im, name)}")
    if im.wm_ratio is not None and not im.wm_ratio > 0:
        raise ConfigError(
            f"{src}: {key}wm_ratio must be > 0 (or null for wm_updates per iteration), "
            f"got {im.wm_ratio}"
        )
    if not 0 < im.std_min < im.std_max:
        raise ConfigError(
            f"{src}: {key}std_min and std_max must satisfy 0 < std_min < std_max, got "
            f"{im.std_min} and {im.std_max}"
        )
    if im.entropy_coef is not None and not im.entropy_coef >= 0:
        raise ConfigError(f"{src}: {key}entropy_coef must be >= 0 or null, got {im.entropy_coef}")
    if not 0 <= im.percentile_decay < 1:
        raise ConfigError(
            f"{src}: {key}percentile_decay must be in [0, 1), got {im.percentile_decay}"
        )


def validate_ppo(ppo: PPOConfig, mappo: MAPPOConfig, src: str) -> None:
    """The PPO update's and MAPPO's ranges: one line naming the key (a zero clip or a negative
    entropy bonus would otherwise train silently into nonsense)."""
    key = "policy.ppo."
    positive = ("hidden", "actor_lr", "critic_lr", "clip", "epochs", "minibatches", "grad_clip")
    for name in positive:
        if not getattr(ppo, name) > 0:
            raise ConfigError(f"{src}: {key}{name} must be > 0, got {getattr(ppo, name)}")
    for name in ("entropy_coef", "value_coef"):
        if not getattr(ppo, name) >= 0:  # NaN too
            raise ConfigError(f"{src}: {key}{name} must be >= 0, got {getattr(ppo, name)}")
    for name, high in (("gamma", 1.0), ("gae_lambda", 1.0)):
        if not 0 <= getattr(ppo, name) <= high:
            raise ConfigError(f"{src}: {key}{name} must be in [0, 1], got {getattr(ppo, name)}")
    for name in ("env_steps", "rollout", "eval_every", "checkpoint_every"):
        if getattr(mappo, name) < 1:
            raise ConfigError(
                f"{src}: policy.mappo.{name} must be >= 1, got {getattr(mappo, name)}"
            )


def apply_recipe(raw: dict[str, Any], src: str) -> dict[str, Any]:
    """Merge the named recipe's settings under the config's own (RECIPES)."""
    policy = raw.get("policy", {})
    im = policy.get("imagination", {}) if isinstance(policy, dict) else None
    if not isinstance(im, dict):  # None or a wrong type: the typed validation names it
        return raw
    name = im.get("recipe", "paper")
    if name not in RECIPES:
        raise ConfigError(
            f"{src}: policy.imagination.recipe must be one of {', '.join(RECIPES)}, got {name!r}"
        )
    return {**raw, "policy": {**policy, "imagination": {**RECIPES[name], **im}}}
