"""Any PettingZoo ``ParallelEnv`` as an rmio task: the ``pettingzoo`` family.

A scenario config names the environment's factory, with no edit of rmio::

    env:
      family: pettingzoo
      scenario: mypackage.envs:make_env     # module:callable, returns a ParallelEnv (or an AECEnv)
      episode_limit: 100
      options: {n_agents: 3}                 # keyword arguments of the factory

or a name that an installed package registers in the ``rmio.pettingzoo`` entry-point group
(``[project.entry-points."rmio.pettingzoo"] spread = "mypackage.envs:make_env"`` in its
pyproject), then ``scenario: spread``. The factory is imported in every process that steps the
task (vector env copies, the swarm's env host), so its module must be importable there.

How the environment is mapped onto rmio's common interface (rmio.envs.base), and why:

* **Agents** are ``possible_agents``, fixed for the whole episode, because the world model and
  the swarm have one row and one process per agent. An agent that leaves early gets zero
  observations, its actions are not sent, and (discrete) only action 0 is available to it.
* **Observations** are flattened ``Box`` spaces, or one-hot for ``Discrete``; a ``Dict`` space with
  ``observation`` and ``action_mask`` keys (PettingZoo's convention for masked actions) gives the
  observation and the available actions. Shorter observations are zero-padded.
* **Actions** are all ``Box`` (continuous, padded) or all ``Discrete``; a mix is refused.
  ``infos[agent]["action_mask"]`` is used when the observation carries no mask.
* **Team reward**: the mean of the agents' rewards (the shared reward itself when the env gives
  every agent the same one); ``options: {team_reward: sum}`` sums them instead. ``team_reward``
  is taken out of the options before the factory is called.
* **State**: ``env.state()`` when the environment implements it, otherwise the agents' padded
  observations concatenated.
* **Episode end**: when no agent is left, or after ``episode_limit`` steps (default: the env's
  ``max_cycles`` or ``max_steps`` attribute, else 1000). It is a termination when an agent
  terminated at the last step and none was truncated.
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Callable
from importlib.metadata import entry_points
from typing import Any

import numpy as np
from gymnasium import spaces

from rmio.envs.base import EnvSpec, MultiAgentEnv, TimeStep
from rmio.envs.registry import FAMILIES, EnvConfig
from rmio.errors import ConfigError

log = logging.getLogger(__name__)

SCENARIOS = FAMILIES["pettingzoo"].scenarios
ENTRY_POINT_GROUP = "rmio.pettingzoo"
DEFAULT_EPISODE_LIMIT = 1000


def registered() -> dict[str, str]:
    """Entry points of the ``rmio.pettingzoo`` group: name -> ``module:callable``."""
    return {ep.name: ep.value for ep in entry_points(group=ENTRY_POINT_GROUP)}


def resolve_factory(ref: str) -> Callable[..., Any]:
    """``module:callable`` (the callable may be dotted), or a registered entry-point name."""
    if ":" not in ref:
        found = registered()
        if ref not in found:
            names = ", ".join(sorted(found)) or "none installed"
            raise ConfigError(
                f"PettingZoo scenario '{ref}' is neither module:callable nor a name registered in "
                f"the '{ENTRY_POINT_GROUP}' entry-point group ({names})"
            )
        ref = found[ref]
    module_name, _, attr = ref.partition(":")
    try:
        target: Any = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigError(
            f"PettingZoo factory '{ref}': cannot import {module_name} ({exc})"
        ) from None
    for part in attr.split("."):
        target = getattr(target, part, None)
        if target is None:
            raise ConfigError(f"PettingZoo factory '{ref}': {module_name} has no '{attr}'")
    if not callable(target):
        raise ConfigError(f"PettingZoo factory '{ref}' is not callable")
    return target


def _as_parallel(env: Any, ref: str) -> Any:
    from pettingzoo import AECEnv
    from pettingzoo.utils.conversions import aec_to_parallel

    if isinstance(env, AECEnv):
        return aec_to_parallel(env)
    if not all(hasattr(env, a) for a in ("possible_agents", "reset", "step", "action_space")):
        raise ConfigError(
            f"PettingZoo factory '{ref}' returned {type(env).__name__}, not a ParallelEnv"
        )
    return env


def _obs_width(space: spaces.Space, ref: str, agent: str) -> int:
    if isinstance(space, spaces.Dict) and "observation" in space.spaces:
        return _obs_width(space["observation"], ref, agent)
    if isinstance(space, spaces.Box):
        return int(np.prod(space.shape))
    if isinstance(space, spaces.Discrete):
        return int(space.n)
    raise ConfigError(
        f"PettingZoo env '{ref}': observation space of {agent} is {space}; rmio takes Box, "
        "Discrete or Dict(observation, action_mask)"
    )


class PettingZooEnv(MultiAgentEnv):
    """One PettingZoo parallel environment behind rmio's interface (see the module docstring)."""

    def __init__(self, cfg: EnvConfig) -> None:
        options = dict(cfg.options)
        self._team_reward = options.pop("team_reward", "mean")
        if self._team_reward not in ("mean", "sum"):
            raise ConfigError(
                f"env.options.team_reward must be mean or sum, got {self._team_reward!r}"
            )
        factory = resolve_factory(cfg.scenario)
        try:
            env = factory(**options)
        except TypeError as exc:
            raise ConfigError(
                f"PettingZoo factory '{cfg.scenario}' refused {options}: {exc}"
            ) from None
        self._env = _as_parallel(env, cfg.scenario)
        self._agents = list(self._env.possible_agents)
        obs_spaces = [self._env.observation_space(a) for a in self._agents]
        act_spaces = [self._env.action_space(a) for a in self._agents]
        obs_sizes = tuple(
            _obs_width(s, cfg.scenario, a) for s, a in zip(obs_spaces, self._agents, strict=True)
        )
        self._obs_spaces = obs_spaces
        if all(isinstance(s, spaces.Discrete) for s in act_spaces):
            kind, act_sizes = "discrete", tuple(int(s.n) for s in act_spaces)
            low: tuple[float, ...] = ()
            high: tuple[float, ...] = ()
        elif all(isinstance(s, spaces.Box) for s in act_spaces):
            kind, act_sizes = "continuous", tuple(int(np.prod(s.shape)) for s in act_spaces)
            width = max(act_sizes)
            lo, hi = np.full(width, np.inf), np.full(width, -np.inf)
            for s in act_spaces:
                k = int(np.prod(s.shape))
                lo[:k] = np.minimum(lo[:k], np.asarray(s.low).reshape(-1))
                hi[:k] = np.maximum(hi[:k], np.asarray(s.high).reshape(-1))
            low, high = tuple(float(x) for x in lo), tuple(float(x) for x in hi)
        else:
            raise ConfigError(
                f"PettingZoo env '{cfg.scenario}': action spaces must be all Box or all Discrete, "
                f"got {sorted({type(s).__name__ for s in act_spaces})}"
            )
        self._act_spaces = act_spaces
        limit = cfg.episode_limit or next(
            (
                int(v)
                for v in (getattr(self._env, k, None) for k in ("max_cycles", "max_steps"))
                if isinstance(v, int) and v > 0
            ),
            DEFAULT_EPISODE_LIMIT,
        )
        self._env.reset(seed=0)  # state() is only defined after a reset
        self._has_state = True
        try:
            state_dim = int(np.prod(np.shape(self._env.state())))
        except (NotImplementedError, AttributeError):
            self._has_state = False
            state_dim = len(self._agents) * max(obs_sizes)
        self.spec = EnvSpec(
            name=f"pettingzoo/{cfg.scenario}",
            n_agents=len(self._agents),
            obs_sizes=obs_sizes,
            state_dim=state_dim,
            action_kind=kind,
            action_sizes=act_sizes,
            episode_limit=int(limit),
            action_low=low,
            action_high=high,
            agent_names=tuple(str(a) for a in self._agents),
        )
        self._t = 0
        self._live: set[str] = set()
        log.debug("built %s: obs sizes %s, actions %s", self.spec.name, obs_sizes, act_sizes)

    def _flat_obs(self, i: int, value: Any) -> tuple[np.ndarray, np.ndarray | None]:
        space = self._obs_spaces[i]
        mask = None
        if isinstance(space, spaces.Dict):
            mask = np.asarray(value.get("action_mask"), bool) if "action_mask" in value else None
            space, value = space["observation"], value["observation"]
        if isinstance(space, spaces.Discrete):
            out = np.zeros(int(space.n), np.float32)
            out[int(value) - int(space.start)] = 1.0
            return out, mask
        return np.asarray(value, np.float32).reshape(-1), mask

    def _timestep(self, obs: dict, infos: dict, **kw: Any) -> TimeStep:
        spec = self.spec
        rows: list[np.ndarray] = []
        avail = np.zeros((spec.n_agents, spec.action_dim), bool) if spec.discrete else None
        for i, a in enumerate(self._agents):
            row, mask = self._flat_obs(i, obs[a]) if a in obs else (np.zeros(0, np.float32), None)
            if avail is not None and a in self._live:
                info_mask = (infos.get(a) or {}).get("action_mask")
                mask = mask if mask is not None else info_mask
                n = spec.action_sizes[i]
                avail[i, :n] = True if mask is None else np.asarray(mask, bool).reshape(-1)[:n]
            elif avail is not None:
                avail[i, 0] = True
            rows.append(row)
        padded = self._pad_obs(rows)
        state = (
            np.asarray(self._env.state(), np.float32).reshape(-1)
            if self._has_state
            else padded.reshape(-1).copy()
        )
        return TimeStep(obs=padded, state=state, avail_actions=avail, **kw)

    def reset(self, seed: int | None = None) -> TimeStep:
        self._t = 0
        obs, infos = self._env.reset(seed=seed)
        self._live = set(self._env.agents)
        return self._timestep(obs, infos or {})

    def step(self, actions: np.ndarray) -> TimeStep:
        actions = self._check_actions(actions)
        spec = self.spec
        act: dict[str, Any] = {}
        for i, a in enumerate(self._agents):
            if a not in self._live:
                continue
            if spec.discrete:
                if not 0 <= int(actions[i]) < spec.action_sizes[i]:
                    raise ValueError(f"{spec.name}: action {int(actions[i])} of {a} out of range")
                act[a] = int(actions[i]) + int(self._act_spaces[i].start)
            else:
                space = self._act_spaces[i]
                row = actions[i, : spec.action_sizes[i]].reshape(space.shape)
                act[a] = np.clip(row, space.low, space.high).astype(space.dtype)
        obs, rew, term, trunc, infos = self._env.step(act)
        self._t += 1
        values = [float(r) for r in rew.values()]
        reward = float(np.sum(values) if self._team_reward == "sum" else np.mean(values or [0.0]))
        self._live = set(self._env.agents)
        ended = not self._live
        terminated = ended and any(term.values()) and not any(trunc.values())
        truncated = (ended or self._t >= spec.episode_limit) and not terminated
        return self._timestep(
            obs, infos or {}, reward=reward, terminated=terminated, truncated=truncated
        )

    def close(self) -> None:
        self._env.close()


def make(cfg: EnvConfig) -> MultiAgentEnv:
    return PettingZooEnv(cfg)
