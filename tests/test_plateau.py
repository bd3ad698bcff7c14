"""The trainers' shared early stopping: the smoothed loss, the patience rule, and a resume that
continues exactly where a checkpoint stopped."""

from __future__ import annotations

from rmio.train.plateau import Plateau


def test_stalls_after_patience_updates_without_relative_improvement() -> None:
    p = Plateau(min_delta=0.1)
    assert p.update(1.0) == 1.0 and p.since_best == 0
    # 0.98 + 0.02 * 0.95 = 0.999: better than 1.0, but not by 10%
    assert abs(p.update(0.95) - 0.999) < 1e-12
    assert p.since_best == 1 and not p.stalled(2) and not p.stalled(None)
    p.update(0.95)
    assert p.stalled(2) and not p.stalled(None)
    p.update(0.0)  # a large drop: ema 0.979..., still within 10% of the best -> no reset
    assert p.since_best == 3
    while p.ema >= 0.9:  # the first smoothed loss 10% under the best resets the count
        p.update(0.0)
    assert p.since_best == 0 and p.best == p.ema
    p.update(0.0)  # 0.98 of the new best is not 10% better
    assert p.since_best == 1


def test_restore_continues_bit_for_bit() -> None:
    losses = [1.0, 0.7, 0.8, 0.75, 0.74, 0.9, 0.2, 0.3]
    whole = Plateau(min_delta=0.002)
    for x in losses:
        whole.update(x)
    first = Plateau(min_delta=0.002)
    for x in losses[:4]:
        first.update(x)
    resumed = Plateau(min_delta=0.002)
    resumed.restore(first.state())
    for x in losses[4:]:
        resumed.update(x)
    assert resumed.state() == whole.state()
