"""World-model benchmarks: update throughput, peak memory, ONNX step latency, reconstruction tables.

    python bench/world_model.py speed [--device cpu] [--updates 20] [--threads 2] [--path stepwise]
    python bench/world_model.py paths [--scenario halfcheetah_6x1] [--updates 20]
    python bench/world_model.py latency
    python bench/world_model.py reconstruction RUN_DIR [RUN_DIR ...]

``speed`` times gradient updates of the real-budget architecture (configs' world_model section)
on HalfCheetah 6x1 and ManySegmentSwimmer 10x2, each in a fresh subprocess so that peak memory
(max RSS) is that run's own. ``paths`` compares, in one process and one update at a time in
turn (so that a load that comes and goes hits every variant alike), the ways of computing the same
update: the reference loop (``observe_stepwise``, the default), the loop of
``rmio.train.wm_fast`` (fewer operations per step), the same step under ``torch.compile``
(``world_model.train.compile``), on 1 and 2 torch threads; then batch against sequence length at
a fixed number of transitions. It first checks on one fixed batch that every variant's loss and
gradients agree with the reference's. ``latency`` exports a randomly
initialised model of the same size (latency does not depend on the weights) and times onnxruntime
on one thread: one step, batch 1, and a replay of a window of l = 20. ``reconstruction`` prints
L_rec on lost agents at each test-time p_mask from the ``eval_reconstruction.json`` of trained
runs.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

SCENARIOS = {
    "halfcheetah_6x1": "HalfCheetah 6x1 (6 agents)",
    "swimmer_10x2": "ManySegmentSwimmer 10x2 (10 agents)",
}


def machine() -> str:
    return (
        f"{platform.machine()}, {os.cpu_count()} cores, Python {sys.version.split()[0]}, "
        f"{time.strftime('%Y-%m-%d')}"
    )


def _speed_child(scenario: str, device: str, updates: int, threads: int, path: str) -> None:
    import torch

    from rmio.config import load_config
    from rmio.envs.collect import collect
    from rmio.envs.loss import LossConfig
    from rmio.train.wm_data import (
        SequenceSampler,
        observation_stats,
        sample_masks,
        world_model_loss,
    )
    from rmio.train.world_model import RMIOWorldModel

    torch.set_num_threads(threads)
    cfg = load_config(scenario, overrides=["env.episode_limit=200"])
    buf, _ = collect(cfg.env, LossConfig("none"), steps=1000, num_envs=1, seed=0)
    model = RMIOWorldModel(buf.spec, cfg.world_model.model, *observation_stats(buf)).to(device)
    model.observe_path = path
    sampler = SequenceSampler(buf, cfg.world_model.smoothing, device)
    opt = torch.optim.Adam(model.parameters(), lr=3e-4)
    rng, gen = np.random.default_rng(0), torch.Generator(device=device).manual_seed(0)
    tc = cfg.world_model.train
    t0 = 0.0
    for i in range(updates + 3):
        if i == 3:  # the first updates pay for allocator and kernel warm-up (and compilation)
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            t0 = time.perf_counter()
        b = sampler.sample(rng, tc.batch_size, tc.seq_len)
        loss, _ = world_model_loss(
            model, b, sample_masks(gen, tuple(b.obs.shape[:3]), 0.5, b.obs.device)
        )
        opt.zero_grad()
        loss.backward()
        opt.step()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    rate = updates / (time.perf_counter() - t0)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    gpu = torch.cuda.max_memory_allocated() / 2**20 if device.startswith("cuda") else 0.0
    params = sum(p.numel() for p in model.parameters())
    print(
        json.dumps(
            {
                "rate": rate,
                "peak_rss_mib": peak,
                "gpu_mib": gpu,
                "params": params,
                "batch": tc.batch_size,
                "seq_len": tc.seq_len,
            }
        )
    )


def speed(device: str, updates: int, threads: int, path: str = "stepwise") -> None:
    print(
        f"World-model updates per second ({device}, {threads} torch threads, {path} loop): "
        f"{machine()}\n"
    )
    print(
        "| scenario | params | batch x seq_len | updates/s | peak RSS (MiB) | peak GPU memory "
        "(MiB) |"
    )
    print("|---|---|---|---|---|---|")
    for scenario, label in SCENARIOS.items():
        proc = subprocess.run(
            [
                sys.executable,
                __file__,
                "_speed",
                scenario,
                device,
                str(updates),
                str(threads),
                path,
            ],
            capture_output=True,
            text=True,
            check=True,
        )
        r = json.loads(proc.stdout.strip().splitlines()[-1])
        gpu = f"{r['gpu_mib']:.0f}" if device.startswith("cuda") else "-"
        print(
            f"| {label} | {r['params']:,} | {r['batch']} x {r['seq_len']} | {r['rate']:.2f} | "
            f"{r['peak_rss_mib']:.0f} | {gpu} |"
        )


PATHS = ("stepwise", "fast", "compiled")
SHAPES = ((16, 24), (32, 12), (8, 48), (48, 8))


def _set_path(model: Any, path: str) -> None:
    model.observe_path = path


def _agreement(model: Any, batch: Any, mask: Any) -> dict[str, tuple[float, float]]:
    """|loss - reference loss| and the largest gradient difference relative to the reference's
    largest gradient entry of the same parameter, per path, on one batch and random seed."""
    import torch

    from rmio.train.wm_data import world_model_loss

    grads, losses = {}, {}
    for path in PATHS:
        _set_path(model, path)
        model.zero_grad()
        torch.manual_seed(123)
        loss, _ = world_model_loss(model, batch, mask)
        loss.backward()
        losses[path] = float(loss.detach())
        grads[path] = {k: p.grad.clone() for k, p in model.named_parameters()}
    ref = grads["stepwise"]
    return {
        path: (
            abs(losses[path] - losses["stepwise"]),
            max(
                float((g[k] - ref[k]).abs().max() / ref[k].abs().max().clamp(min=1e-12))
                for k in ref
            ),
        )
        for path, g in grads.items()
    }


def paths(scenario: str, updates: int) -> None:
    import torch

    from rmio.config import load_config
    from rmio.envs.collect import collect
    from rmio.envs.loss import LossConfig
    from rmio.train.wm_data import (
        SequenceSampler,
        observation_stats,
        sample_masks,
        world_model_loss,
    )
    from rmio.train.world_model import RMIOWorldModel

    torch.set_num_threads(1)
    cfg = load_config(scenario, overrides=["env.episode_limit=200"])
    buf, _ = collect(cfg.env, LossConfig("none"), steps=1000, num_envs=1, seed=0)
    torch.manual_seed(0)
    model = RMIOWorldModel(buf.spec, cfg.world_model.model, *observation_stats(buf))
    sampler = SequenceSampler(buf, cfg.world_model.smoothing)
    opt = torch.optim.Adam(model.parameters(), lr=3e-4)
    rng, gen = np.random.default_rng(0), torch.Generator().manual_seed(0)
    tc = cfg.world_model.train

    def update(path: str, threads: int, batch: int, length: int) -> tuple[float, float]:
        _set_path(model, path)
        torch.set_num_threads(threads)
        w0, c0 = time.perf_counter(), time.process_time()
        b = sampler.sample(rng, batch, length)
        loss, _ = world_model_loss(model, b, sample_masks(gen, tuple(b.obs.shape[:3]), 0.5, "cpu"))
        opt.zero_grad()
        loss.backward()
        opt.step()
        return time.perf_counter() - w0, time.process_time() - c0

    print(f"World-model update paths ({SCENARIOS[scenario]}, cpu): {machine()}\n")
    compile_s = update("compiled", 1, tc.batch_size, tc.seq_len)  # the first call compiles
    b = sampler.sample(rng, tc.batch_size, tc.seq_len)
    agree = _agreement(model, b, sample_masks(gen, tuple(b.obs.shape[:3]), 0.5, "cpu"))
    for _ in range(2):  # warm-up of every combination
        for path in PATHS:
            for threads in (1, 2):
                update(path, threads, tc.batch_size, tc.seq_len)
    combos = [(path, threads) for path in PATHS for threads in (1, 2)]
    times: dict[Any, list[tuple[float, float]]] = {c: [] for c in combos}
    for _ in range(updates):
        for path, threads in combos:
            times[path, threads].append(update(path, threads, tc.batch_size, tc.seq_len))
    print(
        f"Batch {tc.batch_size} x {tc.seq_len}; median of {updates} updates per row, the rows "
        "taking turns update by update. Agreement with the reference on one fixed batch: "
        "|loss difference| and the largest gradient difference relative to the largest gradient "
        f"of the same parameter. The compiled step's first update (compilation, empty cache) took "
        f"{compile_s[0]:.1f} s ({compile_s[1]:.1f} s CPU).\n"
    )
    print(
        "| path | torch threads | updates/s (wall) | ms per update (wall) | ms per update (CPU) | "
        "vs stepwise, 1 thread | loss diff | grad diff |"
    )
    print("|---|---|---|---|---|---|---|---|")
    base = float(np.median([w for w, _ in times["stepwise", 1]]))
    for path, threads in combos:
        wall = float(np.median([w for w, _ in times[path, threads]]))
        cpu = float(np.median([c for _, c in times[path, threads]]))
        dl, dg = agree[path]
        print(
            f"| {path} | {threads} | {1 / wall:.2f} | {wall * 1e3:.0f} | {cpu * 1e3:.0f} | "
            f"{base / wall:.2f}x | {dl:.1e} | {dg:.1e} |"
        )
    shape_times: dict[Any, list[float]] = {(p, s): [] for p in ("stepwise", "fast") for s in SHAPES}
    for _ in range(max(updates // 2, 5)):
        for path, shape in shape_times:
            shape_times[path, shape].append(update(path, 1, *shape)[0])
    print(
        "\nBatch against sequence length at the same number of transitions per update "
        f"(1 thread, median of {max(updates // 2, 5)} updates each):\n"
    )
    print("| path | batch x seq_len | updates/s | transitions/s |")
    print("|---|---|---|---|")
    for (path, (batch, length)), ts in shape_times.items():
        wall = float(np.median(ts))
        print(f"| {path} | {batch} x {length} | {1 / wall:.2f} | {batch * length / wall:.0f} |")


def latency(repeats: int = 300) -> None:
    import torch

    from rmio.config import load_config
    from rmio.envs import make_env
    from rmio.runtime.bundle import SCHEMA_VERSION, WM_INPUTS, WM_OUTPUTS, Manifest
    from rmio.runtime.models import WorldModelRunner
    from rmio.train.export import WorldModelStep, _random_inputs, export_onnx
    from rmio.train.world_model import RMIOWorldModel

    print(f"ONNX world-model step latency (onnxruntime CPU, 1 thread): {machine()}\n")
    print("| scenario | one step, batch 1: p50 / p99 (us) | window replay l=20: p50 / p99 (ms) |")
    print("|---|---|---|")
    for scenario, label in SCENARIOS.items():
        cfg = load_config(scenario)
        with make_env(cfg.env) as env:
            spec = env.spec
        torch.manual_seed(0)
        mean = np.zeros((spec.n_agents, spec.obs_dim), np.float32)
        model = RMIOWorldModel(spec, cfg.world_model.model, mean, np.ones_like(mean)).eval()
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp)
            export_onnx(
                WorldModelStep(model),
                _random_inputs(model, 2, torch.Generator().manual_seed(0)),
                out / "wm_step.onnx",
                WM_INPUTS,
                WM_OUTPUTS,
            )
            man = Manifest(
                SCHEMA_VERSION,
                spec,
                20,
                model.cfg.deter,
                model.stoch,
                model.act_width,
                mean.tolist(),
                np.ones_like(mean).tolist(),
                files={"wm_step": "wm_step.onnx"},
            )
            man.save(out)
            runner = WorldModelRunner(out, man)
            n, d = spec.n_agents, spec.obs_dim
            state = runner.initial_state(1)
            act = np.zeros((1, n, model.act_width), np.float32)
            obs = np.random.default_rng(0).normal(size=(1, n, d)).astype(np.float32)
            mask = np.ones((1, n), np.float32)
            mask[0, 0] = 0
            step_t = []
            for _ in range(repeats + 20):
                t0 = time.perf_counter()
                runner.step(state, act, obs, mask)
                step_t.append(time.perf_counter() - t0)
            step_t = np.array(step_t[20:]) * 1e6
            win_t = []
            window = np.repeat(obs, 20, axis=0)
            prev = np.zeros((20, n, spec.action_dim), np.float32)
            masks = np.repeat(mask, 20, axis=0)
            for _ in range(max(repeats // 5, 30)):
                t0 = time.perf_counter()
                runner.replay(window, prev, masks)
                win_t.append(time.perf_counter() - t0)
            win_t = np.array(win_t[5:]) * 1e3
        print(
            f"| {label} | {np.percentile(step_t, 50):.0f} / {np.percentile(step_t, 99):.0f} | "
            f"{np.percentile(win_t, 50):.2f} / {np.percentile(win_t, 99):.2f} |"
        )


def reconstruction(run_dirs: list[str], p_mask: float = 0.5) -> None:
    from rmio.config import load_config
    from rmio.envs.trajectory import TrajectoryBuffer

    print(f"Reconstruction of lost agents' observations on held-out episodes: {machine()}\n")
    print(
        f"L_rec = SmoothL1 on lost agents, normalised units, test-time p_mask {p_mask}; lower is "
        "better.\n"
    )
    print(
        "| run | scenario | fusion (obs/act) | data (env steps) | strategy | L_rec lost agents | "
        "L_rec all agents (decoder) | GPE | GCI |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for run in map(Path, run_dirs):
        res = json.loads((run / "eval_reconstruction.json").read_text())
        cfg = load_config(run / "config.yaml")
        k = res["p_masks"].index(p_mask)
        m = cfg.world_model.model
        steps = TrajectoryBuffer.load(run / "data" / "train.npz").meta.get("env_steps", "?")
        for name, row in res["strategies"].items():
            cells = [
                "-" if key not in row or row[key][k] is None else f"{row[key][k]:.4f}"
                for key in ("lrec_masked", "lrec_decoder_all", "gpe", "gci")
            ]
            print(
                f"| {run.name} | {cfg.env.scenario} | {'on' if m.obs_fusion else 'off'}/"
                f"{'on' if m.action_fusion else 'off'} | {steps} | {name} | "
                + " | ".join(cells)
                + " |"
            )


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "_speed":
        _speed_child(sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5]), sys.argv[6])
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="what", required=True)
    s = sub.add_parser("speed")
    s.add_argument("--device", default="cpu")
    s.add_argument("--updates", type=int, default=20)
    s.add_argument("--threads", type=int, default=2)
    s.add_argument("--path", default="stepwise", choices=PATHS)
    pa = sub.add_parser("paths")
    pa.add_argument("--scenario", default="halfcheetah_6x1", choices=sorted(SCENARIOS))
    pa.add_argument("--updates", type=int, default=20)
    sub.add_parser("latency")
    r = sub.add_parser("reconstruction")
    r.add_argument("run_dirs", nargs="+")
    r.add_argument("--p-mask", type=float, default=0.5)
    args = parser.parse_args()
    if args.what == "speed":
        speed(args.device, args.updates, args.threads, args.path)
    elif args.what == "paths":
        # compile from scratch, as a new machine would, not from an earlier run's cache
        with tempfile.TemporaryDirectory(prefix="inductor-") as cache:
            os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", cache)
            paths(args.scenario, args.updates)
    elif args.what == "latency":
        latency()
    else:
        reconstruction(args.run_dirs, args.p_mask)


if __name__ == "__main__":
    main()
