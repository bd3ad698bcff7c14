"""Level-based foraging (PyPI ``lbforaging`` 2.x, gymnasium API) behind the common interface.

Choices, and why:

* **Team reward = sum of the agents' rewards.** lbforaging pays each agent that helped load a
  food ``level * food / (sum of helpers' levels * total food spawned)``, so with the default
  ``normalize_reward=True`` the sum over agents and steps is the fraction of food collected (1.0
  when the field is cleared); the sum is the natural cooperative return.
* **State = the agents' observations concatenated** (``n_agents * obs_dim``). lbforaging has no
  global-state method; in the fully observed ids the concatenation holds the whole field, in
  the ``-2s`` (sight 2) ids it is the union of what the agents see.
* **Available actions** come from the env's own ``_valid_actions`` (player -> list of
  ``Action``), which it recomputes after every reset and step. lbforaging exposes it only through
  ``get_valid_actions()`` (the Cartesian product over agents, which grows as 6**n) or inside
  its namedtuple observations, not in the gymnasium observations, so we read the dict. An
  unavailable action is not an error: lbforaging itself turns it into NONE.
* **Termination.** lbforaging reports ``done`` both when the field is empty and when its step
  budget runs out, and never sets ``truncated``. We report ``terminated`` only for an empty
  field and ``truncated`` for the time limit, so value targets bootstrap past a time-out.
  ``cfg.episode_limit`` replaces the env's own limit (50 steps for every registered id).
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from rmio.envs.base import EnvSpec, MultiAgentEnv, TimeStep
from rmio.envs.registry import FAMILIES, EnvConfig
from rmio.errors import ConfigError, MissingExtraError

log = logging.getLogger(__name__)

SCENARIOS = FAMILIES["lbf"].scenarios


def _import_lbforaging() -> Any:
    """Import lbforaging (which registers the ``Foraging-*`` ids) and gymnasium, or explain."""
    try:
        import gymnasium
        import lbforaging  # noqa: F401 - registers the Foraging-* ids on import
    except ImportError:
        raise MissingExtraError("LBF", "lbf") from None
    return gymnasium


class LBFEnv(MultiAgentEnv):
    """One lbforaging ``ForagingEnv`` built with ``gymnasium.make``."""

    def __init__(self, cfg: EnvConfig) -> None:
        gymnasium = _import_lbforaging()
        scenario = cfg.scenario
        if not scenario.startswith("Foraging") or scenario not in gymnasium.registry:
            raise ConfigError(
                f"unknown LBF scenario '{scenario}' (known: {', '.join(SCENARIOS)}; any "
                "Foraging[-2s]-<n>x<n>-<p>p-<f>f[-coop]-v3 id that lbforaging registers works)"
            )
        options = dict(cfg.options)
        # gymnasium.make would treat max_episode_steps as its own TimeLimit wrapper, leaving the
        # env's internal 50-step limit in place; route it to the env's limit instead.
        own_limit = options.pop("max_episode_steps", None)
        # gymnasium's passive checker expects one float reward and warns on lbforaging's per-agent
        # list; ForagingEnv asserts its observations against its spaces on every step anyway.
        options.setdefault("disable_env_checker", True)
        try:
            self._env = gymnasium.make(scenario, **options)
        except (TypeError, ValueError, AssertionError) as exc:  # options ForagingEnv rejects
            raise ConfigError(
                f"LBF cannot build '{scenario}' with options {options}: {exc}"
            ) from None
        self._core = self._env.unwrapped
        limit = int(cfg.episode_limit or own_limit or self._core._max_episode_steps)
        if limit < 1:
            raise ConfigError(f"LBF episode_limit must be at least 1, got {limit}")
        self._core._max_episode_steps = limit

        n_agents = len(self._core.players)
        obs_sizes = tuple(int(np.prod(s.shape)) for s in self._env.observation_space.spaces)
        act_sizes = tuple(int(s.n) for s in self._env.action_space.spaces)
        self.spec = EnvSpec(
            name=f"lbf/{scenario}",
            n_agents=n_agents,
            obs_sizes=obs_sizes,
            state_dim=n_agents * max(obs_sizes),
            action_kind="discrete",
            action_sizes=act_sizes,
            episode_limit=limit,
            agent_names=tuple(f"agent_{i}" for i in range(n_agents)),
        )
        self._t = 0
        log.debug("built %s: obs sizes %s, episode limit %d", self.spec.name, obs_sizes, limit)

    def _avail(self) -> np.ndarray:
        avail = np.zeros((self.spec.n_agents, self.spec.action_dim), dtype=bool)
        valid = self._core._valid_actions
        for i, player in enumerate(self._core.players):
            for action in valid[player]:
                avail[i, action.value] = True
        return avail

    def _timestep(
        self,
        nobs: tuple,
        reward: float = 0.0,
        terminated: bool = False,
        truncated: bool = False,
        info: dict | None = None,
    ) -> TimeStep:
        obs = self._pad_obs(list(nobs))
        return TimeStep(
            obs=obs,
            state=obs.reshape(-1).copy(),
            reward=float(reward),
            terminated=terminated,
            truncated=truncated,
            avail_actions=self._avail(),
            info=info or {},
        )

    def reset(self, seed: int | None = None) -> TimeStep:
        self._t = 0
        # ForagingEnv.reset spawns players only on cells that no player occupies, and it still
        # sees the positions from the previous episode; forget them so that a seeded reset gives
        # the same start whatever came before (two resets with one seed differ otherwise).
        for player in self._core.players:
            player.position = None
        nobs, info = self._env.reset(seed=seed)
        return self._timestep(nobs, info=dict(info))

    def step(self, actions: np.ndarray) -> TimeStep:
        actions = self._check_actions(actions)
        sizes = np.asarray(self.spec.action_sizes)
        if (actions < 0).any() or (actions >= sizes).any():
            raise ValueError(
                f"{self.spec.name}: actions {actions.tolist()} outside [0, {sizes.tolist()})"
            )
        nobs, rewards, done, env_trunc, info = self._env.step(actions.tolist())
        self._t += 1
        # `done` means an empty field or a spent step budget; only the first is a true end
        terminated = bool(done) and int(self._core.field.sum()) == 0
        timed_out = bool(done) or bool(env_trunc) or self._t >= self.spec.episode_limit
        truncated = timed_out and not terminated
        return self._timestep(nobs, float(np.sum(rewards)), terminated, truncated, dict(info))

    def close(self) -> None:
        self._env.close()


def make(cfg: EnvConfig) -> MultiAgentEnv:
    """Build an LBF task; the import happens here so a missing extra fails only when used."""
    return LBFEnv(cfg)
