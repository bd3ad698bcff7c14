"""Defaults shared by the training half and the torch-free runtime, defined once.

A leaf module: it imports nothing from rmio, so the runtime (which must stay torch-free and never
imports rmio.train) and the trainers can both use it.
"""

from __future__ import annotations

DEFAULT_P_LOSS: tuple[float, ...] = (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)
"""The observation-loss probabilities of a robustness sweep (the paper's Fig. 8 grid), when none are
given."""
