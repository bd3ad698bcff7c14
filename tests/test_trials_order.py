"""The sweep scheduler (train/trials.py) hands a seed's trials to the workers longest first
(MARIE before RMIOv2) and still reports each seed's rows in the sweep's variant order."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

from rich.console import Console

from rmio.train.ablation import trial_order
from rmio.train.ablation_config import load_ablation, resolve_sweep
from rmio.train.trials import Trial, _schedule


class _SerialPool:
    """Runs each submitted stage when the scheduler waits on it, oldest first (a one-worker
    pool), and records the order the stages ran in."""

    def __init__(self, console: Console) -> None:
        self.console = console
        self.stages: list[tuple[Any, tuple[Any, ...]]] = []
        self.ran: list[tuple[Any, ...]] = []

    def submit(self, fn: Any, *args: Any) -> int:
        self.stages.append((fn, args))
        return len(self.stages) - 1

    def wait(self, pending: list[int]) -> list[int]:
        return [min(pending)]

    def result(self, handle: int) -> Any:
        fn, args = self.stages[handle]
        self.ran.append(args[2:])  # (seed,) or (seed, variant index); args[:2] = log, sweep
        return fn(*args[1:], self.console)


class _Sweep:
    def __init__(self, out: Path) -> None:
        self.out = out


def test_marie_trials_are_handed_out_first() -> None:
    for name in ("marie_smax_2s3z", "marie_halfcheetah_6x1"):
        ab = load_ablation(resolve_sweep(name))
        assert [ab.variants[k] for k in trial_order(ab)] == ["marie", "rmiov2"], name
    ab = load_ablation(resolve_sweep("fig8_smax_2s3z"))  # no MARIE: the sweep's own order
    assert trial_order(ab) == list(range(len(ab.variants)))


def test_rows_come_back_in_variant_order_whatever_ran_first(tmp_path: Path) -> None:
    console = Console(file=io.StringIO())
    pool = _SerialPool(console)
    done: dict[int, list[dict[str, Any]]] = {}

    def prepare(sweep: _Sweep, seed: int, console: Console) -> None:
        return None

    def run_variant(sweep: _Sweep, seed: int, index: int, console: Console) -> dict[str, Any]:
        return {"index": index, "lrec_lost": 0.1 * index, "auc_mean": 50.0 + index}

    trials = [Trial(s, name, k) for s in (0, 1) for name, k in (("marie", 1), ("rmiov2", 0))]
    _schedule(
        pool,
        "one serial worker",
        _Sweep(tmp_path),
        trials,
        console,
        lambda seed, rows: done.__setitem__(seed, rows),
        prepare,
        run_variant,
    )
    assert pool.ran == [(0,), (1,), (0, 1), (0, 0), (1, 1), (1, 0)]
    assert {s: [r["index"] for r in rows] for s, rows in done.items()} == {0: [0, 1], 1: [0, 1]}
