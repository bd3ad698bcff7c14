"""Early stopping on a smoothed training loss, shared by every world-model trainer (RMIOv2's
pre-training and fine-tuning, RMIO v1's correction block, MARIE's and MMSA's masked fine-tuning),
so that they stop by one rule and resume it exactly from the same checkpoint keys; a resumed run
that had already stalled makes no further update."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any


@dataclass
class Plateau:
    """An EMA of the loss that has to improve on its best by ``min_delta`` (relative) at least
    every ``patience`` updates. ``best``, ``since_best`` and ``ema`` are the checkpoint's keys."""

    min_delta: float = 0.0
    best: float = math.inf
    since_best: int = 0
    ema: float | None = None

    def update(self, loss: float) -> float:
        """Fold one update's loss in and return the smoothed loss."""
        # about the last 50 updates; 0.02 written out, since 1 - 0.98 is not 0.02 in floats
        self.ema = loss if self.ema is None else 0.98 * self.ema + 0.02 * loss
        if self.ema < self.best * (1 - self.min_delta):
            self.best, self.since_best = self.ema, 0
        else:
            self.since_best += 1
        return self.ema

    def stalled(self, patience: int | None) -> bool:
        """No improvement for ``patience`` updates (never, when patience is None)."""
        return patience is not None and self.since_best >= patience

    def state(self) -> dict[str, Any]:
        return {"best": self.best, "since_best": self.since_best, "ema": self.ema}

    def restore(self, state: dict[str, Any]) -> None:
        self.best, self.since_best, self.ema = state["best"], state["since_best"], state["ema"]
