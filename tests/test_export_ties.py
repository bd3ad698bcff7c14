"""The export's replay parity tells an argmax tie (the two runtimes rightly picking different
classes whose logits are within float rounding) from a real discrepancy."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("torch")

from rmio.train.parity import argmax_ties


def _one_hot(classes: np.ndarray, width: int) -> np.ndarray:
    """(n, groups) class ids -> (n, groups * width) one-hot latents."""
    n, groups = classes.shape
    return np.eye(width, dtype=np.float32)[classes].reshape(n, groups * width)


def _logits() -> np.ndarray:
    """3 agents, 2 groups, 4 classes: agent 0's group 1 has its two best classes 7e-7 apart (the
    SMAX case), agent 2's group 0 has them 0.2 apart; every other group has a clear winner."""
    logits = np.zeros((3, 2, 4), np.float32)
    logits[:, :, 0] = 3.0
    logits[0, 1, 2] = 3.0 - 7e-7
    logits[2, 0, 1] = 3.0 - 0.2
    return logits


def test_identical_latents_have_no_ties() -> None:
    z = _one_hot(np.zeros((3, 2), int), 4)
    tied = argmax_ties(_logits(), z, z)
    assert tied is not None and not tied.any()


def test_a_flip_between_near_equal_logits_is_a_tie_of_that_agent_only() -> None:
    ref = np.zeros((3, 2), int)
    got = ref.copy()
    got[0, 1] = 2  # the other runtime picked the class 7e-7 below
    tied = argmax_ties(_logits(), _one_hot(ref, 4), _one_hot(got, 4))
    assert tied is not None and tied.tolist() == [True, False, False]


@pytest.mark.parametrize("flip", [(2, 0, 1), (1, 1, 3)])
def test_a_flip_with_a_wider_margin_is_a_discrepancy(flip: tuple[int, int, int]) -> None:
    agent, group, cls = flip  # 0.2 below the best, and 3.0 below it
    ref = np.zeros((3, 2), int)
    got = ref.copy()
    got[agent, group] = cls
    assert argmax_ties(_logits(), _one_hot(ref, 4), _one_hot(got, 4)) is None


def test_a_tie_beside_a_real_discrepancy_is_still_a_discrepancy() -> None:
    ref = np.zeros((3, 2), int)
    got = ref.copy()
    got[0, 1] = 2
    got[2, 0] = 1
    assert argmax_ties(_logits(), _one_hot(ref, 4), _one_hot(got, 4)) is None
