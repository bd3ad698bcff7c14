from __future__ import annotations

import numpy as np

from rmio.envs import EnvConfig, make_env
from rmio.envs.vector import SubprocVectorEnv, make_vector_env


def test_subproc_vector_env_matches_single_envs_and_auto_resets() -> None:
    cfg = EnvConfig("mamujoco", "HalfCheetah-6x1", episode_limit=5)
    rng = np.random.default_rng(0)
    with make_vector_env(cfg, 3, "subproc") as venv:
        assert isinstance(venv, SubprocVectorEnv)
        singles = [make_env(cfg) for _ in range(3)]
        b = venv.reset(seed=10)
        for k, env in enumerate(singles):
            np.testing.assert_array_equal(
                b.obs[k], env.reset(seed=10 + k).obs
            )  # copy k is seeded seed + k
        assert b.obs.shape == (3, 6, 9) and b.state.shape == (3, 17)
        for _ in range(5):
            actions = np.stack([venv.spec.random_actions(rng) for _ in range(3)])
            b = venv.step(actions)
            ref = [env.step(actions[k]) for k, env in enumerate(singles)]
            np.testing.assert_array_equal(b.final_obs, np.stack([r.obs for r in ref]))
            np.testing.assert_allclose(b.reward, [r.reward for r in ref], rtol=1e-6)
        assert b.truncated.all() and not b.terminated.any()
        assert not np.allclose(b.obs, b.final_obs)  # obs already belongs to the next episode
        for env in singles:
            env.close()


def test_many_segment_robots_build_in_parallel() -> None:
    """gymnasium_robotics writes and deletes one shared XML per ManySegment robot; copies built at
    the same time used to delete each other's file."""
    cfg = EnvConfig("mamujoco", "ManySegmentSwimmer-10x2", episode_limit=3)
    for _ in range(3):
        with make_vector_env(cfg, 4) as venv:
            assert venv.reset(seed=0).obs.shape == (4, 10, 6)


def test_sync_and_subprocess_copies_step_identically() -> None:
    cfg = EnvConfig("mamujoco", "Hopper-3x1", episode_limit=4)
    rng = np.random.default_rng(1)
    with make_vector_env(cfg, 2, "sync") as a, make_vector_env(cfg, 2, "subproc") as b:
        ba, bb = a.reset(seed=3), b.reset(seed=3)
        for _ in range(9):  # crosses two auto-resets
            np.testing.assert_array_equal(ba.obs, bb.obs)
            np.testing.assert_array_equal(ba.final_obs, bb.final_obs)
            np.testing.assert_array_equal(ba.done, bb.done)
            act = np.stack([a.spec.random_actions(rng) for _ in range(2)])
            ba, bb = a.step(act), b.step(act)
