from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from rmio.envs import EnvConfig
from rmio.envs.collect import collect
from rmio.envs.loss import LossConfig
from rmio.envs.trajectory import TrajectoryBuffer
from rmio.errors import RmioError


@pytest.fixture(scope="module")
def buffer() -> TrajectoryBuffer:
    buf, stats = collect(
        EnvConfig("mamujoco", "HalfCheetah-6x1", episode_limit=25),
        LossConfig("bernoulli", 0.4),
        steps=100,
        num_envs=2,
        seed=3,
    )
    assert stats.env_steps >= 100
    return buf


def test_collected_episodes_are_whole(buffer: TrajectoryBuffer) -> None:
    bounds = buffer.episode_bounds()
    assert buffer.num_episodes == len(bounds) >= 4
    for start, stop in bounds:
        ep = {k: v[start:stop] for k, v in buffer.data.items()}
        assert stop - start == 26  # 25 steps -> 26 observations
        assert ep["is_first"][0] and not ep["is_first"][1:].any()
        assert ep["is_last"][-1] and not ep["is_last"][:-1].any()
        assert ep["reward"][0] == 0.0
        np.testing.assert_array_equal(ep["action"][-1], 0.0)  # no action at the last observation
        assert not ep["is_terminal"].any()  # HalfCheetah only truncates
    lost = 1 - buffer.data["observed"].mean()
    assert 0.3 < lost < 0.5
    assert (
        np.abs(buffer.data["obs"][~buffer.data["observed"]]).sum() > 0
    )  # the truth is kept for lost agents


def test_collection_is_reproducible(buffer: TrajectoryBuffer) -> None:
    again, _ = collect(
        EnvConfig("mamujoco", "HalfCheetah-6x1", episode_limit=25),
        LossConfig("bernoulli", 0.4),
        steps=100,
        num_envs=2,
        seed=3,
    )
    for name in buffer.data:
        np.testing.assert_array_equal(buffer.data[name], again.data[name])


def test_save_load_roundtrip(buffer: TrajectoryBuffer, tmp_path: Path) -> None:
    path = buffer.save(tmp_path / "sub" / "traj.npz")
    loaded = TrajectoryBuffer.load(path)
    assert loaded.spec == buffer.spec
    for name in buffer.data:
        np.testing.assert_array_equal(loaded.data[name], buffer.data[name])
    np.testing.assert_allclose(loaded.episode_returns(), buffer.episode_returns())
    assert loaded.meta["seed"] == 3
    assert not list(tmp_path.glob("sub/*.tmp"))


def test_load_rejects_bad_files(buffer: TrajectoryBuffer, tmp_path: Path) -> None:
    with pytest.raises(RmioError, match="does not exist"):
        TrajectoryBuffer.load(tmp_path / "missing.npz")
    corrupt = tmp_path / "corrupt.npz"
    corrupt.write_bytes(b"not a zip file at all")
    with pytest.raises(RmioError, match="unreadable or corrupt"):
        TrajectoryBuffer.load(corrupt)
    bad = TrajectoryBuffer(buffer.spec, {k: v.copy() for k, v in buffer.data.items()})
    bad.data["obs"][7, 2, 1] = np.nan
    bad.save(tmp_path / "nan.npz")
    with pytest.raises(RmioError, match="NaN or inf in 1 rows"):
        TrajectoryBuffer.load(tmp_path / "nan.npz")
    np.savez(tmp_path / "foreign.npz", header=np.array('{"format_version": 99, "spec": {}}'))
    with pytest.raises(RmioError, match="format version 99"):
        TrajectoryBuffer.load(tmp_path / "foreign.npz")


def test_merge_checks_the_task(buffer: TrajectoryBuffer) -> None:
    other, _ = collect(
        EnvConfig("mamujoco", "Hopper-3x1", episode_limit=5), LossConfig("none"), steps=5
    )
    with pytest.raises(RmioError, match="cannot merge"):
        buffer.extend(other)
    twice = TrajectoryBuffer(buffer.spec, dict(buffer.data))
    twice.extend(buffer)
    assert twice.num_episodes == 2 * buffer.num_episodes


def test_buffer_stores_the_actions_the_environment_executed() -> None:
    """A Gaussian policy's samples leave the box; the world model must learn from what really
    happened."""

    def wild(obs, observed, avail):
        return np.full((obs.shape[0], 6, 1), 3.0, np.float32)

    buf, _ = collect(
        EnvConfig("mamujoco", "HalfCheetah-6x1", episode_limit=5),
        LossConfig("none"),
        steps=5,
        policy=wild,
    )
    acted = buf.data["action"][~buf.data["is_last"]]
    np.testing.assert_array_equal(acted, 1.0)


class _Counting:
    """A policy with memory: per copy, the actions it chose since ``collect`` last told it that
    copy's episode started (what a recurrent actor resets its state on)."""

    def __init__(self, copies: int) -> None:
        self.since: list[int | None] = [None] * copies
        self.lengths: list[int] = []  # per finished episode, in the order episodes finish

    def episode_start(self, k: int) -> None:
        if self.since[k]:
            self.lengths.append(self.since[k])
        self.since[k] = 0

    def __call__(self, obs, observed, avail):
        assert None not in self.since, "an action before its copy's episode started"
        self.since = [s + 1 for s in self.since]
        return np.zeros((obs.shape[0], 6, 1), np.float32)


def test_collect_tells_a_policy_when_each_copys_episode_starts() -> None:
    """Every stored episode is exactly the actions between two ``episode_start`` calls of its
    copy, and no copy acts before its first episode started."""
    policy = _Counting(2)
    buf, _ = collect(
        EnvConfig("mamujoco", "HalfCheetah-6x1", episode_limit=7),
        LossConfig("none"),
        steps=40,
        num_envs=2,
        policy=policy,
    )
    lengths = [b - a - 1 for a, b in buf.episode_bounds()]
    assert len(lengths) >= 4
    assert policy.lengths == lengths
