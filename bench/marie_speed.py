"""MARIE's training update, written-out against fast paths (issue 23's speed-up), on one batch.

    python bench/marie_speed.py [--preset cpu] [--updates 8] [--threads 1] [--out FILE.md]

Builds MARIE at a preset on HalfCheetah 6x1 data (the random actor's, 2,000 steps; the update's
cost does not depend on the values), samples one training batch of ``world_model.train``'s size
(16 sequences of ``marie.seq_len`` + 1 = 21 rows), checks that the fast update's loss and
gradients equal the written-out one's on it with dropout off, then times whole updates (loss,
backward, clipping, AdamW step) of two copies of the model in turn, one of each per round, so
that a load that comes and goes hits both alike. The written-out path
(``marie_nets.reference_paths``) is the code before the speed-up. Prints a markdown table.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import os
import platform
import statistics
import sys
import time
from pathlib import Path


def _machine() -> str:
    load = os.getloadavg()[0]
    return (
        f"{platform.machine()}, {os.cpu_count()} cores, Python {sys.version.split()[0]}, "
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, load {load:.1f}"
    )


def _setup(preset: str):
    import numpy as np
    import torch

    from rmio.config import load_config
    from rmio.envs.collect import collect
    from rmio.envs.loss import LossConfig
    from rmio.train.marie_train import build_marie
    from rmio.train.wm_data import SequenceSampler, observation_stats

    cfg = load_config("halfcheetah_6x1", algo="marie", overrides=[f"marie.preset={preset}"])
    buf, _ = collect(cfg.env, LossConfig("none"), steps=2000, num_envs=1, seed=0)
    torch.manual_seed(0)
    model = build_marie(cfg, buf.spec, observation_stats(buf)).train()
    sampler = SequenceSampler(buf, cfg.world_model.smoothing, "cpu")
    batch = sampler.sample(np.random.default_rng(0), cfg.world_model.train.batch_size, 21)
    return cfg, model, batch


def _parity(model, batch) -> tuple[float, float]:
    """|loss difference| and the largest gradient difference relative to that tensor's largest
    gradient, fast against written-out, dropout off."""
    import torch

    from rmio.train.marie_nets import reference_paths

    base = copy.deepcopy(model)
    for mod in base.modules():
        if isinstance(mod, torch.nn.Dropout):
            mod.p = 0.0
    out = []
    for ref in (True, False):
        m = copy.deepcopy(base)
        torch.manual_seed(1)
        with reference_paths() if ref else contextlib.nullcontext():
            loss, _ = m.loss(batch)
            loss.backward()
        out.append(
            (loss.detach(), {n: p.grad for n, p in m.named_parameters() if p.grad is not None})
        )
    (l0, g0), (l1, g1) = out
    worst = max(
        float((g1[n] - g).abs().max() / g.abs().max().clamp_min(1e-12)) for n, g in g0.items()
    )
    return float((l1 - l0).abs()), worst


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--preset", default="cpu")
    ap.add_argument("--updates", type=int, default=8, help="timed updates of each path")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", type=Path, default=None, help="also write the table here")
    args = ap.parse_args()

    import torch

    from rmio.train.marie_nets import reference_paths
    from rmio.train.marie_train import _optimiser

    torch.set_num_threads(args.threads)
    cfg, model, batch = _setup(args.preset)
    dloss, dgrad = _parity(model, batch)
    paths = {"written-out (before)": reference_paths, "fast (after)": contextlib.nullcontext}
    runs = {}
    for name in paths:
        m = copy.deepcopy(model)
        runs[name] = (m, _optimiser(m, cfg), [])
    tcfg = cfg.world_model.train
    for i in range(args.updates + 1):
        for name, (m, opt, times) in runs.items():
            t0 = time.perf_counter()
            with paths[name]():
                loss, _ = m.loss(batch)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(m.parameters(), tcfg.grad_clip)
                opt.step()
            if i > 0:  # the first update of each pays for allocations
                times.append(time.perf_counter() - t0)
    b, s, n = batch.obs.shape[:3]
    params = sum(p.numel() for p in model.parameters())
    lines = [
        f"MARIE training updates, {args.preset} preset, HalfCheetah 6x1, {args.threads} torch "
        f"thread(s): {_machine()}",
        "",
        f"{params / 1e6:.2f} M parameters; batch {b} x {s} rows x {n} agents (Transformer "
        f"sequences of {(s - 1) * model.block} tokens); {args.updates} updates of each path, "
        "alternating. Fast against written-out on this batch with dropout off: |loss diff| "
        f"{dloss:.1e}, largest gradient diff {dgrad:.1e} of that tensor's largest gradient.",
        "",
        "| path | s per update: median / best | updates/s (median) | speed-up (median) |",
        "|---|---|---|---|",
    ]
    base = statistics.median(runs["written-out (before)"][2])
    for name, (_, _, times) in runs.items():
        med = statistics.median(times)
        lines.append(
            f"| {name} | {med:.3f} / {min(times):.3f} | {1 / med:.2f} | {base / med:.2f}x |"
        )
    text = "\n".join(lines)
    print(text)
    if args.out is not None:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
