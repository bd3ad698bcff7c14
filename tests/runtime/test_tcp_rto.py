"""The warning that tcp's minimum retransmission timeout is longer than half a step deadline."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import yaml

from rmio.runtime import tcp_rto
from rmio.runtime.settings import Roster
from rmio.runtime.tcp_rto import LINUX_DEFAULT_S, rto_min_s, rto_warning


def test_the_sysctl_is_read_in_microseconds(tmp_path: Path) -> None:
    sysctl = tmp_path / "tcp_rto_min_us"
    sysctl.write_text("5000\n")
    assert rto_min_s(sysctl) == 0.005
    assert rto_min_s(tmp_path / "absent") == LINUX_DEFAULT_S


def test_warns_only_when_one_loss_costs_half_a_step_or_more() -> None:
    message = rto_warning(0.1, rto_s=0.2)
    assert message is not None and "200 ms" in message and "100 ms" in message
    assert "\n" not in message
    assert rto_warning(0.1, rto_s=0.05) is not None
    assert rto_warning(0.1, rto_s=0.005) is None
    assert rto_warning(1.0, rto_s=0.2) is None


def _roster(tmp_path: Path, transport: str) -> Path:
    path = tmp_path / f"roster-{transport}.yaml"
    endpoints = {"env": f"{transport}://10.0.0.1:5000", "a0": f"{transport}://10.0.0.2:5001"}
    path.write_text(
        yaml.safe_dump(
            {
                "endpoints": endpoints,
                "settings": {"bundle": "bundle", "n_agents": 1, "transport": transport,
                             "insecure": True},
            }
        )
    )  # fmt: skip
    return path


def test_a_tcp_roster_warns_where_the_kernel_would_cost_a_step(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Each host checks its own kernel when it loads the roster: 200 ms warns, 5 ms does not,
    and udp never does."""
    sysctl = tmp_path / "tcp_rto_min_us"
    monkeypatch.setattr(tcp_rto, "SYSCTL", sysctl)
    sysctl.write_text("200000\n")
    with caplog.at_level(logging.WARNING, logger="rmio.runtime.settings"):
        Roster.load(_roster(tmp_path, "tcp"))
        assert "minimum retransmission timeout (200 ms)" in caplog.text
        caplog.clear()
        Roster.load(_roster(tmp_path, "udp"))
        sysctl.write_text("5000\n")
        Roster.load(_roster(tmp_path, "tcp"))
    assert "retransmission" not in caplog.text
