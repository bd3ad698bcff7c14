"""SMAC adapter: the install-advice errors, the adapter logic against a stand-in, the real game.

StarCraft II cannot run on CI machines, so three layers are tested:

* the missing-package error, for real, whenever ``smac`` is not installed;
* packages written to a temporary folder and put first on ``sys.path``: an empty ``smac`` (what
  PyPI's SMAC3 looks like from here) and a stand-in with the oxwhirl API (``StarCraft2Env`` with
  ``get_obs``/``get_state``/``get_avail_actions``/``get_env_info`` and ``step`` returning
  ``reward, terminated, info`` as in smac/env/starcraft2/starcraft2.py), which exercises the
  mapping of wins, time-outs, restarts and available actions without the game;
* a random episode in the real game, skipped unless SMAC and StarCraft II are installed.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

import rmio.envs.smac as smac_adapter
from rmio.envs.registry import EnvConfig, make_env
from rmio.errors import ConfigError, RmioError


def _make(scenario: str = "3m", **kw: object) -> object:
    return make_env(EnvConfig(family="smac", scenario=scenario, **kw))


def _one_line_error(scenario: str = "3m") -> str:
    with pytest.raises(RmioError) as err:
        _make(scenario)
    msg = str(err.value)
    assert "\n" not in msg
    return msg


# -- the real missing-package path ---------------------------------------------------------


@pytest.mark.skipif(importlib.util.find_spec("smac") is not None, reason="a smac package exists")
def test_missing_package_says_what_to_install() -> None:
    msg = _one_line_error()
    assert "oxwhirl" in msg and "git+https://github.com/oxwhirl/smac.git" in msg
    assert "StarCraft II" in msg and "SC2PATH" in msg and "SMAC_Maps" in msg
    assert "SMAX" in msg and "smax" in msg


# -- packages on a temporary sys.path entry --------------------------------------------------

_STAND_IN = '''
"""Stand-in with the oxwhirl SMAC API; a toy battle, no StarCraft."""
import numpy as np

REGISTRY = {"3m": {"n_agents": 3, "n_enemies": 3, "limit": 60}}


class StarCraft2Env:
    launches = 0
    crash_at = None  # episode step at which SC2 "crashes" (step returns 0, True, {})

    def __init__(self, map_name="8m", seed=None, continuing_episode=False, damage=0.0):
        p = REGISTRY[map_name]
        self.n_agents, self.n_enemies = p["n_agents"], p["n_enemies"]
        self.episode_limit = p["limit"]
        self.n_actions = 6 + self.n_enemies
        self.continuing_episode = continuing_episode
        self.damage = damage
        self._seed = seed
        self._episode_count = 0
        self._episode_steps = 0
        self.timeouts = 0
        self.closed = False

    def get_env_info(self):
        return {"state_shape": 4 * (self.n_agents + self.n_enemies), "obs_shape": 5,
                "n_actions": self.n_actions, "n_agents": self.n_agents,
                "episode_limit": self.episode_limit}

    def reset(self):
        self._episode_steps = 0
        if self._episode_count == 0:
            type(self).launches += 1
            self.rng = np.random.default_rng(self._seed)
        self.ally = np.ones(self.n_agents)
        self.enemy = np.ones(self.n_enemies)
        return self.get_obs(), self.get_state()

    def get_obs(self):
        return [np.full(5, h, dtype=np.float32) for h in self.ally]

    def get_state(self):
        units = np.concatenate([self.ally, self.enemy])
        return np.repeat(units, 4).astype(np.float32)

    def get_avail_agent_actions(self, a):
        if self.ally[a] <= 0:
            return [1] + [0] * (self.n_actions - 1)
        return [0, 1, 1, 1, 1, 1] + [int(h > 0) for h in self.enemy]

    def get_avail_actions(self):
        return [self.get_avail_agent_actions(a) for a in range(self.n_agents)]

    def step(self, actions):
        actions = [int(a) for a in actions]
        for a, act in enumerate(actions):
            assert self.get_avail_agent_actions(a)[act] == 1, "Agent cannot perform action"
        self._episode_steps += 1
        if self.crash_at == self._episode_steps:
            return 0, True, {}
        reward = 0.0
        for act in actions:
            if act >= 6 and self.enemy[act - 6] > 0:
                self.enemy[act - 6] -= 0.5
                reward += 0.5
        self.ally -= self.damage * self.rng.random(self.n_agents)
        self.ally[self.ally < 0] = 0
        self.enemy[self.enemy < 0] = 0
        info = {"battle_won": False, "dead_allies": int((self.ally <= 0).sum()),
                "dead_enemies": int((self.enemy <= 0).sum())}
        terminated = False
        if (self.enemy <= 0).all():
            terminated, info["battle_won"] = True, True
        elif (self.ally <= 0).all():
            terminated = True
        elif self._episode_steps >= self.episode_limit:
            terminated = True
            if self.continuing_episode:
                info["episode_limit"] = True
            self.timeouts += 1
        if terminated:
            self._episode_count += 1
        return reward, terminated, info

    def close(self):
        self.closed = True
'''


@pytest.fixture
def fake_smac(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A ``smac`` package folder first on sys.path; the caller fills it in."""
    saved = {k: m for k, m in sys.modules.items() if k == "smac" or k.startswith("smac.")}
    for name in saved:
        del sys.modules[name]
    root = tmp_path / "site"
    (root / "smac").mkdir(parents=True)
    monkeypatch.syspath_prepend(str(root))
    yield root / "smac"
    for name in [k for k in sys.modules if k == "smac" or k.startswith("smac.")]:
        del sys.modules[name]
    sys.modules.update(saved)
    importlib.invalidate_caches()


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text))
    importlib.invalidate_caches()


def test_smac3_is_told_apart_from_starcraft_smac(fake_smac: Path) -> None:
    # PyPI's smac (SMAC3) has no smac.env; an __init__ alone is what importing it finds here
    _write(fake_smac / "__init__.py", '"""SMAC3: sequential model-based algorithm config."""\n')
    msg = _one_line_error()
    assert "SMAC3" in msg and "hyperparameter" in msg
    assert "git+https://github.com/oxwhirl/smac.git" in msg and "SMAX" in msg


def test_missing_dependency_of_real_smac_is_named(fake_smac: Path) -> None:
    _write(fake_smac / "__init__.py", "")
    _write(fake_smac / "env" / "__init__.py", "import pysc2_is_not_installed_here\n")
    msg = _one_line_error()
    assert "pysc2_is_not_installed_here" in msg and "SMAC3" not in msg


@pytest.fixture
def stand_in(fake_smac: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The oxwhirl-shaped stand-in plus a fake SC2 folder holding Versions/ and the 3m map."""
    _write(fake_smac / "__init__.py", "")
    _write(fake_smac / "env" / "__init__.py", "from smac.env.stand_in import StarCraft2Env\n")
    _write(fake_smac / "env" / "stand_in.py", _STAND_IN)
    _write(fake_smac / "env" / "starcraft2" / "__init__.py", "")
    _write(fake_smac / "env" / "starcraft2" / "maps" / "__init__.py", "")
    _write(
        fake_smac / "env" / "starcraft2" / "maps" / "smac_maps.py",
        "from smac.env.stand_in import REGISTRY\n\n"
        "def get_smac_map_registry():\n    return REGISTRY\n",
    )
    sc2 = tmp_path / "StarCraftII"
    (sc2 / "Versions").mkdir(parents=True)
    _write(sc2 / "Maps" / "SMAC_Maps" / "3m.SC2Map", "")
    monkeypatch.setenv("SC2PATH", str(sc2))
    # absl flag parsing is global to the process; the stand-in does not need it
    monkeypatch.setattr(smac_adapter, "_parse_absl_flags", lambda: None)
    return sc2


def test_unknown_map_raises_config_error(stand_in: Path) -> None:
    with pytest.raises(ConfigError) as err:
        _make("4m_vs_nothing")
    assert "4m_vs_nothing" in str(err.value) and "2s3z" in str(err.value)


def test_missing_game_and_maps_are_one_line_errors(
    stand_in: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    (stand_in / "Maps" / "SMAC_Maps" / "3m.SC2Map").unlink()
    msg = _one_line_error()
    assert "3m.SC2Map" in msg and "SMAC_Maps" in msg
    monkeypatch.setenv("SC2PATH", str(tmp_path / "nowhere"))
    msg = _one_line_error()
    assert "StarCraft II" in msg and "SC2PATH" in msg and "SMAX" in msg


def test_adapter_maps_the_smac_api(stand_in: Path) -> None:
    with _make(options={"seed": 5}) as env:
        spec = env.spec
        assert spec.name == "smac/3m" and spec.n_agents == 3 and spec.discrete
        assert spec.obs_sizes == (5, 5, 5) and spec.state_dim == 24
        assert spec.action_sizes == (9, 9, 9) and spec.episode_limit == 60
        ts = env.reset(seed=1)
        assert ts.obs.shape == (3, 5) and ts.obs.dtype == np.float32
        assert ts.state.shape == (24,) and ts.avail_actions.dtype == bool
        assert not ts.avail_actions[:, 0].any()  # no-op is for dead units only
        with pytest.raises(ValueError, match="unavailable"):
            env.step(np.zeros(3, dtype=np.int64))
        with pytest.raises(ValueError, match=r"agents \[2\]"):
            env.step(np.array([1, 1, 9]))  # out of range
        # everybody attacks enemy 0, then 1, then 2: each falls in one step, a win in three
        rewards = []
        for target in (6, 7, 8):
            ts = env.step(np.full(3, target))
            rewards.append(ts.reward)
        assert ts.terminated and not ts.truncated and ts.info["won"] is True
        assert ts.info["dead_enemies"] == 3 and sum(rewards) > 0
        assert type(env._env).launches == 1


def test_time_out_is_truncation_and_reset_does_not_relaunch(stand_in: Path) -> None:
    with _make(episode_limit=4) as env:
        assert env.spec.episode_limit == 4
        ts = env.reset(seed=0)
        launches = type(env._env).launches
        while not ts.done:
            ts = env.step(np.ones(3, dtype=np.int64))  # stop, forever
        assert ts.truncated and not ts.terminated and ts.info["won"] is False
        # a reset in the middle of the first episode must not start a second game
        env.reset(seed=1)
        env.step(np.ones(3, dtype=np.int64))
        env.reset()
        assert type(env._env).launches == launches
    with _make(options={"continuing_episode": True}, episode_limit=2) as env:
        ts = env.reset()
        ts = env.step(np.ones(3, dtype=np.int64))
        ts = env.step(np.ones(3, dtype=np.int64))
        assert ts.truncated and not ts.terminated and "episode_limit" not in ts.info


def test_crash_restart_is_truncation(stand_in: Path) -> None:
    with _make() as env:
        env.reset()
        type(env._env).crash_at = 2
        try:
            env.step(np.ones(3, dtype=np.int64))
            ts = env.step(np.ones(3, dtype=np.int64))
        finally:
            type(env._env).crash_at = None
        assert ts.truncated and not ts.terminated and ts.info["restarted"] is True


def test_random_episodes_with_deaths_use_avail_actions(stand_in: Path) -> None:
    rng = np.random.default_rng(0)
    with _make(options={"damage": 0.3}) as env:
        for seed in range(5):
            ts = env.reset(seed=seed)
            while not ts.done:
                ts = env.step(env.spec.random_actions(rng, ts.avail_actions))
                dead = ts.obs[:, 0] <= 0
                assert ts.avail_actions[dead, 0].all() and not ts.avail_actions[dead, 1:].any()
                assert np.isfinite(ts.reward)
            assert ts.terminated != ts.truncated


# -- the real game -----------------------------------------------------------------------------


def test_real_smac_random_episode() -> None:
    pytest.importorskip("smac.env")
    try:
        smac_adapter._check_game_files("3m")
    except RmioError as exc:
        pytest.skip(f"StarCraft II or the SMAC maps are not installed: {exc}")
    rng = np.random.default_rng(0)
    with _make("3m") as env:
        assert env.spec.n_agents == 3 and env.spec.action_dim == 9
        ts = env.reset(seed=0)
        steps, total = 0, 0.0
        while not ts.done:
            ts = env.step(env.spec.random_actions(rng, ts.avail_actions))
            assert ts.obs.shape == (3, env.spec.obs_dim) and ts.state.shape == (env.spec.state_dim,)
            assert ts.avail_actions.shape == (3, 9) and ts.avail_actions.any(axis=1).all()
            assert np.isfinite(ts.reward)
            total += ts.reward
            steps += 1
        assert steps <= env.spec.episode_limit and "won" in ts.info
