"""Trials of a sweep in worker processes (`rmio ablate --jobs N`) or as Ray tasks (`--backend
ray`).

A sweep is a two-level graph: one preparation per training seed (the shared real data, or the shared
pre-trained world model), then one trial per seed and variant that needs it. The local backend runs
them in a spawn-context process pool, so a 16-core machine trains a whole table at once: a seed's
trials start as soon as its preparation is done, and the table is rewritten each time every trial
of a seed has finished. Every trial seeds itself (``run.seed``), so a table made with N jobs equals
the one made in one process.

Each worker writes its console to ``OUT/seed<S>/<trial>.log``; the lead process prints one line per
finished stage. A failed trial does not stop the others: the sweep reports every failure at the end
(re-running the same command resumes the finished stages and retries the rest).

With Ray (the optional ``ray`` extra) every stage is a Ray task with one CPU, on a local Ray or an
existing cluster (``--address``); the sweep directory must then be on storage every node sees, since
stages read what earlier ones wrote and skip what is finished, exactly as with the local backend.
"""

from __future__ import annotations

import multiprocessing
import time
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
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


class _Pool(Protocol):
    def submit(self, fn: Callable[..., Any], *args: Any) -> Any: ...

    def wait(self, pending: list[Any]) -> list[Any]:
        """Some finished handles among ``pending``."""
        ...

    def result(self, handle: Any) -> Any: ...


class _ProcessPool:
    def __init__(self, pool: ProcessPoolExecutor) -> None:
        self.pool = pool

    def submit(self, fn: Callable[..., Any], *args: Any) -> Any:
        return self.pool.submit(_logged, fn, *args)

    def wait(self, pending: list[Any]) -> list[Any]:
        return list(wait(pending, return_when=FIRST_COMPLETED)[0])

    def result(self, handle: Any) -> Any:
        return handle.result()


class _RayPool:
    def __init__(self, ray: Any) -> None:
        self.ray = ray
        self.remote = ray.remote(num_cpus=1, max_retries=0)(_logged)

    def submit(self, fn: Callable[..., Any], *args: Any) -> Any:
        return self.remote.remote(fn, *args)  # _logged(fn, log, ...) on a Ray worker

    def wait(self, pending: list[Any]) -> list[Any]:
        done, _ = self.ray.wait(pending, num_returns=1)
        return list(done)

    def result(self, handle: Any) -> Any:
        return self.ray.get(handle)


def run_trials(
    sweep: SweepLike,
    trials: list[Trial],
    jobs: int,
    console: Console,
    seed_done: SeedDone,
    prepare: Prepare,
    run_variant: RunVariant,
    backend: str = "local",
    address: str | None = None,
) -> None:
    """Prepare every seed, then run its trials, on ``jobs`` worker processes (or as Ray tasks);
    ``seed_done(seed, rows)`` gets each seed's rows in variant order once all of them are in."""
    if backend == "ray":
        try:
            import ray
        except ImportError:
            raise RmioError(
                "--backend ray needs Ray: pip install 'rmio[ray]' (from a checkout: "
                "pip install -c constraints.txt -e '.[ray]')"
            ) from None
        started = not ray.is_initialized()
        if started:
            ray.init(address=address, include_dashboard=False, log_to_driver=False)
        try:
            where = address or f"a local Ray with {int(ray.cluster_resources().get('CPU', 0))} CPUs"
            _schedule(_RayPool(ray), where, sweep, trials, console, seed_done, prepare, run_variant)
        finally:
            if started:
                ray.shutdown()
        return
    ctx = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=jobs, mp_context=ctx) as pool:
        where = f"{jobs} worker processes"
        _schedule(
            _ProcessPool(pool), where, sweep, trials, console, seed_done, prepare, run_variant
        )


def _schedule(
    pool: _Pool,
    where: str,
    sweep: SweepLike,
    trials: list[Trial],
    console: Console,
    seed_done: SeedDone,
    prepare: Prepare,
    run_variant: RunVariant,
) -> None:
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

    pending: dict[Any, tuple[int, Trial | None]] = {}
    for seed in by_seed:
        handle = pool.submit(prepare, log_path(seed, "prepare"), sweep, seed)
        pending[handle] = (seed, None)
    console.print(
        f"{len(by_seed)} seed preparation(s), then {len(trials)} trial(s), on {where}; logs in "
        f"{sweep.out}/seed<S>/<trial>.log"
    )
    while pending:
        for handle in pool.wait(list(pending)):
            seed, trial = pending.pop(handle)
            what = f"seed {seed} " + ("preparation" if trial is None else trial.name)
            log = log_path(seed, "prepare" if trial is None else trial.name)
            try:
                row = pool.result(handle)
            except Exception as e:  # a trial's failure is reported, the others go on
                failures.append(f"{what}: {type(e).__name__}: {e} (log: {log})")
                console.print(f"[{elapsed()}] [red]{what} failed[/red]: {e}")
                continue
            if trial is None:
                console.print(f"[{elapsed()}] {what} done")
                for t in by_seed[seed]:
                    h = pool.submit(run_variant, log_path(seed, t.name), sweep, seed, t.index)
                    pending[h] = (seed, t)
                continue
            console.print(
                f"[{elapsed()}] {what} done: L_rec {row['lrec_lost']:.4f}, "
                f"AUC {row['auc_mean']:.1f}"
            )
            rows[seed][trial.index] = row
            if len(rows[seed]) == len(by_seed[seed]):
                seed_done(seed, [rows[seed][k] for k in sorted(rows[seed])])
    if failures:
        raise RmioError(
            f"{len(failures)} stage(s) of the sweep failed (re-run the same command to retry "
            "them):\n  " + "\n  ".join(failures)
        )
