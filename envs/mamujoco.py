"""Multi-agent MuJoCo through ``gymnasium_robotics.mamujoco_v1`` (PettingZoo parallel API)."""

from __future__ import annotations

import contextlib
import io
import logging
import os
import re
import tempfile
import warnings

import numpy as np

from rmio.envs.base import EnvSpec, MultiAgentEnv, TimeStep
from rmio.envs.registry import FAMILIES, EnvConfig
from rmio.errors import ConfigError

log = logging.getLogger(__name__)

SCENARIOS = FAMILIES["mamujoco"].scenarios
DEFAULT_EPISODE_LIMIT = 1000
_SCENARIO_RE = re.compile(r"^(?P<robot>[A-Za-z0-9]+)-(?P<conf>\d+x\d+\w*)$")


def parse_scenario(scenario: str) -> tuple[str, str]:
    """``HalfCheetah-6x1`` -> (``HalfCheetah``, ``6x1``)."""
    m = _SCENARIO_RE.match(scenario)
    if not m:
        raise ConfigError(
            f"MaMuJoCo scenario '{scenario}' is not of the form <Robot>-<agent_conf>, e.g. "
            f"HalfCheetah-6x1 (known: {', '.join(SCENARIOS)})"
        )
    return m["robot"], m["conf"]


@contextlib.contextmanager
def _asset_lock(robot: str):
    """Serialise building ManySegment* robots across processes.

    gymnasium_robotics writes their generated XML to one fixed path inside its package, loads it and
    deletes it, so two processes building the same robot at once (vectorised copies, an env host
    next to a trainer) delete each other's file. A file lock around the build removes the race.
    """
    if not robot.startswith("ManySegment"):
        yield
        return
    try:
        import fcntl
    except ImportError:  # no fcntl (Windows): nothing to lock with
        yield
        return
    path = os.path.join(tempfile.gettempdir(), "rmio-mamujoco-assets.lock")
    with open(path, "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _import_mamujoco():
    """Import quietly: gymnasium_robotics prints a notice about unrelated Adroit tasks to stderr,
    and MuJoCo warns about a deprecated attribute in the bundled robot XML; both go to our debug
    log."""
    import mujoco

    mujoco.set_mju_user_warning(lambda msg: log.debug("mujoco: %s", msg))
    buf = io.StringIO()
    with contextlib.redirect_stderr(buf):
        from gymnasium_robotics import mamujoco_v1
    if buf.getvalue().strip():
        log.debug("gymnasium_robotics: %s", buf.getvalue().strip())
    return mamujoco_v1


class MaMuJoCoEnv(MultiAgentEnv):
    def __init__(self, cfg: EnvConfig) -> None:
        robot, conf = parse_scenario(cfg.scenario)
        mamujoco_v1 = _import_mamujoco()

        try:
            with warnings.catch_warnings(), _asset_lock(robot):
                warnings.simplefilter("ignore")
                self._env = mamujoco_v1.parallel_env(
                    robot, conf, agent_obsk=cfg.agent_obsk, **cfg.options
                )
        except Exception as exc:  # the library raises many kinds for a bad name or partition
            raise ConfigError(
                f"MaMuJoCo cannot build scenario '{cfg.scenario}' (robot '{robot}', agent_conf "
                f"'{conf}'): {exc}. Known scenarios: {', '.join(SCENARIOS)}"
            ) from None
        self._agents = list(self._env.possible_agents)
        spaces = [self._env.action_space(a) for a in self._agents]
        obs_sizes = tuple(int(np.prod(self._env.observation_space(a).shape)) for a in self._agents)
        act_sizes = tuple(int(np.prod(s.shape)) for s in spaces)
        width = max(act_sizes)
        low = np.full(width, np.inf)
        high = np.full(width, -np.inf)
        for s in spaces:
            low[: s.shape[0]] = np.minimum(low[: s.shape[0]], s.low)
            high[: s.shape[0]] = np.maximum(high[: s.shape[0]], s.high)
        limit = cfg.episode_limit or DEFAULT_EPISODE_LIMIT
        self._env.reset(seed=0)  # the global state is only defined after a reset
        state_dim = int(np.prod(np.shape(self._env.state())))
        self.spec = EnvSpec(
            name=f"mamujoco/{robot}-{conf}",
            n_agents=len(self._agents),
            obs_sizes=obs_sizes,
            state_dim=state_dim,
            action_kind="continuous",
            action_sizes=act_sizes,
            episode_limit=limit,
            action_low=tuple(float(x) for x in low),
            action_high=tuple(float(x) for x in high),
            agent_names=tuple(self._agents),
        )
        self._t = 0
        self._low, self._high = low.astype(np.float32), high.astype(np.float32)

    def _timestep(
        self,
        obs: dict,
        reward: float = 0.0,
        terminated: bool = False,
        truncated: bool = False,
        info: dict | None = None,
    ) -> TimeStep:
        return TimeStep(
            obs=self._pad_obs([obs[a] for a in self._agents]),
            state=np.asarray(self._env.state(), dtype=np.float32),
            reward=float(reward),
            terminated=terminated,
            truncated=truncated,
            info=info or {},
        )

    def reset(self, seed: int | None = None) -> TimeStep:
        self._t = 0
        obs, _ = self._env.reset(seed=seed)
        return self._timestep(obs)

    def step(self, actions: np.ndarray) -> TimeStep:
        actions = np.clip(self._check_actions(actions), self._low, self._high)
        act = {a: actions[i, : self.spec.action_sizes[i]] for i, a in enumerate(self._agents)}
        obs, rew, term, trunc, info = self._env.step(act)
        self._t += 1
        first = self._agents[0]
        terminated = bool(any(term.values()))
        truncated = bool(any(trunc.values())) or self._t >= self.spec.episode_limit
        return self._timestep(
            obs, rew[first], terminated, truncated and not terminated, info.get(first, {})
        )

    def close(self) -> None:
        self._env.close()


def make(cfg: EnvConfig) -> MultiAgentEnv:
    return MaMuJoCoEnv(cfg)
