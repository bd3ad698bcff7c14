"""Opt-in event timeline of a swarm process (``RMIO_TRACE=DIR``): where a reconstruction round's
time goes.

A process started with RMIO_TRACE set records (monotonic ns, event, values...) at the milestones of
a step (STEP fan-out and receipt, streamed push sent and received, world model started, RECONs
sent and received, ACTION sent and received, every wake-up of the event loop, every garbage
collection, each thread's scheduler counters when the loop starts and ends) and writes them to
``DIR/<name>.json`` when it exits; ``bench/swarm_timeline.py`` lines them up against the env host's
fan-out. The clock is system-wide, so the processes of one machine compare. When off (the default)
a milestone costs one attribute test at its call site.
"""

from __future__ import annotations

import gc
import json
import os
import threading
import time
from pathlib import Path

ENABLED = bool(os.environ.get("RMIO_TRACE"))
_events: list[tuple] = []


def mark(event: str, *values: int | bool | str) -> None:
    _events.append((time.monotonic_ns(), event, *values))


def watch_gc() -> None:
    """Also record every garbage collection: (ns at its end, "gc", generation, duration us, objects
    collected)."""
    started = [0]

    def on_gc(phase: str, info: dict) -> None:
        if phase == "start":
            started[0] = time.monotonic_ns()
        else:
            mark(
                "gc",
                info["generation"],
                (time.monotonic_ns() - started[0]) // 1000,
                info["collected"],
            )

    gc.callbacks.append(on_gc)


def sched_snapshot() -> None:
    """Record, for every thread of this process, its CPU time, its time waiting for a CPU while
    runnable, and its time slices (Linux ``/proc/self/task/*/schedstat``): (ns, "sched", thread, cpu
    ns, wait ns, slices), thread = "loop" for the calling (event-loop) thread, else "name/tid". Two
    snapshots tell whether a process's time went into work or into a queue for the CPU."""
    try:
        tids = os.listdir("/proc/self/task")
    except OSError:  # not Linux
        return
    for tid in tids:
        try:
            comm = Path(f"/proc/self/task/{tid}/comm").read_text().strip()
            cpu, wait, slices = (
                int(x) for x in Path(f"/proc/self/task/{tid}/schedstat").read_text().split()[:3]
            )
        except (OSError, ValueError):  # the thread ended, or no schedstat in this kernel
            continue
        mark(
            "sched",
            "loop" if int(tid) == threading.get_native_id() else f"{comm}/{tid}",
            cpu,
            wait,
            slices,
        )


def dump(name: str) -> None:
    if ENABLED and _events:
        out = Path(os.environ["RMIO_TRACE"])
        out.mkdir(parents=True, exist_ok=True)
        (out / f"{name}.json").write_text(json.dumps(_events))


def cpu_ticks() -> list[int] | None:
    """The machine's CPU time counters (Linux /proc/stat), to tell how much the host took from this
    VM."""
    try:
        return [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    except (OSError, ValueError):
        return None


def steal_percent(before: list[int] | None, after: list[int] | None) -> float | None:
    """Share (%) of the run's CPU time the hypervisor gave to others (steal, the 8th counter), when
    known."""
    if before is None or after is None or len(before) < 8:
        return None
    delta = [b - a for a, b in zip(before, after, strict=True)]
    return 100 * delta[7] / max(1, sum(delta))
