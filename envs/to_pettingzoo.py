"""rmio's tasks, under any of its loss models, as PettingZoo ``ParallelEnv``s.

This lets users of PettingZoo-based trainers (BenchMARL, TorchRL, cleanrl, ...) train on the lossy
tasks rmio evaluates, and train policies that ``rmio bundle`` can then deploy on the swarm. A lost
observation is delivered exactly as the swarm's agents and the world model see it:

* the agent's observation is all zeros (RMIOv2 Definition 1, o~_t = diag(m_t) o_t);
* ``infos[agent]["observed"]`` is False (True when the observation is real), so a trainer can tell
  a lost observation from a real one that happens to be zero; with ``observed_feature=True`` the
  same flag is also appended to the observation as one extra feature (1.0 / 0.0), for trainers
  that never show infos to the policy.

Shapes follow rmio's common interface (rmio.envs.base), which is also the bundle contract
(docs/BUNDLE.md): every agent's observation is ``(obs_dim,)`` float32, zero-padded at the end
where an agent sees fewer features, continuous actions are ``(action_dim,)`` float32 within the
task's action box (padding entries ignored), and discrete actions are ints with the available
actions in ``infos[agent]["action_mask"]``. The team reward goes to every agent. Agents stay in
the episode until it ends, all together.
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np
from gymnasium import spaces
from pettingzoo import ParallelEnv

from rmio.envs.base import MultiAgentEnv, TimeStep
from rmio.envs.loss import LossConfig, LossyEnv, make_loss_model
from rmio.envs.registry import EnvConfig, make_env
from rmio.errors import ConfigError


class RmioParallelEnv(ParallelEnv):
    """One rmio task behind a loss model, as a PettingZoo parallel environment."""

    metadata: ClassVar[dict[str, Any]] = {"name": "rmio_v0", "render_modes": []}

    def __init__(
        self,
        env: MultiAgentEnv,
        loss: LossConfig | None = None,
        *,
        seed: int | None = None,
        observed_feature: bool = False,
    ) -> None:
        spec = env.spec
        loss = loss if loss is not None else LossConfig("none")
        self._env = LossyEnv(env, make_loss_model(loss, spec.n_agents, seed))
        self.spec = spec
        self.loss = loss
        self.observed_feature = observed_feature
        self.render_mode = None
        names = spec.agent_names or tuple(f"agent_{i}" for i in range(spec.n_agents))
        self.possible_agents = list(names)
        self.agents: list[str] = []
        width = spec.obs_dim + int(observed_feature)
        self._obs_space = spaces.Box(-np.inf, np.inf, (width,), np.float32)
        self.state_space = spaces.Box(-np.inf, np.inf, (spec.state_dim,), np.float32)
        if spec.discrete:
            self._act_space: spaces.Space = spaces.Discrete(spec.action_dim)
        else:
            self._act_space = spaces.Box(
                np.asarray(spec.action_low, np.float32),
                np.asarray(spec.action_high, np.float32),
                dtype=np.float32,
            )
        self._last: TimeStep | None = None

    def observation_space(self, agent: str) -> spaces.Space:
        """The same space for every agent: rows are padded to one width, like the bundle's."""
        return self._obs_space

    def action_space(self, agent: str) -> spaces.Space:
        """The same space for every agent (padded action box, or Discrete(action_dim))."""
        return self._act_space

    def _observations(self, ts: TimeStep) -> dict[str, np.ndarray]:
        obs = np.asarray(ts.obs, np.float32)
        if self.observed_feature:
            obs = np.concatenate([obs, ts.observed[:, None].astype(np.float32)], axis=1)
        return {a: obs[i].copy() for i, a in enumerate(self.possible_agents)}

    def _infos(self, ts: TimeStep) -> dict[str, dict[str, Any]]:
        infos: dict[str, dict[str, Any]] = {}
        for i, a in enumerate(self.possible_agents):
            info: dict[str, Any] = {"observed": bool(ts.observed[i])}
            if ts.avail_actions is not None:
                info["action_mask"] = np.asarray(ts.avail_actions[i], np.int8)
            infos[a] = info
        return infos

    def reset(
        self, seed: int | None = None, options: dict | None = None
    ) -> tuple[dict[str, np.ndarray], dict[str, dict[str, Any]]]:
        """Start an episode; a seed fixes both the task's start and the loss masks."""
        ts = self._env.reset(seed=seed)
        self._last = ts
        self.agents = list(self.possible_agents)
        return self._observations(ts), self._infos(ts)

    def step(self, actions: dict[str, Any]) -> tuple[dict, dict, dict, dict, dict]:
        """One joint step; every live agent must act."""
        if not self.agents:
            raise RuntimeError("step() called on a finished episode: call reset() first")
        missing = [a for a in self.agents if a not in actions]
        if missing:
            raise ValueError(f"{self.spec.name}: no action for {', '.join(missing)}")
        joint = self._joint_action(actions)
        ts = self._env.step(joint)
        self._last = ts
        names = self.possible_agents
        rewards = {a: float(ts.reward) for a in names}
        terms = {a: bool(ts.terminated) for a in names}
        truncs = {a: bool(ts.truncated) for a in names}
        obs, infos = self._observations(ts), self._infos(ts)
        if ts.done:
            self.agents = []
        return obs, rewards, terms, truncs, infos

    def _joint_action(self, actions: dict[str, Any]) -> np.ndarray:
        spec = self.spec
        if spec.discrete:
            return np.asarray([int(actions[a]) for a in self.possible_agents], np.int64)
        joint = np.zeros((spec.n_agents, spec.action_dim), np.float32)
        for i, a in enumerate(self.possible_agents):
            act = np.asarray(actions[a], np.float32).reshape(-1)
            joint[i, : act.shape[0]] = act[: spec.action_dim]
        return joint

    def state(self) -> np.ndarray:
        if self._last is None:
            raise RuntimeError("state() before reset()")
        return np.asarray(self._last.state, np.float32)

    def close(self) -> None:
        self._env.close()


def _loss_config(loss: LossConfig | dict[str, Any] | str | None) -> LossConfig:
    if loss is None or isinstance(loss, LossConfig):
        return loss or LossConfig("none")
    if isinstance(loss, str):
        return LossConfig(loss)  # type: ignore[arg-type]
    known = set(LossConfig.__dataclass_fields__)
    unknown = sorted(set(loss) - known)
    if unknown:
        raise ConfigError(f"unknown loss key(s) {', '.join(unknown)} (known: {', '.join(known)})")
    return LossConfig(**loss)


def parallel_env(
    scenario: str | EnvConfig,
    loss: LossConfig | dict[str, Any] | str | None = None,
    *,
    seed: int | None = None,
    observed_feature: bool = False,
    **env_options: Any,
) -> RmioParallelEnv:
    """An rmio task as a PettingZoo ``ParallelEnv``.

    ``scenario`` is ``family/scenario`` (``mamujoco/HalfCheetah-6x1``, ``lbf/Foraging-8x8-2p-2f-
    coop-v3``) or an :class:`EnvConfig`; ``loss`` a :class:`LossConfig`, a mapping of its fields
    (``{"model": "burst", "p_loss": 0.3, "mean_burst_length": 5}``) or a model name; the remaining
    keywords are EnvConfig fields (``episode_limit``, ``agent_obsk``, ``options``).
    """
    if isinstance(scenario, EnvConfig):
        cfg = scenario
    else:
        family, sep, name = scenario.partition("/")
        if not sep:
            raise ConfigError(f"scenario '{scenario}' is not of the form family/scenario")
        cfg = EnvConfig(family=family, scenario=name, **env_options)
    return RmioParallelEnv(
        make_env(cfg), _loss_config(loss), seed=seed, observed_feature=observed_feature
    )
