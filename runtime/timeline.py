"""Opt-in event timeline of a swarm process (``RMIO_TRACE=DIR``): where a reconstruction round's time goes.

A process started with RMIO_TRACE set records (monotonic ns, event, values...) at the milestones of
a step (STEP fan-out and receipt, streamed push sent and received, world model started, RECONs
sent and received, ACTION sent and received, every wake-up of the event loop, every garbage
collection) and writes them to ``DIR/<name>.json`` when it exits; ``bench/swarm_timeline.py``
lines them up against the env host's fan-out. The clock is system-wide, so the processes of one
machine compare. When off (the default) a milestone costs one attribute test at its call site.
"""

from __future__ import annotations

import gc
import json
import os
import time
from pathlib import Path

ENABLED = bool(os.environ.get("RMIO_TRACE"))
_events: list[tuple] = []


def mark(event: str, *values: int | bool | str) -> None:
    _events.append((time.monotonic_ns(), event, *values))


def watch_gc() -> None:
    """Also record every garbage collection: (ns at its end, "gc", generation, duration us, objects collected)."""
    started = [0]

    def on_gc(phase: str, info: dict) -> None:
        if phase == "start":
            started[0] = time.monotonic_ns()
        else:
            mark("gc", info["generation"], (time.monotonic_ns() - started[0]) // 1000, info["collected"])

    gc.callbacks.append(on_gc)


def dump(name: str) -> None:
    if ENABLED and _events:
        out = Path(os.environ["RMIO_TRACE"])
        out.mkdir(parents=True, exist_ok=True)
        (out / f"{name}.json").write_text(json.dumps(_events))
