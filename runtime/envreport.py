"""The env host's report and step records, apart from its stepping loop (runtime/envhost.py).

``host`` is the :class:`~rmio.runtime.envhost.EnvHost` (not imported: the env host imports this)."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from rmio.runtime.journal import claim_summary
from rmio.runtime.metrics import category_totals, centralised_baseline, summary, traffic_table
from rmio.runtime.wire import encode, frames_size


def build_report(
    host: Any, episodes: list[dict[str, Any]], steps: int, seconds: float
) -> dict[str, Any]:
    """The run's report: traffic, latencies, events (the claim journal's elections included),
    episodes, every process's counters."""
    s = host.settings
    per_process = {name: st["counts"] for name, st in host.stats.items()}
    per_process["env"] = host.node.stats.flat()
    table = traffic_table(per_process, steps)
    by_cat = category_totals(table)
    action = host.codec.default()[None]
    probe = encode(
        "HISTORY",
        "a0",
        {"obs": np.zeros((1, host.spec.obs_dim), np.float32), "act": action},
        ep=0,
        step=1,
        epoch=1,
        obs_from=1,
        act_from=0,
        seen=[True],
        known=[True],
        push=True,
    )
    base = centralised_baseline(host.n, host.spec.obs_dim, action.nbytes, frames_size(probe))
    proto = by_cat.get("protocol", {"payload_bytes_per_step": 0.0, "bytes_per_step": 0.0})

    def pooled(name: str) -> list[float]:
        out: list[float] = []
        for st in host.stats.values():
            if name in st["samples"]:
                out += np.asarray(st["samples"][name], np.float64).tolist()
        return out

    latency = {
        "decision_observing (env host)": summary(
            host.samples.data.get("decision_observing_us", [])
        ),
        "decision_lost (env host)": summary(host.samples.data.get("decision_lost_us", [])),
        "reconstruction_round (blind agent)": summary(pooled("recon_round_us")),
        "coordinator_round": summary(pooled("coord_round_us")),
        "gather": summary(pooled("gather_us")),
        "world_model": summary(pooled("wm_us")),
        "actor_call": summary(pooled("actor_us")),
    }
    agent_counts: Counter = Counter()
    dropped: Counter = Counter()
    for counts in per_process.values():
        for key, value in counts.items():
            if key.startswith("agent."):
                agent_counts[key[len("agent.") :]] += value
            elif key.startswith("dropped."):
                dropped[key[len("dropped.") :]] += value
    events = {k: int(v) for k, v in sorted(host.counts.items())}
    events.update({f"agents.{k}": int(v) for k, v in sorted(agent_counts.items()) if k != "epoch"})
    # the journal counts the claims of processes that died too; the survivors' counters do not
    journal = claim_summary(s.out_dir)
    events["elections"] = max(int(agent_counts["claims"]), journal["elections"])
    events["reused_epochs"] = journal["reused_epochs"]
    events["two_coordinator_epochs"] = journal["two_coordinator_epochs"]
    events["stale_actions"] = int(host.counts["stale_actions"])
    events["final_epoch"] = int(host.view.epoch)
    events.update({f"dropped.{k}": int(v) for k, v in sorted(dropped.items())})
    report: dict[str, Any] = {
        "scenario": host.spec.name,
        "n_agents": host.n,
        "bundle": str(Path(s.bundle).resolve()),
        "settings": s.to_dict(),
        "env_steps": steps,
        "seconds": seconds,
        "episodes": episodes,
        "mean_return": float(np.mean([e["return"] for e in episodes])),
        "traffic": table,
        "traffic_by_category": by_cat,
        "centralised_baseline": base,
        "protocol_vs_baseline_payload": proto["payload_bytes_per_step"]
        / max(base["payload_bytes_per_step"], 1e-9),
        "protocol_vs_baseline_bytes": proto["bytes_per_step"] / max(base["bytes_per_step"], 1e-9),
        "latency": latency,
        "events": events,
        "processes": per_process,
    }
    return report


def save_records(host: Any) -> None:
    """The env host's step records (``record`` mode), for tests that compare runs exactly."""
    out = Path(host.settings.out_dir) / "records"
    out.mkdir(parents=True, exist_ok=True)
    r = host.records
    if not r:
        return
    np.savez(
        out / "env.npz",
        ep=np.array([x["ep"] for x in r]),
        t=np.array([x["t"] for x in r]),
        seq=np.array([x["seq"] for x in r]),
        time=np.array([x["time"] for x in r]),
        obs=np.stack([x["obs"] for x in r]),
        observed=np.stack([x["observed"] for x in r]),
        actions=np.stack([x["actions"] for x in r]),
        defaulted=np.stack([x["defaulted"] for x in r]),
    )
