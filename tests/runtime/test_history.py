"""History rings, the coordinator's cache, windows, and the election rules (in-process, no
sockets)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from rmio.runtime.history import ActionCodec, HistoryRing, WindowCache, window_start
from rmio.runtime.membership import Liveness, View, should_claim
from rmio.runtime.models import WorldModelRunner

pytestmark = pytest.mark.timeout(60)

CODEC = ActionCodec(discrete=False, act_dim=1)


def _episode(
    n: int, d: int, steps: int, seed: int = 0
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    obs = rng.normal(size=(steps, n, d)).astype(np.float32)
    seen = rng.random((steps, n)) > 0.4
    acts = rng.uniform(-1, 1, size=(steps, n, 1)).astype(np.float32)
    return obs * seen[..., None], seen, acts


def _fill(
    n: int, d: int, obs: np.ndarray, seen: np.ndarray, acts: np.ndarray, upto: int, capacity: int
) -> list[HistoryRing]:
    rings = [HistoryRing(capacity, d, CODEC) for _ in range(n)]
    for j, ring in enumerate(rings):
        ring.reset(0)
        for t in range(upto + 1):
            ring.put_obs(t, obs[t, j] if seen[t, j] else None, bool(seen[t, j]))
            if t < upto:
                ring.put_action(t, acts[t, j])
    return rings


def test_ring_serves_only_real_observations_and_known_actions() -> None:
    ring = HistoryRing(4, 3, CODEC)
    ring.reset(0)
    for t in range(6):
        ring.put_obs(t, np.full(3, t, np.float32) if t % 2 == 0 else None, t % 2 == 0)
        ring.put_action(t, np.array([t], np.float32))
    ring.obs[5] = np.full(3, 99, np.float32)  # a reconstruction the agent acted on: never served
    seen, known, obs, act = ring.serve(3, 2, 5)
    assert seen == [False, True, False] and obs.tolist() == [[4, 4, 4]]
    assert known == [True, True, True] and act[:, 0].tolist() == [2, 3, 4]
    seen, known, obs, act = ring.serve(0, 0, 2)  # steps that fell out of the ring
    assert seen == [False, False, True] and known == [False, False] and act.shape == (2, 1)
    assert ring.latest_obs().tolist() == [99, 99, 99] and ring.last_real_obs().tolist() == [4, 4, 4]


def test_cache_asks_only_for_missing_steps_and_builds_the_replay_window(bundle: Path) -> None:
    wm = WorldModelRunner(bundle)
    n, d, window = wm.manifest.spec.n_agents, wm.manifest.spec.obs_dim, wm.manifest.history_window
    obs, seen, acts = _episode(n, d, 30)
    cache = WindowCache(n, d, CODEC, window)
    cache.reset(0)
    for t in (5, 6, 20):  # rounds at t = 5, then 6 (consecutive), then 20 (gap)
        rings = _fill(n, d, obs, seen, acts, t, window + 2)
        for j in range(n):
            of, af = cache.need(j, t)
            if t == 6:
                assert (of, af) == (6, 5)  # one new observation and one new action per agent
            if t == 20:
                assert (of, af) == (window_start(t, window), window_start(t, window) - 1)
            cache.put(j, of, af, t, *rings[j].serve(of, af, t))
        w_obs, w_act, w_mask, complete = cache.window(t)
        s = window_start(t, window)
        prev = (
            np.concatenate([np.zeros((1, n, 1), np.float32), acts[s:t]])
            if s == 0
            else acts[s - 1 : t]
        )
        assert complete
        assert np.array_equal(w_obs, obs[s : t + 1]) and np.array_equal(w_mask, seen[s : t + 1])
        assert np.array_equal(w_act, prev)
        _, ref = wm.replay(obs[s : t + 1], prev, seen[s : t + 1].astype(np.float32))
        _, got = wm.replay(w_obs, w_act, w_mask)
        assert np.array_equal(got, ref)


def test_streamed_steps_complete_the_cache_without_a_gather() -> None:
    """What the coordinator does with streamed steps: after a gather at t = 4, one pushed step per
    agent per env step keeps every window whole, so a round at t = 9 has nothing to ask for."""
    n, d, window = 3, 4, 5
    obs, seen, acts = _episode(n, d, 12, seed=2)
    cache = WindowCache(n, d, CODEC, window)
    cache.reset(0)
    rings = _fill(n, d, obs, seen, acts, 4, window + 2)
    for j in range(n):
        cache.put(j, *cache.need(j, 4), 4, *rings[j].serve(*cache.need(j, 4), 4))
        assert cache.has(j, 4) and not cache.has(j, 5)
    for t in range(5, 10):
        rings = _fill(n, d, obs, seen, acts, t, window + 2)
        for j in range(n):
            assert cache.need(j, t) == (t, t - 1)  # exactly what one push carries
            cache.put(j, t, t - 1, t, *rings[j].serve(t, t - 1, t))
    assert all(cache.has(j, 9) for j in range(n))
    w_obs, _, w_mask, complete = cache.window(9)
    assert complete and np.array_equal(w_obs, obs[4:10]) and np.array_equal(w_mask, seen[4:10])
    rings = _fill(n, d, obs, seen, acts, 11, window + 2)
    cache.put(
        1, 11, 10, 11, *rings[1].serve(11, 10, 11)
    )  # the push of step 10 was lost: a GATHER must fill it
    assert not cache.has(1, 11) and cache.need(1, 11) == (10, 9)


def test_cache_completeness_check_agrees_with_a_full_scan() -> None:
    """``has`` checks only the steps after the last complete window; random pushes, gathers, gaps,
    episode resets and pruning must never make it disagree with scanning the whole window."""
    n, d, window = 3, 2, 4
    rng = np.random.default_rng(0)
    cache = WindowCache(n, d, CODEC, window)
    cache.reset(0)
    row, act = np.zeros((1, d), np.float32), np.zeros((1, 1), np.float32)
    t = 0
    for _ in range(3000):
        r = rng.random()
        if r < 0.01:
            cache.reset(cache.ep + 1)
            t = 0
        elif r < 0.5:
            t += 1
        j = int(rng.integers(n))
        h = max(0, t - int(rng.integers(3)))  # step t, or one at most 2 back arriving late
        kind = rng.random()
        if kind < 0.6:  # a push: o_h and a_{h-1}
            cache.put(
                j,
                h,
                max(0, h - 1),
                h,
                [True],
                [True] * (h - max(0, h - 1)),
                row,
                act[: h - max(0, h - 1)],
            )
        elif kind < 0.7:  # o_h alone
            cache.put(j, h, h, h, [True], [], row, act[:0])
        elif kind < 0.8:  # a_h alone
            cache.put(j, h + 2, h, h + 1, [], [True], row[:0], act)
        else:  # a gather answer for the whole missing part of a window
            obs_from, act_from = cache.need(j, t)
            k = t - act_from
            cache.put(
                j,
                obs_from,
                act_from,
                t,
                [False] * (t - obs_from + 1),
                [True] * k,
                row[:0],
                np.zeros((k, 1), np.float32),
            )
        for q in (t, max(0, t - 1), t + 1, max(0, t - int(rng.integers(16)))):
            obs_from, act_from = cache.need(j, q)
            assert cache.has(j, q) == (obs_from == q and q in cache.obs[j] and act_from == q)


def test_incremental_continuation_equals_a_replay_from_the_first_window(bundle: Path) -> None:
    wm = WorldModelRunner(bundle)
    n, d = wm.manifest.spec.n_agents, wm.manifest.spec.obs_dim
    obs, seen, acts = _episode(n, d, 20, seed=1)
    masks = seen.astype(np.float32)
    prev = np.concatenate([np.zeros((1, n, 1), np.float32), acts[:-1]])
    state, first = wm.replay(obs[2:6], prev[2:6], masks[2:6])
    state, more = wm.replay(obs[6:9], prev[6:9], masks[6:9], state)
    _, full = wm.replay(obs[2:9], prev[2:9], masks[2:9])
    assert np.array_equal(np.concatenate([first, more]), full)


def test_missing_answers_make_an_incomplete_window() -> None:
    cache = WindowCache(2, 3, CODEC, 4)
    cache.reset(0)
    cache.put(
        0,
        0,
        0,
        2,
        [True, True, True],
        [True, False],
        np.ones((3, 3), np.float32),
        np.ones((2, 1), np.float32),
    )
    _, act, mask, complete = cache.window(2)
    assert not complete  # agent 1 never answered, agent 0 could not vouch for an action
    assert mask[:, 1].sum() == 0 and np.array_equal(act[0, 1], CODEC.none()) and act[1, 1, 0] == 0


def test_election_rules() -> None:
    live = [0, 1, 2, 3]
    assert should_claim(1, True, {0}, live)  # lowest observer
    assert not should_claim(2, True, {0}, live)  # agent 1 observes and ranks lower
    assert should_claim(2, True, {0, 1, 3}, live)
    assert not should_claim(1, False, {0, 1, 2}, live)  # blind, and agent 3 may observe
    assert should_claim(0, False, {0, 1, 2, 3}, live)  # nobody observes: the lowest live agent
    assert not should_claim(1, False, {0, 1, 2, 3}, live)
    assert should_claim(1, False, {1, 2, 3}, [1, 2, 3])  # agent 0 is dead
    assert (
        View.of(3, 2) > View.of(2, 0) and View.of(3, 1) > View.of(3, 2) and View.of(1, 5) > View()
    )
    assert View().leader == -1 and View.of(4, 0).leader == 0


def test_liveness() -> None:
    live = Liveness(0.05, 3, slow_factor=4, send_fast={"a2"}, expect_fast={"a1"})
    live.heard("a1", 0.0)
    assert live.alive("a1", 0.1) and not live.alive("a1", 0.2) and live.expired(0.2) == ["a1"]
    live.mark_dead("a1")
    assert not live.alive("a1", 0.0) and live.expired(0.3) == []
    assert live.heard("a1", 0.3) and live.alive("a1", 0.31)
    live.heard("a3", 0.0)  # not our coordinator: expected to beat slowly, so it lives longer
    assert live.alive("a3", 0.5) and not live.alive("a3", 0.7)
    live.sent("a2", 0.0)
    live.sent("a3", 0.0)
    assert live.heartbeat_due(["a2", "a3"], 0.04) == [] and live.heartbeat_due(
        ["a2", "a3"], 0.05
    ) == ["a2"]
    assert live.heartbeat_due(["a3"], 0.18) == []  # due at 0.2 ...
    assert live.heartbeat_due(["a2", "a3"], 0.18) == ["a2", "a3"]  # ... but sent along with a2's
    assert 0.0 < live.next_deadline(["a2", "a3"], 0.01) <= 0.04
    live.heard("a2", 0.0)
    assert live.next_deadline(["a2"], 10.0) == 0.0  # overdue heartbeat: send now
    live.sent("a2", 10.0)
    assert (
        live.next_deadline(["a2"], 10.0) > 0.0
    )  # an expiry long past must not make the caller spin


@pytest.mark.parametrize(
    "codec", [CODEC, ActionCodec(discrete=True, act_dim=5)], ids=["continuous", "discrete"]
)
def test_serving_one_streamed_step_equals_the_general_answer(codec: ActionCodec) -> None:
    rng = np.random.default_rng(1)
    ring = HistoryRing(6, 3, codec)
    ring.reset(0)
    for t in range(40):
        seen = bool(rng.random() > 0.3)
        given = (
            seen or rng.random() > 0.5
        )  # a blind step may still hold the reconstruction it acted on
        ring.put_obs(t, rng.normal(size=3).astype(np.float32) if given else None, seen)
        general, one = ring.serve(t, max(0, t - 1), t), ring.serve_step(t)
        assert general[:2] == one[:2]
        for a, b in zip(general[2:], one[2:], strict=True):
            assert a.shape == b.shape and a.dtype == b.dtype and np.array_equal(a, b)
        if rng.random() > 0.2:  # some actions are unknown (the env host applied its default)
            ring.put_action(
                t, codec.check(rng.integers(5) if codec.discrete else rng.normal(size=1))
            )
