"""What `rmio export` accepts as the same numbers from onnxruntime and PyTorch (every exporter's
parity checks share it), and how it tells an argmax tie from a discrepancy."""

from __future__ import annotations

import numpy as np

PARITY_TOLERANCE = 1e-3
"""Largest accepted |onnxruntime - torch| on reconstructed observations (raw units) and states."""


def argmax_ties(
    logits: np.ndarray, z_ref: np.ndarray, z_got: np.ndarray, tolerance: float = PARITY_TOLERANCE
) -> np.ndarray | None:
    """Which agents' latents differ only by argmax ties: the boolean (n,) mask of agents whose
    one-hot latents ``z_ref`` and ``z_got`` (n, groups * classes) pick another class only in groups
    where ``logits`` (n, groups, classes; the reference's) put the two best classes within
    ``tolerance`` of each other, or None if some group picks otherwise with a wider margin (a real
    discrepancy)."""
    n, groups, classes = logits.shape
    ref = z_ref.reshape(n, groups, classes).argmax(-1)
    got = z_got.reshape(n, groups, classes).argmax(-1)
    differs = ref != got
    top2 = np.sort(logits, axis=-1)[..., -2:]
    near = (top2[..., 1] - top2[..., 0]) <= tolerance
    if (differs & ~near).any():
        return None
    return differs.any(-1)
