"""Fixtures for the swarm tests: one tiny bundle per session, real processes, and no orphans left
behind."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

import psutil
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from rmio.testing import make_tiny_bundle


@pytest.fixture(scope="session")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """HalfCheetah 6x1 (6 agents, continuous actions), history window l = 8."""
    return make_tiny_bundle(
        tmp_path_factory.mktemp("bundle") / "halfcheetah6", "mamujoco/HalfCheetah-6x1", 8
    )


@pytest.fixture(autouse=True)
def no_orphans() -> Any:
    """Every test must leave no child process behind (the launcher runs in the test process)."""
    yield
    me = psutil.Process()
    deadline = time.monotonic() + 10
    while True:
        alive = [
            p
            for p in me.children(recursive=True)
            if p.is_running() and p.status() != psutil.STATUS_ZOMBIE
        ]
        if not alive or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert not alive, f"orphan processes: {[(p.pid, p.cmdline()[-6:]) for p in alive]}"
