"""Swarm runtime benchmark: reconstruction round against its floor, step overhead, bytes, largest
swarm.

    python bench/swarm_bench.py                 # everything (several minutes on 2 cores)
    python bench/swarm_bench.py --quick         # fewer steps, fewer swarm sizes
    python bench/swarm_bench.py --bundle DIR    # a real bundle for the 6-agent rows (else tiny
                                                # random ones)

Bundles: tiny randomly initialised ones (rmio.testing.tiny_bundle, needs torch) with history window
l = 20 for HalfCheetah 6x1 (6 agents) and ManySegmentSwimmer Nx2 (N agents). The floor of a round is
measured piece by piece with the same transport and codec: one gather round trip to n - 1 echo
processes, one world-model window replay (l + 1 steps), one coordinator-to-agent message (half a
round trip). Two skeleton swarms (bench/swarm_skeleton.py) give the floor of a whole streamed round
when every process wakes for every step: the same processes and messages doing nothing else, and the
same plus the compute a round cannot avoid (environment, actors, one world-model step). The round
and its floors are measured over ZeroMQ (tcp) and over the UDP transport, which wakes one thread per
message instead of three. Longer runs then compare the streamed incremental round over tcp, ipc (the
launcher's default) and udp. Everything runs on this machine over loopback; other load on it shows
in every number.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from rmio.testing import launch, tiny_bundle


def pct(values: list[float]) -> tuple[float, float]:
    arr = np.asarray(values, np.float64)
    return float(np.percentile(arr, 50)), float(np.percentile(arr, 99))


# -- floors ---------------------------------------------------------------------------------


BIND = {"tcp": "tcp://127.0.0.1:*", "udp": "udp://127.0.0.1:0"}

ECHO = """
import sys, time
from rmio.runtime.transport import make_node
import numpy as np
name, ep_ctl, obs_dim, bind = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
node = make_node(name, bind, lambda s: True)
node.connect("ctl", ep_ctl)
while not node.send("ctl", "REGISTER", role="agent", endpoint=node.endpoint, pid=0):
    node.poll(10)
obs, act = np.zeros((1, obs_dim), np.float32), np.zeros((1, 1), np.float32)
while True:
    for m in node.poll(1000):
        if m.type == "GATHER":
            t = m["step"]
            node.send("ctl", "HISTORY", {"obs": obs, "act": act}, ep=0, step=t, epoch=m["epoch"],
                      obs_from=t, act_from=t - 1, seen=[True], known=[True], push=False)
        elif m.type == "RECON":
            node.send("ctl", "HB", epoch=0, leader=0)
        elif m.type == "BYE":
            node.close()
            sys.exit(0)
"""


def floors(
    n: int, bundle: Path, rounds: int, transport: str = "tcp"
) -> dict[str, tuple[float, float]]:
    """Gather round trip to n - 1 processes, a window replay, and a one-way message, each alone
    (ms)."""
    from rmio.runtime.models import WorldModelRunner
    from rmio.runtime.transport import make_node

    wm = WorldModelRunner(bundle)
    man = wm.manifest
    d, window = man.spec.obs_dim, man.history_window
    ctl = make_node("ctl", BIND[transport], lambda s: True)
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", ECHO, f"a{i}", ctl.endpoint, str(d), BIND[transport]]
        )
        for i in range(1, n)
    ]
    try:
        peers = set()
        deadline = time.monotonic() + 60
        while len(peers) < n - 1 and time.monotonic() < deadline:
            for m in ctl.poll(100):
                if m.type == "REGISTER":
                    ctl.connect(m.src, m["endpoint"])
                    peers.add(m.src)
        time.sleep(0.3)
        gather, one_way = [], []
        for k in range(rounds + 20):
            start = time.perf_counter()
            for p in peers:
                while not ctl.send(
                    p, "GATHER", ep=0, step=k + 1, epoch=1, obs_from=k + 1, act_from=k, stream=-1
                ):
                    ctl.poll(1)
            got = 0
            while got < len(peers):
                got += sum(m.type == "HISTORY" for m in ctl.poll(100))
            if k >= 20:
                gather.append((time.perf_counter() - start) * 1e3)
            start = time.perf_counter()
            ctl.send(
                "a1", "RECON", {"obs": np.zeros(d, np.float32)}, ep=0, step=k, epoch=1, start=0
            )
            while not any(m.type == "HB" for m in ctl.poll(100)):
                pass
            if k >= 20:
                one_way.append((time.perf_counter() - start) * 1e3 / 2)
        for p in peers:
            ctl.send(p, "BYE", reason="bench done")
    finally:
        for proc in procs:
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
        ctl.close()
    rng = np.random.default_rng(0)
    T = window + 1
    obs = rng.normal(size=(T, n, d)).astype(np.float32)
    acts = rng.uniform(-1, 1, size=(T, n, man.spec.action_dim)).astype(np.float32)
    masks = (rng.random((T, n)) > 0.3).astype(np.float32)
    replay, step = [], []
    state = wm.initial_state(1)
    for k in range(rounds + 20):
        start = time.perf_counter()
        wm.replay(obs, acts, masks)
        mid = time.perf_counter()
        state, _ = wm.replay(obs[-1:], acts[-1:], masks[-1:], state)
        if k >= 20:
            replay.append((mid - start) * 1e3)
            step.append((time.perf_counter() - mid) * 1e3)
    return {
        "gather_rtt": pct(gather),
        "wm_window_replay": pct(replay),
        "wm_one_step": pct(step),
        "one_way_message": pct(one_way),
        "obs_dim": d,
    }


def bare_actor(bundle: Path, calls: int = 2000) -> tuple[float, float]:
    from rmio.runtime.models import ActorRunner

    actor = ActorRunner(bundle)
    obs = np.zeros(actor.manifest.spec.obs_dim, np.float32)
    times = []
    for k in range(calls + 100):
        start = time.perf_counter()
        actor.act(obs, 0)
        if k >= 100:
            times.append((time.perf_counter() - start) * 1e3)
    return pct(times)


# -- the table ------------------------------------------------------------------------------


def lat(report: dict[str, Any], key: str) -> tuple[float, float]:
    row = report["latency"][key]
    return (row["p50_ms"], row["p99_ms"]) if row["n"] else (float("nan"), float("nan"))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument(
        "--bundle", type=Path, default=None, help="real 6-agent bundle (default: tiny random, l=20)"
    )
    parser.add_argument("--quick", action="store_true")
    parser.add_argument(
        "--out", type=Path, default=Path(tempfile.gettempdir()) / "rmio-swarm-bench"
    )
    parser.add_argument(
        "--sizes", default="6,10,14,18,24,32", help="swarm sizes for the 20 steps/s search"
    )
    parser.add_argument(
        "--sections",
        default="rounds,transport,overhead,bytes,sync,scale",
        help="comma-separated subset of rounds, transport, overhead, bytes, sync, scale",
    )
    args = parser.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    args.out.mkdir(parents=True, exist_ok=True)
    steps = 100 if args.quick else 300
    rounds = 100 if args.quick else 300
    sections = set(args.sections.split(","))
    bundles = {
        6: args.bundle or tiny_bundle(args.out / "bundles", "mamujoco/HalfCheetah-6x1", 20),
        10: tiny_bundle(args.out / "bundles", "mamujoco/ManySegmentSwimmer-10x2", 20),
    }
    results: dict[str, Any] = {
        "machine": f"{os.cpu_count()} cores, load {os.getloadavg()[0]:.1f} at start"
    }
    print(
        f"# swarm bench ({results['machine']}), l = 20, loopback tcp unless said, {steps} steps "
        "per run\n"
    )

    if "rounds" in sections:
        rounds_table(bundles, args.out, steps, rounds, results)
    if "transport" in sections:
        transport_table(
            bundles, args.out, 300 if args.quick else 1000, 1 if args.quick else 2, results
        )
    if "overhead" in sections:
        overhead_table(bundles, args.out, steps, results)
    if "bytes" in sections:
        bytes_table(bundles, args.out, steps, results)
    if "sync" in sections:
        sync_table(bundles, args.out, steps, results)
    if "scale" in sections:
        scale_table(args, steps, results)
    (args.out / "results.json").write_text(json.dumps(results, indent=2, default=str))
    print(f"\nraw numbers: results.json in --out (default $TMPDIR/{args.out.name})")


ROUND_MODES = (
    ("tcp", "window", None),
    ("tcp", "incremental", None),
    ("tcp", "incremental", 0),
    ("udp", "incremental", None),
)
"""(transport, wm_mode, stream_steps): over ZeroMQ, streamed window replay, streamed incremental and
incremental pull-only (a GATHER every round, the first version's protocol); over UDP, streamed
incremental."""


def rounds_table(
    bundles: dict[int, Path], out: Path, steps: int, rounds: int, results: dict[str, Any]
) -> None:
    from rmio.skeleton import skeleton_round

    print(
        "## Reconstruction round (p_loss 0.2, free-running, deadline 100 ms) against its floors\n"
    )
    print(
        "| agents | transport | mode | round p50 / p99 ms | rounds without GATHER | gather RTT | "
        "wm replay (window / 1 step) | one-way msg | floor p50 / p99 ms | skeleton swarm p50 / p99 "
        "ms | skeleton + compute p50 / p99 ms |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for n, bundle in bundles.items():
        for transport in sorted({mode[0] for mode in ROUND_MODES}):
            fl = floors(n, bundle, rounds, transport)
            sk = skeleton_round(n, max(steps, 1000), obs_dim=fl["obs_dim"], transport=transport)
            skc = skeleton_round(n, max(steps, 1000), bundle=bundle, transport=transport)
            key = f"{n}_{transport}"
            (
                results[f"floor_{key}"],
                results[f"skeleton_{key}"],
                results[f"skeleton_compute_{key}"],
            ) = fl, sk, skc
            for _, mode, stream in (m for m in ROUND_MODES if m[0] == transport):
                name = f"{mode}, {'pull only' if stream == 0 else 'streamed'}"
                rep = launch(
                    bundle,
                    out / f"round-{n}-{transport}-{mode}-{stream}",
                    steps=steps,
                    transport=transport,
                    wm_mode=mode,
                    stream_steps=stream,
                    loss={"model": "bernoulli", "p_loss": 0.2},
                )
                r = lat(rep, "reconstruction_round (blind agent)")
                ev = rep["events"]
                wm_key = "wm_window_replay" if mode == "window" else "wm_one_step"
                floor = tuple(
                    fl["gather_rtt"][i] + fl[wm_key][i] + fl["one_way_message"][i] for i in (0, 1)
                )
                no_gather = ev.get("agents.rounds_without_gather", 0) / max(
                    ev.get("agents.rounds", 0), 1
                )
                results[f"round_{key}_{mode}_{stream}"] = {
                    "round": r,
                    "floor": floor,
                    "no_gather": no_gather,
                    "misses": ev.get("agents.recon_miss", 0),
                }
                print(
                    f"| {n} | {transport} | {name} | {r[0]:.2f} / {r[1]:.2f} | "
                    f"{100 * no_gather:.0f}% | {fl['gather_rtt'][0]:.2f} / "
                    f"{fl['gather_rtt'][1]:.2f} | {fl['wm_window_replay'][0]:.2f} / "
                    f"{fl['wm_one_step'][0]:.3f} | {fl['one_way_message'][0]:.3f} | {floor[0]:.2f} "
                    f"/ {floor[1]:.2f} | {sk['p50']:.2f} / {sk['p99']:.2f} | {skc['p50']:.2f} / "
                    f"{skc['p99']:.2f} |"
                )


def transport_table(
    bundles: dict[int, Path], out: Path, steps: int, repeats: int, results: dict[str, Any]
) -> None:
    """Longer runs (3 episodes of ``steps``) of the streamed incremental round, tcp, ipc and udp
    alternating, so that host load hits all alike; each run shows the share of CPU time the
    hypervisor took (steal)."""
    from rmio.runtime.timeline import cpu_ticks, steal_percent

    print(
        f"\n## Streamed incremental round by transport (p_loss 0.2, {3 * steps} steps per run, "
        "runs alternating)\n"
    )
    print("| agents | run | transport | round p50 / p99 ms | rounds | steps/s | host steal |")
    print("|---|---|---|---|---|---|---|")
    for n, bundle in bundles.items():
        for k in range(repeats):
            for transport in ("tcp", "ipc", "udp"):
                ticks = cpu_ticks()
                rep = launch(
                    bundle,
                    out / f"transport-{n}-{transport}-{k}",
                    steps=steps,
                    transport=transport,
                    wm_mode="incremental",
                    loss={"model": "bernoulli", "p_loss": 0.2},
                )
                share = steal_percent(ticks, cpu_ticks())
                steal = "?" if share is None else f"{share:.1f}%"
                r = lat(rep, "reconstruction_round (blind agent)")
                count = rep["events"].get("agents.recon_received", 0)
                results[f"transport_{n}_{transport}_{k}"] = {
                    "round": r,
                    "steal": steal,
                    "rounds": count,
                }
                print(
                    f"| {n} | {k + 1} | {transport} | {r[0]:.2f} / {r[1]:.2f} | {count} | "
                    f"{rep['env_steps'] / rep['seconds']:.0f} | {steal} |"
                )


def overhead_table(
    bundles: dict[int, Path], out: Path, steps: int, results: dict[str, Any]
) -> None:
    print(
        "\n## Agent step overhead at p_loss 0 (env host: STEP sent to ACTION received) against a "
        "bare actor call\n"
    )
    print(
        "| agents | decision p50 / p99 ms | bare onnxruntime actor p50 / p99 ms | overhead p50 ms |"
    )
    print("|---|---|---|---|")
    for n, bundle in bundles.items():
        rep = launch(
            bundle,
            out / f"p0-{n}",
            steps=steps,
            transport="tcp",
            loss={"model": "bernoulli", "p_loss": 0.0},
        )
        d = lat(rep, "decision_observing (env host)")
        b = bare_actor(bundle)
        results[f"overhead_{n}"] = {"decision": d, "bare": b}
        print(f"| {n} | {d[0]:.2f} / {d[1]:.2f} | {b[0]:.3f} / {b[1]:.3f} | {d[0] - b[0]:.2f} |")


def bytes_table(bundles: dict[int, Path], out: Path, steps: int, results: dict[str, Any]) -> None:
    print(
        "\n## Bytes per env step between agents (protocol; heartbeats apart) against the "
        "centralised baseline\n"
    )
    print(
        "| agents | p_loss | protocol msgs | protocol bytes (payload) | heartbeat msgs / bytes | "
        "baseline msgs | baseline bytes (payload) | protocol / baseline bytes (payload) |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for n, bundle in bundles.items():
        for p in (0.0, 0.2, 0.5, 1.0):
            rep = launch(
                bundle,
                out / f"bytes-{n}-{p}",
                steps=steps,
                transport="tcp",
                loss={"model": "bernoulli", "p_loss": p},
            )
            cat = rep["traffic_by_category"]
            pr = cat.get(
                "protocol",
                {"msgs_per_step": 0.0, "bytes_per_step": 0.0, "payload_bytes_per_step": 0.0},
            )
            hb = cat.get("liveness", {"msgs_per_step": 0.0, "bytes_per_step": 0.0})
            base = rep["centralised_baseline"]
            results[f"bytes_{n}_{p}"] = {"protocol": pr, "liveness": hb, "baseline": base}
            print(
                f"| {n} | {p} | {pr['msgs_per_step']:.2f} | {pr['bytes_per_step']:.0f} "
                f"({pr['payload_bytes_per_step']:.0f}) | {hb['msgs_per_step']:.1f} / "
                f"{hb['bytes_per_step']:.0f} | {base['msgs_per_step']:.0f} | "
                f"{base['bytes_per_step']:.0f} ({base['payload_bytes_per_step']:.0f}) | "
                f"{rep['protocol_vs_baseline_bytes']:.3f} "
                f"({rep['protocol_vs_baseline_payload']:.3f}) |"
            )


def sync_table(bundles: dict[int, Path], out: Path, steps: int, results: dict[str, Any]) -> None:
    print("\n## Incremental history sync against resending whole windows (p_loss 0.5)\n")
    print(
        "| agents | history bytes per step: incremental, streamed | incremental, pull only | whole "
        "windows | whole / streamed | whole / pull only |"
    )
    print("|---|---|---|---|---|---|")
    for n, bundle in bundles.items():
        sizes = []
        for full, stream in ((False, None), (False, 0), (True, 0)):
            rep = launch(
                bundle,
                out / f"sync-{n}-{full}-{stream}",
                steps=steps,
                transport="tcp",
                full_resync=full,
                stream_steps=stream,
                loss={"model": "bernoulli", "p_loss": 0.5},
            )
            sizes.append(
                sum(
                    rep["traffic"].get(t, {"bytes_per_step": 0.0})["bytes_per_step"]
                    for t in ("GATHER", "STREAM", "HISTORY")
                )
            )
        results[f"sync_{n}"] = sizes
        print(
            f"| {n} | {sizes[0]:.0f} | {sizes[1]:.0f} | {sizes[2]:.0f} | "
            f"{sizes[2] / max(sizes[0], 1e-9):.1f}x | {sizes[2] / max(sizes[1], 1e-9):.1f}x |"
        )


def scale_table(args: argparse.Namespace, steps: int, results: dict[str, Any]) -> None:
    print(
        "\n## Largest swarm at 20 steps/s without deadline misses (ManySegmentSwimmer Nx2, p_loss "
        "0.2, deadline 50 ms)\n"
    )
    print(
        "| agents | deadline misses | reconstruction misses | round p50 / p99 ms | achieved "
        "steps/s |"
    )
    print("|---|---|---|---|---|")
    sizes = [int(x) for x in args.sizes.split(",")][: 3 if args.quick else None]
    best = best_clean = None
    clean = True
    for n in sizes:
        bundle = tiny_bundle(args.out / "bundles", f"mamujoco/ManySegmentSwimmer-{n}x2", 20)
        rep = launch(
            bundle,
            args.out / f"rate-{n}",
            steps=steps // 2 if args.quick else 200,
            transport="tcp",
            rate_hz=20.0,
            step_deadline_ms=50.0,
            loss={"model": "bernoulli", "p_loss": 0.2},
        )
        ev = rep["events"]
        misses, rmiss = ev.get("deadline_misses", 0), ev.get("agents.recon_miss", 0)
        r = lat(rep, "reconstruction_round (blind agent)")
        rate = rep["env_steps"] / rep["seconds"]
        results[f"rate_{n}"] = {
            "deadline_misses": misses,
            "recon_misses": rmiss,
            "round": r,
            "steps_per_s": rate,
        }
        print(f"| {n} | {misses} | {rmiss} | {r[0]:.2f} / {r[1]:.2f} | {rate:.1f} |")
        if misses or rate < 19.5:
            break
        best = n
        clean = clean and rmiss == 0
        best_clean = n if clean else best_clean
    results["largest_at_20hz"] = best
    results["largest_at_20hz_no_recon_miss"] = best_clean
    print(
        f"\nlargest swarm at 20 steps/s with no env deadline miss: {best} agents "
        f"(with no reconstruction miss either: {best_clean})"
    )


if __name__ == "__main__":
    main()
