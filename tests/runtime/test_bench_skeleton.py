"""The skeleton swarm (rmio.skeleton) that bench/swarm_skeleton.py times, over ZeroMQ and over UDP:
real processes, every step's messages delivered, a round measured for every step after the
warm-up."""

from __future__ import annotations

import pytest

from rmio.skeleton import skeleton_round


@pytest.mark.parametrize("transport", ["tcp", "udp"])
def test_skeleton_swarm_runs_every_round(transport: str) -> None:
    result = skeleton_round(4, 80, warmup=10, transport=transport)
    assert result["rounds"] == 70
    assert 0 < result["p50"] <= result["p99"] < 1000
    assert result["steps_per_s"] > 0
