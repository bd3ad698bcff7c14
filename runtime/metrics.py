"""Metrics of a swarm run, defined once: latency samples, per-type traffic, the centralised
baseline, the report.

Traffic is what each process sent (``tx_*`` counters of runtime.node.TrafficStats), summed over
processes and divided by env steps. The centralised baseline is every agent sending its
observation and its action to every other agent at every step: n (n - 1) messages of
``obs_dim * 4 + action bytes`` payload per step.
"""

from __future__ import annotations

import json
from collections import Counter, defaultdict, deque
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from rmio.runtime.node import category
from rmio.runtime.wire import STATS_SAMPLES

SAMPLES_KEPT = 100_000
"""Latency samples a process keeps per name: the most recent ones, so a long run's memory stays
bounded (a STATS message carries at most these anyway)."""


class Samples:
    """Named latency samples in microseconds (float32 arrays travel in STATS messages); each name
    keeps its most recent ``cap`` samples."""

    def __init__(self, cap: int = SAMPLES_KEPT) -> None:
        self.data: dict[str, deque[float]] = defaultdict(lambda: deque(maxlen=cap))

    def add(self, name: str, us: float) -> None:
        self.data[name].append(float(us))

    def arrays(self, limit: int = SAMPLES_KEPT) -> tuple[list[str], dict[str, np.ndarray]]:
        """(names, arrays) for a STATS message: its ``names`` field and its arrays s0, s1, ... in
        that order."""
        names = sorted(self.data)[: len(STATS_SAMPLES)]
        return names, {
            k: np.asarray(self.data[n], np.float32)[-limit:]
            for k, n in zip(STATS_SAMPLES, names, strict=False)
        }


def pctl(values: Iterable[float], q: float) -> float | None:
    arr = np.asarray(list(values), np.float64)
    return None if arr.size == 0 else float(np.percentile(arr, q))


def summary(values: Iterable[float]) -> dict[str, Any]:
    arr = np.asarray(list(values), np.float64)
    if arr.size == 0:
        return {"n": 0, "p50_ms": None, "p99_ms": None, "max_ms": None}
    return {
        "n": int(arr.size),
        "p50_ms": float(np.percentile(arr, 50)) / 1e3,
        "p99_ms": float(np.percentile(arr, 99)) / 1e3,
        "max_ms": float(arr.max()) / 1e3,
    }


def traffic_table(
    per_process: dict[str, dict[str, int]], steps: int
) -> dict[str, dict[str, float]]:
    """Per message type: messages and bytes per env step summed over every process that sent it."""
    msgs: Counter = Counter()
    size: Counter = Counter()
    payload: Counter = Counter()
    for counts in per_process.values():
        for key, value in counts.items():
            kind, _, mtype = key.partition(".")
            if kind == "tx_msgs":
                msgs[mtype] += value
            elif kind == "tx_bytes":
                size[mtype] += value
            elif kind == "tx_payload":
                payload[mtype] += value
    steps = max(steps, 1)
    return {
        t: {
            "category": category(t),
            "messages": int(msgs[t]),
            "msgs_per_step": msgs[t] / steps,
            "bytes_per_step": size[t] / steps,
            "payload_bytes_per_step": payload[t] / steps,
        }
        for t in sorted(msgs)
    }


def centralised_baseline(
    n: int, obs_dim: int, action_bytes: int, message_bytes: int
) -> dict[str, float]:
    """``message_bytes``: one observation and action in this codec (header included), for a
    like-for-like total."""
    pairs = n * (n - 1)
    return {
        "msgs_per_step": float(pairs),
        "payload_bytes_per_step": float(pairs * (obs_dim * 4 + action_bytes)),
        "bytes_per_step": float(pairs * message_bytes),
    }


def category_totals(table: dict[str, dict[str, float]]) -> dict[str, dict[str, float]]:
    out: dict[str, dict[str, float]] = {}
    for row in table.values():
        tot = out.setdefault(
            row["category"],
            {"msgs_per_step": 0.0, "bytes_per_step": 0.0, "payload_bytes_per_step": 0.0},
        )
        for key in tot:
            tot[key] += row[key]
    return out


def write_report(report: dict[str, Any], out_dir: str | Path) -> tuple[Path, Path]:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    jpath = out / "report.json"
    jpath.write_text(json.dumps(report, indent=2, default=jsonable))
    mpath = out / "report.md"
    mpath.write_text(markdown(report))
    return jpath, mpath


def jsonable(x: Any) -> Any:
    if isinstance(x, np.generic):
        return x.item()
    if isinstance(x, np.ndarray):
        return x.tolist()
    raise TypeError(type(x).__name__)


def _f(x: Any, digits: int = 2) -> str:
    if x is None:
        return "-"
    if isinstance(x, float):
        return f"{x:.{digits}f}"
    return str(x)


def markdown(report: dict[str, Any]) -> str:
    s = report["settings"]
    lines = [
        f"# swarm run: {report['scenario']}",
        "",
        f"{report['n_agents']} agents, transport {s['transport']}, world model {s['world_model']} "
        f"({s['recon']}, {s['wm_mode']}), loss {s['loss']}, step deadline {s['step_deadline_ms']} "
        f"ms, {report['env_steps']} env steps in {_f(report['seconds'], 1)} s",
        "",
        *(
            ["**Interrupted** (Ctrl-C): what ran until then; the last episode may stop early.", ""]
            if report.get("interrupted")
            else []
        ),
        "## Episodes",
        "",
        "| episode | return | steps | lost obs | default actions |",
        "|---|---|---|---|---|",
    ]
    for ep in report["episodes"]:
        lines.append(
            f"| {ep['episode']} | {_f(ep['return'])} | {ep['steps']} | "
            f"{_f(100 * ep['lost_fraction'], 1)}% | {ep['default_actions']} |"
        )
    base = report.get("baselines") or {}
    if base:
        lines += [
            "",
            "## Return: swarm against in-process evaluation (same seeds and loss masks)",
            "",
            "| run | mean return |",
            "|---|---|",
            f"| swarm ({s['recon']}) | {_f(report['mean_return'])} |",
        ]
        for name, row in base.items():
            lines.append(f"| in-process {name} | {_f(row['mean_return'])} |")
    lines += [
        "",
        "## Communication per env step",
        "",
        "| message | category | messages | bytes | payload bytes |",
        "|---|---|---|---|---|",
    ]
    for mtype, row in report["traffic"].items():
        lines.append(
            f"| {mtype} | {row['category']} | {_f(row['msgs_per_step'], 3)} | "
            f"{_f(row['bytes_per_step'], 1)} | {_f(row['payload_bytes_per_step'], 1)} |"
        )
    c, b = report["traffic_by_category"], report["centralised_baseline"]
    proto = c.get(
        "protocol", {"msgs_per_step": 0.0, "payload_bytes_per_step": 0.0, "bytes_per_step": 0.0}
    )
    lines += [
        "",
        f"Loss-handling protocol: {_f(proto['msgs_per_step'], 3)} messages and "
        f"{_f(proto['bytes_per_step'], 1)} bytes ({_f(proto['payload_bytes_per_step'], 1)} "
        f"payload) per step; centralised baseline: {_f(b['msgs_per_step'], 0)} messages and "
        f"{_f(b['bytes_per_step'], 0)} bytes ({_f(b['payload_bytes_per_step'], 0)} payload) per "
        f"step. Protocol / baseline: {_f(report['protocol_vs_baseline_bytes'], 3)} of the bytes, "
        f"{_f(report['protocol_vs_baseline_payload'], 3)} of the payload.",
        "",
    ]
    lines += ["## Latency", "", "| what | n | p50 ms | p99 ms | max ms |", "|---|---|---|---|---|"]
    for name, row in report["latency"].items():
        lines.append(
            f"| {name} | {row['n']} | {_f(row['p50_ms'], 3)} | {_f(row['p99_ms'], 3)} | "
            f"{_f(row['max_ms'], 3)} |"
        )
    lines += ["", "## Faults and protocol events", "", "| counter | value |", "|---|---|"]
    for key, value in report["events"].items():
        lines.append(f"| {key} | {value} |")
    return "\n".join(lines) + "\n"
