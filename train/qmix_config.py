"""QMIX settings (torch-free so configs validate without torch): the `qmix:` section of a config.

Defaults are pymarl's (oxwhirl/pymarl, ``default.yaml`` and ``algs/qmix.yaml``), which is also what
the MMSA paper's QMIX baseline ran ("consistent with their official implementations"): RMSProp at
5e-4, 32 episodes per batch from a 5000-episode buffer, 1-step double-Q targets, hard target updates
every 200 episodes, epsilon 1 -> 0.05 over 50k steps, a 64-wide GRU agent and a 32-wide mixer with
two-layer 64-wide hypernetworks. pymarl2's recipe (Adam at 1e-3, TD(lambda 0.6), 128 episodes per
batch, epsilon over 100k steps) is the same section with other values.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from rmio.errors import ConfigError


@dataclass
class QMIXConfig:
    """Off-policy value factorisation on the real environment (`rmio train qmix`)."""

    env_steps: int = 2_000_000
    """Total real environment steps (summed over the parallel copies)."""
    buffer_size: int = 5_000
    """Replay capacity in episodes (the oldest are overwritten)."""
    batch_size: int = 32
    """Episodes per update."""
    update_every_episodes: int = 1
    """Finished episodes per update (pymarl's episode runner: 1; its parallel runner: the number
    of parallel environments); copies that finish together earn their updates together."""
    lr: float = 5e-4
    """Learning rate of agents and mixer (one optimiser)."""
    optimizer: Literal["rmsprop", "adam"] = "rmsprop"
    """pymarl's RMSProp, or pymarl2's Adam."""
    optim_alpha: float = 0.99
    """RMSProp smoothing constant."""
    optim_eps: float = 1e-5
    """RMSProp (or Adam) epsilon."""
    grad_clip: float = 10.0
    """Largest L2 norm of the gradient of agents and mixer together."""
    gamma: float = 0.99
    """Discount factor."""
    td_lambda: float = 0.0
    """0: pymarl's 1-step targets; > 0: pymarl2's TD(lambda) targets (0.6 there)."""
    double_q: bool = True
    """Target actions from the online network's argmax, valued by the target network."""
    target_update_episodes: int = 200
    """Episodes between hard copies of the online networks into the target networks."""
    epsilon_start: float = 1.0
    """Exploration rate at the first step."""
    epsilon_finish: float = 0.05
    """Exploration rate once annealed (evaluation is greedy)."""
    epsilon_anneal_steps: int = 50_000
    """Env steps over which epsilon falls linearly from start to finish."""
    rnn_hidden: int = 64
    """Width of the agent's GRU (and of its input layer)."""
    obs_last_action: bool = True
    """The agent's input holds its previous action (one-hot, zeros at an episode's start)."""
    obs_agent_id: bool = True
    """The agent's input holds its one-hot id (the network is shared by all agents)."""
    normalise_inputs: bool = True
    """Normalise the agent's observation and the mixer's state with per-feature statistics of
    policy.stats_steps random steps (counted in the budget), kept fixed. rmio's addition: pymarl
    feeds raw features, which SMAC already scales to about [-1, 1] but LBF does not (grid
    coordinates and levels up to ~8 made the mixer's initial Q_tot ~10 against returns <= 1)."""
    mixer: Literal["qmix", "vdn"] = "qmix"
    """qmix: the monotonic hypernetwork mixer on the global state; vdn: the sum."""
    mixing_embed: int = 32
    """Width of the mixer's hidden layer."""
    hypernet_layers: int = 2
    """1: linear hypernetworks; 2: one hidden layer of hypernet_embed units."""
    hypernet_embed: int = 64
    """Hidden width of two-layer hypernetworks."""
    eval_every: int = 10_000
    """Real environment steps between greedy evaluations."""
    checkpoint_every: int = 50_000
    """Real environment steps between checkpoints (networks, optimiser, replay, random streams)."""
    log_every: int = 2_000
    """Real environment steps between rows of qmix.jsonl/csv and TensorBoard (pymarl's 2000)."""


_POSITIVE = (
    "env_steps",
    "buffer_size",
    "batch_size",
    "update_every_episodes",
    "target_update_episodes",
    "rnn_hidden",
    "mixing_embed",
    "hypernet_embed",
    "eval_every",
    "checkpoint_every",
    "log_every",
)


def validate_qmix(q: QMIXConfig, src: str) -> None:
    """Ranges the types cannot say; each failure is one ConfigError line naming the key."""

    def bad(key: str, rule: str, value: Any) -> ConfigError:
        return ConfigError(f"{src}: qmix.{key} must be {rule}, got {value!r}")

    for key in _POSITIVE:
        if getattr(q, key) < 1:
            raise bad(key, ">= 1", getattr(q, key))
    if q.batch_size > q.buffer_size:
        raise bad("batch_size", f"<= qmix.buffer_size ({q.buffer_size})", q.batch_size)
    if q.epsilon_anneal_steps < 0:
        raise bad("epsilon_anneal_steps", ">= 0", q.epsilon_anneal_steps)
    for key in ("lr", "optim_eps", "grad_clip"):
        if not getattr(q, key) > 0:
            raise bad(key, "> 0", getattr(q, key))
    for key in ("gamma", "td_lambda", "epsilon_start", "epsilon_finish", "optim_alpha"):
        if not 0.0 <= getattr(q, key) <= 1.0:
            raise bad(key, "in [0, 1]", getattr(q, key))
    if q.epsilon_finish > q.epsilon_start:
        raise bad("epsilon_finish", f"<= qmix.epsilon_start ({q.epsilon_start})", q.epsilon_finish)
    if q.hypernet_layers not in (1, 2):
        raise bad("hypernet_layers", "1 or 2", q.hypernet_layers)
