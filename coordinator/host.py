"""What the coordinator and the agent's history sync need from the agent process that hosts them.

A structural type (``typing.Protocol``), so ``rmio.coordinator`` and ``rmio.agents.sync`` depend on
this small surface rather than on ``rmio.agents.agent``: the dependency points one way (the agent
builds them), and a test can drive them with any object that has these members.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from typing import Protocol

import numpy as np

from rmio.runtime.history import HistoryRing
from rmio.runtime.membership import Liveness, ServerHealth, View
from rmio.runtime.models import WorldModel
from rmio.runtime.node import NodeBase
from rmio.runtime.settings import SwarmSettings


class AgentHost(Protocol):
    i: int
    """This agent's index."""
    l: int  # noqa: E741 - the paper's name for the history window
    """History window length."""
    settings: SwarmSettings
    node: NodeBase
    ring: HistoryRing
    """The agent's own last l + 2 steps (observations when seen, actions)."""
    live: Liveness
    view: View
    """The (epoch, leader) this agent follows."""
    ep: int
    t: int
    seq: int
    """The episode, step and global sequence number of the newest STEP."""
    counts: Counter
    lost_reports: dict[tuple[int, int], set[int]]
    """(ep, t) -> the blind agents that reported that step to this agent."""
    wm_health: ServerHealth
    """Whether the world-model node is worth asking (kept across coordinator terms)."""
    clock: Callable[[], float]
    """The monotonic clock in seconds that deadlines and liveness use (a test's hand-driven one)."""

    def send(
        self, to: str, msg_type: str, arrays: dict[str, np.ndarray] | None = None, **fields: object
    ) -> bool:
        """Send to a peer; False (and the peer marked down) when it cannot be reached."""
        ...

    def near(self, ep: int, t: int) -> bool:
        """A step a peer may talk about now: ours, one either side, or the next episode's start."""
        ...

    def world_model(self) -> WorldModel: ...

    def deliver_recon(self, ep: int, t: int, row: np.ndarray, start: int, epoch: int) -> None:
        """Act on a reconstruction of this agent's own observation."""
        ...
