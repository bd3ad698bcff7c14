"""Trials of a sweep in worker processes (`rmio ablate --jobs N`).

A sweep is a two-level graph: one preparation per training seed (the shared real data, or the shared
pre-trained world model), then one trial per seed and variant that needs it. The local backend runs
them in a spawn-context process pool, so a 16-core machine trains a whole table at once: a seed's
trials start as soon as its preparation is done, and the table is rewritten each time every trial
of a seed has finished. Every trial seeds itself (``run.seed``), so a table made with N jobs equals
the one made in one process.

Each worker writes its console to ``OUT/seed<S>/<trial>.log``; the lead process prints one line per
finished stage. A failed trial does not stop the others: the sweep reports every failure at the end
(re-running the same command resumes the finished stages and retries the rest).
"""

from __future__ import annotations

import multiprocessing
import time
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from rich.console import Console

from rmio.errors import RmioError


class SweepLike(Protocol):
    out: Path


@dataclass(frozen=True)
class Trial:
    """One variant of one training seed."""

    seed: int
    name: str
    """Its run directory's name under ``seed<S>/`` (also its log's)."""
    index: int
    """Its position in the sweep's variants."""


Prepare = Callable[[Any, int, Console], None]
RunVariant = Callable[[Any, int, int, Console], dict[str, Any]]
SeedDone = Callable[[int, list[dict[str, Any]]], None]


def _logged(fn: Callable[..., Any], log: Path, *args: Any) -> Any:
    """Run one stage in a worker with its console going to ``log`` (appended: resumes add to it)."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("a") as f:
        console = Console(file=f, width=120, no_color=True, soft_wrap=True)
        return fn(*args, console)


def run_trials(
    sweep: SweepLike,
    trials: list[Trial],
    jobs: int,
    console: Console,
    seed_done: SeedDone,
    prepare: Prepare,
    run_variant: RunVariant,
) -> None:
    """Prepare every seed, then run its trials, on ``jobs`` worker processes; ``seed_done(seed,
    rows)`` gets each seed's rows in variant order once all of them are in."""
    by_seed: dict[int, list[Trial]] = {}
    for t in trials:
        by_seed.setdefault(t.seed, []).append(t)
    rows: dict[int, dict[int, dict[str, Any]]] = {s: {} for s in by_seed}
    failures: list[str] = []
    t0 = time.monotonic()

    def log_path(seed: int, name: str) -> Path:
        return sweep.out / f"seed{seed}" / f"{name}.log"

    def elapsed() -> str:
        return f"{(time.monotonic() - t0) / 60:5.1f} min"

    ctx = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=jobs, mp_context=ctx) as pool:
        pending: dict[Future[Any], tuple[int, Trial | None]] = {}
        for seed in by_seed:
            fut = pool.submit(_logged, prepare, log_path(seed, "prepare"), sweep, seed)
            pending[fut] = (seed, None)
        console.print(
            f"{len(by_seed)} seed preparation(s), then {len(trials)} trial(s), on {jobs} worker "
            f"processes; logs in {sweep.out}/seed<S>/<trial>.log"
        )
        while pending:
            done, _ = wait(pending, return_when=FIRST_COMPLETED)
            for fut in done:
                seed, trial = pending.pop(fut)
                what = f"seed {seed} " + ("preparation" if trial is None else trial.name)
                log = log_path(seed, "prepare" if trial is None else trial.name)
                try:
                    row = fut.result()
                except Exception as e:  # a trial's failure is reported, the others go on
                    failures.append(f"{what}: {type(e).__name__}: {e} (log: {log})")
                    console.print(f"[{elapsed()}] [red]{what} failed[/red]: {e}")
                    continue
                if trial is None:
                    console.print(f"[{elapsed()}] {what} done")
                    for t in by_seed[seed]:
                        f = pool.submit(
                            _logged, run_variant, log_path(seed, t.name), sweep, seed, t.index
                        )
                        pending[f] = (seed, t)
                    continue
                console.print(
                    f"[{elapsed()}] {what} done: L_rec {row['lrec_lost']:.4f}, "
                    f"AUC {row['auc_mean']:.1f}"
                )
                rows[seed][trial.index] = row
                if len(rows[seed]) == len(by_seed[seed]):
                    seed_done(seed, [rows[seed][t.index] for t in by_seed[seed]])
    if failures:
        raise RmioError(
            f"{len(failures)} stage(s) of the sweep failed (re-run the same command to retry "
            "them):\n  " + "\n  ".join(failures)
        )
