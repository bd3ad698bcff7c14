"""One interface for every multi-agent task rmio trains on or deploys to.

Every adapter turns its simulator into the same shape of data so that the world model, the
policies, the loss models and the swarm's env host never special-case a task:

* observations are one float32 array ``(n_agents, obs_dim)``; agents whose observation is shorter
  than ``obs_dim`` are zero-padded at the end and ``spec.obs_feature_mask`` says which features are
  real (MaMuJoCo agents see 8 or 9 numbers in HalfCheetah 6x1, for example);
* actions are one array: ``(n_agents, action_dim)`` float32 for continuous tasks (padded the same
  way, padding ignored), ``(n_agents,)`` int64 for discrete tasks;
* the reward is one team reward (a float), because every task here is cooperative;
* discrete tasks also give ``avail_actions`` ``(n_agents, n_actions)`` bool.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

ActionKind = Literal["discrete", "continuous"]


@dataclass(frozen=True)
class EnvSpec:
    """Static description of a task; it is written into trajectory files and model bundles."""

    name: str
    """Registry id, e.g. ``mamujoco/HalfCheetah-6x1``."""
    n_agents: int
    obs_sizes: tuple[int, ...]
    """Number of real observation features of each agent, before padding."""
    state_dim: int
    action_kind: ActionKind
    action_sizes: tuple[int, ...]
    """Continuous: action dimensions of each agent. Discrete: number of actions of each agent."""
    episode_limit: int
    """Episodes are truncated after this many steps."""
    action_low: tuple[float, ...] = ()
    """Continuous only: lower bound per padded action feature (same for every agent)."""
    action_high: tuple[float, ...] = ()
    agent_names: tuple[str, ...] = ()

    @property
    def obs_dim(self) -> int:
        return max(self.obs_sizes)

    @property
    def action_dim(self) -> int:
        """Continuous: padded action width. Discrete: number of actions (logits width)."""
        return max(self.action_sizes)

    @property
    def discrete(self) -> bool:
        return self.action_kind == "discrete"

    @property
    def obs_feature_mask(self) -> np.ndarray:
        """``(n_agents, obs_dim)`` bool, True where a feature is real rather than padding."""
        return np.arange(self.obs_dim)[None, :] < np.asarray(self.obs_sizes)[:, None]

    @property
    def action_feature_mask(self) -> np.ndarray:
        """``(n_agents, action_dim)`` bool, True where an action entry exists for that agent."""
        return np.arange(self.action_dim)[None, :] < np.asarray(self.action_sizes)[:, None]

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "n_agents": self.n_agents,
            "obs_sizes": list(self.obs_sizes),
            "state_dim": self.state_dim,
            "action_kind": self.action_kind,
            "action_sizes": list(self.action_sizes),
            "episode_limit": self.episode_limit,
            "action_low": list(self.action_low),
            "action_high": list(self.action_high),
            "agent_names": list(self.agent_names),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> EnvSpec:
        return cls(
            name=str(data["name"]),
            n_agents=int(data["n_agents"]),
            obs_sizes=tuple(int(x) for x in data["obs_sizes"]),
            state_dim=int(data["state_dim"]),
            action_kind=data["action_kind"],
            action_sizes=tuple(int(x) for x in data["action_sizes"]),
            episode_limit=int(data["episode_limit"]),
            action_low=tuple(float(x) for x in data.get("action_low", ())),
            action_high=tuple(float(x) for x in data.get("action_high", ())),
            agent_names=tuple(str(x) for x in data.get("agent_names", ())),
        )

    def executed_actions(self, actions: np.ndarray) -> np.ndarray:
        """Continuous joint actions as the environment applies them (clipped, padding zeroed)."""
        if self.discrete:
            return np.asarray(actions)
        clipped = np.clip(
            actions,
            np.asarray(self.action_low, np.float32),
            np.asarray(self.action_high, np.float32),
        )
        return (clipped * self.action_feature_mask).astype(np.float32)

    def random_actions(
        self, rng: np.random.Generator, avail: np.ndarray | None = None
    ) -> np.ndarray:
        """Uniform random joint action; respects ``avail`` for discrete tasks."""
        if self.discrete:
            if avail is None:
                return rng.integers(0, np.asarray(self.action_sizes)).astype(np.int64)
            # sample uniformly among the available actions of each agent
            scores = rng.random(avail.shape) * avail
            return scores.argmax(axis=-1).astype(np.int64)
        low = np.asarray(self.action_low, dtype=np.float32)
        high = np.asarray(self.action_high, dtype=np.float32)
        acts = rng.uniform(low, high, size=(self.n_agents, self.action_dim)).astype(np.float32)
        return acts * self.action_feature_mask


@dataclass
class TimeStep:
    """What an environment returns after ``reset`` or ``step``.

    ``reward``/``terminated``/``truncated`` describe the transition that led to ``obs`` (zero and
    False after ``reset``). ``terminated`` means a true end (death, win); ``truncated`` a time
    limit.
    """

    obs: np.ndarray
    state: np.ndarray
    reward: float = 0.0
    terminated: bool = False
    truncated: bool = False
    avail_actions: np.ndarray | None = None
    info: dict[str, Any] = field(default_factory=dict)
    observed: np.ndarray | None = None
    """(n_agents,) bool under a loss model (see rmio.envs.loss): True where ``obs`` is real."""
    true_obs: np.ndarray | None = None
    """Under a loss model: the observations before dropping, for training targets and scoring."""

    @property
    def done(self) -> bool:
        return self.terminated or self.truncated


class MultiAgentEnv(abc.ABC):
    """A cooperative multi-agent task behind the common interface (see the module docstring)."""

    spec: EnvSpec

    @abc.abstractmethod
    def reset(self, seed: int | None = None) -> TimeStep: ...

    @abc.abstractmethod
    def step(self, actions: np.ndarray) -> TimeStep: ...

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release simulator resources."""

    def __enter__(self) -> MultiAgentEnv:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # Helpers shared by adapters -------------------------------------------------------------

    def _pad_obs(self, per_agent: list[np.ndarray]) -> np.ndarray:
        out = np.zeros((self.spec.n_agents, self.spec.obs_dim), dtype=np.float32)
        for i, o in enumerate(per_agent):
            o = np.asarray(o, dtype=np.float32).reshape(-1)
            out[i, : o.shape[0]] = o
        return out

    def _check_actions(self, actions: np.ndarray) -> np.ndarray:
        """Validate a joint action's shape and dtype; a wrong one is a programming error."""
        spec = self.spec
        actions = np.asarray(actions)
        if spec.discrete:
            if actions.shape != (spec.n_agents,):
                raise ValueError(
                    f"{spec.name}: expected actions of shape ({spec.n_agents},), got "
                    f"{actions.shape}"
                )
            return actions.astype(np.int64)
        if actions.shape != (spec.n_agents, spec.action_dim):
            raise ValueError(
                f"{spec.name}: expected actions of shape ({spec.n_agents}, {spec.action_dim}), got "
                f"{actions.shape}"
            )
        return actions.astype(np.float32)
