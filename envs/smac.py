"""StarCraft II SMAC (github.com/oxwhirl/smac) behind the common interface.

SMAC cannot be a pip extra: the package is not on PyPI (PyPI's ``smac`` is SMAC3, a
hyperparameter optimiser that shares the import name), and it drives the StarCraft II binary,
which the user downloads from Blizzard. ``make`` therefore checks, in order, that the right
package is importable, that the map exists, and that the game and the SMAC maps are on disk, and
says in one line what to install; SMAX (family ``smax``) is the StarCraft-free alternative.

SMAC already speaks the shape this interface wants: ``get_obs`` (one vector per agent),
``get_state`` (a real global state), ``get_avail_actions`` and a team reward from ``step``.
Mapping choices:

* ``info["won"]`` is SMAC's ``battle_won``; ``dead_allies``/``dead_enemies`` pass through.
* A time-out is ``truncated``, not ``terminated``: SMAC flags it with ``info["episode_limit"]``
  only when built with ``continuing_episode=True``, so we also count its ``timeouts`` counter.
  A step on which SMAC had to restart a crashed game (it returns ``0, True, {}``) is truncated
  too, with ``info["restarted"] = True``: nothing ended in the battle.
* ``cfg.episode_limit`` replaces the map's limit inside SMAC, so SMAC itself ends the episode.
* Seeding: SC2 takes its seed when the game is launched (first ``reset``); later seeds cannot be
  applied to the running game and are ignored (SC2 is not fully deterministic anyway).
"""

from __future__ import annotations

import importlib.util
import logging
import os
import sys
from pathlib import Path
from typing import Any

import numpy as np

from rmio.envs.base import EnvSpec, MultiAgentEnv, TimeStep
from rmio.envs.registry import FAMILIES, EnvConfig
from rmio.errors import ConfigError, RmioError

log = logging.getLogger(__name__)

SCENARIOS = FAMILIES["smac"].scenarios

_INSTALL = (
    "pip install git+https://github.com/oxwhirl/smac.git, plus the StarCraft II binary "
    "(e.g. the Linux package 4.10 from Blizzard's s2client-proto page, "
    "https://github.com/Blizzard/s2client-proto#downloads, unzipped to ~/StarCraftII or pointed "
    "to by SC2PATH) and the SMAC maps in $SC2PATH/Maps/SMAC_Maps "
    "(https://github.com/oxwhirl/smac/releases)"
)
_SMAX = "SMAX (pip install -e '.[smax]', family 'smax') is a StarCraft-free alternative"


def _import_starcraft2env() -> Any:
    """Return ``smac.env.StarCraft2Env``, or raise a one-line RmioError saying what to install."""
    if importlib.util.find_spec("smac") is None:
        raise RmioError(
            f"SMAC needs the StarCraft II based package from oxwhirl: {_INSTALL}. {_SMAX}."
        )
    try:
        from smac.env import StarCraft2Env
    except ModuleNotFoundError as exc:
        missing = exc.name or ""
        if missing != "smac" and not missing.startswith("smac."):
            # the oxwhirl package is there but one of its dependencies (pysc2, ...) is not
            raise RmioError(
                f"the StarCraft II SMAC package is installed but its dependency '{missing}' is "
                f"missing ({exc}); reinstall it: {_INSTALL}. {_SMAX}."
            ) from None
        raise RmioError(_smac3_message()) from None
    except ImportError:  # `smac.env` exists but has no StarCraft2Env
        raise RmioError(_smac3_message()) from None
    return StarCraft2Env


def _smac3_message() -> str:
    return (
        "the installed 'smac' package is PyPI's SMAC3 (hyperparameter optimisation), not the "
        f"StarCraft II benchmark: pip uninstall smac, then {_INSTALL}. {_SMAX}."
    )


def _map_registry() -> dict[str, Any] | None:
    """SMAC's own map table (map name -> parameters), or None if this version hides it."""
    try:
        from smac.env.starcraft2.maps import smac_maps
    except ImportError:
        return None
    return dict(smac_maps.get_smac_map_registry())


def sc2_path() -> Path:
    """Where pysc2 looks for StarCraft II: SC2PATH, else the platform's default folder."""
    configured = os.environ.get("SC2PATH")
    if configured:
        return Path(configured).expanduser()
    if sys.platform == "darwin":
        return Path("/Applications/StarCraft II")
    if sys.platform == "win32":
        return Path("C:/Program Files (x86)/StarCraft II")
    return Path("~/StarCraftII").expanduser()


def _check_game_files(map_name: str) -> None:
    """Fail early, in one line, when SC2 or the map is missing (pysc2 fails at the first reset)."""
    root = sc2_path()
    where = "SC2PATH" if os.environ.get("SC2PATH") else "the default location (SC2PATH unset)"
    if not (root / "Versions").is_dir():
        raise RmioError(
            f"StarCraft II is not installed at {root} ({where}): download the Linux package "
            "4.10 from Blizzard's s2client-proto page "
            "(https://github.com/Blizzard/s2client-proto#downloads), unzip it to ~/StarCraftII "
            f"or set SC2PATH to its folder, and put the SMAC maps in $SC2PATH/Maps/SMAC_Maps. "
            f"{_SMAX}."
        )
    map_file = root / "Maps" / "SMAC_Maps" / f"{map_name}.SC2Map"
    if not map_file.is_file():
        raise RmioError(
            f"SMAC map file {map_file} is missing: unzip SMAC_Maps.zip from "
            f"https://github.com/oxwhirl/smac/releases into {root / 'Maps'}. {_SMAX}."
        )


def _parse_absl_flags() -> None:
    """pysc2 reads absl flags when it launches SC2 and fails if nobody parsed them."""
    try:
        from absl import flags
    except ImportError:  # pysc2 depends on absl, so only a stand-in SMAC gets here
        return
    if not flags.FLAGS.is_parsed():
        flags.FLAGS(["rmio"], known_only=True)  # our own argv is not absl's to parse


class SMACEnv(MultiAgentEnv):
    """One ``StarCraft2Env`` (one SC2 process, started at the first reset)."""

    def __init__(self, cfg: EnvConfig) -> None:
        starcraft2env = _import_starcraft2env()
        map_name = cfg.scenario
        registry = _map_registry()
        if registry is not None and map_name not in registry:
            raise ConfigError(
                f"unknown SMAC map '{map_name}' (known here: {', '.join(SCENARIOS)}; "
                f"SMAC also has: {', '.join(sorted(set(registry) - set(SCENARIOS)))})"
            )
        _check_game_files(map_name)
        try:
            self._env = starcraft2env(map_name=map_name, **cfg.options)
        except KeyError:  # an older SMAC without the registry module: its constructor looks it up
            raise ConfigError(
                f"unknown SMAC map '{map_name}' (known: {', '.join(SCENARIOS)})"
            ) from None
        except TypeError as exc:
            raise ConfigError(
                f"SMAC cannot build '{map_name}' with options {cfg.options}: {exc}"
            ) from None
        if cfg.episode_limit:
            self._env.episode_limit = int(cfg.episode_limit)  # SMAC's step() reads this attribute
        info = self._env.get_env_info()
        n_agents = int(info["n_agents"])
        self.spec = EnvSpec(
            name=f"smac/{map_name}",
            n_agents=n_agents,
            obs_sizes=(int(info["obs_shape"]),) * n_agents,
            state_dim=int(info["state_shape"]),
            action_kind="discrete",
            action_sizes=(int(info["n_actions"]),) * n_agents,
            episode_limit=int(info["episode_limit"]),
            agent_names=tuple(f"agent_{i}" for i in range(n_agents)),
        )
        self._launched = False
        self._t = 0
        self._avail = np.zeros((n_agents, self.spec.action_dim), dtype=bool)

    def _timestep(
        self,
        reward: float = 0.0,
        terminated: bool = False,
        truncated: bool = False,
        info: dict | None = None,
    ) -> TimeStep:
        self._avail = np.asarray(self._env.get_avail_actions(), dtype=bool).reshape(
            self.spec.n_agents, self.spec.action_dim
        )
        return TimeStep(
            obs=self._pad_obs(list(self._env.get_obs())),
            state=np.asarray(self._env.get_state(), dtype=np.float32).reshape(-1),
            reward=float(reward),
            terminated=terminated,
            truncated=truncated,
            avail_actions=self._avail.copy(),
            info=info or {},
        )

    def reset(self, seed: int | None = None) -> TimeStep:
        if not self._launched:
            if seed is not None:
                self._env._seed = int(seed)  # read when SC2 creates the game
            _parse_absl_flags()
            self._launched = True
        else:
            if seed is not None:
                log.debug("SMAC cannot reseed a running StarCraft II game; seed %s ignored", seed)
            # SMAC relaunches SC2 on reset until one episode has ended inside it; a reset before
            # that (our own truncation, a restart) would leak a second game process.
            if getattr(self._env, "_episode_count", 1) == 0:
                self._env._episode_count = 1
        self._t = 0
        self._env.reset()
        return self._timestep()

    def step(self, actions: np.ndarray) -> TimeStep:
        actions = self._check_actions(actions)
        rows = np.arange(self.spec.n_agents)
        in_range = (actions >= 0) & (actions < self.spec.action_dim)
        clipped = np.clip(actions, 0, self.spec.action_dim - 1)
        if not in_range.all() or not self._avail[rows, clipped].all():
            # SMAC asserts this deep inside; say which agents are wrong instead
            bad = [int(i) for i in rows if not in_range[i] or not self._avail[i, actions[i]]]
            raise ValueError(
                f"{self.spec.name}: unavailable actions for agents {bad}: {actions.tolist()}"
            )
        timeouts = getattr(self._env, "timeouts", 0)
        reward, ended, raw_info = self._env.step(actions.tolist())
        self._t += 1
        raw_info = dict(raw_info or {})
        # every normal step reports battle_won; only the crash-and-restart path returns {}
        restarted = bool(ended) and "battle_won" not in raw_info
        timed_out = bool(raw_info.pop("episode_limit", False))
        timed_out = timed_out or getattr(self._env, "timeouts", 0) > timeouts
        info: dict[str, Any] = {"won": bool(raw_info.pop("battle_won", False)), **raw_info}
        if restarted:
            info["restarted"] = True
        terminated = bool(ended) and not (timed_out or restarted)
        truncated = not terminated and (
            timed_out or restarted or self._t >= self.spec.episode_limit
        )
        return self._timestep(float(reward), terminated, truncated, info)

    def close(self) -> None:
        self._env.close()


def make(cfg: EnvConfig) -> MultiAgentEnv:
    """Build a SMAC task; every missing piece raises a one-line RmioError saying what to do."""
    return SMACEnv(cfg)
