"""MMSA's own reconstruction against an RMIOv2 world model, with MMSA's Q-actor (issue 22).

MMSA never reconstructs observations; rmio's extension gives its latent model an observation
decoder and masked fine-tuning (`rmio train finetune MMSA_RUN`). This script asks what that is
worth beside RMIOv2's world model serving the same actor:

1. copies a trained MMSA run (its checkpoints, not its logs) into ``OUT/mmsa``, adds the decoder
   and masked fine-tuning there and exports it (``OUT/mmsa_bundle``: the Q-actor and MMSA's world
   model);
2. trains an RMIOv2 world model (``OUT/rmiov2``) on data the same Q-actor collects (plus
   exploration noise), fine-tunes it at the same p_mask and pairs it with the same actor
   (``OUT/rmiov2_bundle``);
3. runs the robustness sweep on both bundles with the same seeds and loss masks, and writes the
   curves side by side (hold-last and zero-fill, which need no world model, must come out the
   same from both sweeps: checked).

    python bench/mmsa_robustness.py runs/lbf-table4/lbf_10x10_3p_5f/mmsa/seed0 \\
        --out runs/mmsa-robustness-lbf_10x10_3p_5f \\
        --results bench/results/mmsa_robustness_lbf_10x10_3p_5f

Every stage is skipped when its output exists, so re-running resumes. Writes RESULTS.md,
RESULTS.json and RESULTS.png. The swarm row: `python bench/sweep_swarm.py --bundle ...`.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from rmio.evaluation import robustness
from rmio.evaluation.report import markdown, plot
from rmio.runtime.bundle import load_manifest

KEEP = ("config.yaml", "mmsa.pt", "ckpt_mmsa.pt")
"""What a trained MMSA run needs for its decoder stage and export."""
COLUMNS = {  # label: (which sweep, strategy)
    "MMSA world model": ("mmsa", "world-model"),
    "RMIOv2 world model": ("rmiov2", "world-model"),
    "hold-last": ("mmsa", "hold-last"),
    "zero-fill": ("mmsa", "zero-fill"),
    "MMSA before fine-tuning": ("mmsa", "no-finetune"),
    "RMIOv2 before fine-tuning": ("rmiov2", "no-finetune"),
}


def rmio(*args: str, log: Path) -> None:
    """One `rmio` command, its output in ``log``; a failure stops the script with its tail."""
    cmd = [sys.executable, "-m", "rmio.cli", *args]
    print("$ rmio " + " ".join(args), flush=True)
    with log.open("a") as f:
        code = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT).returncode
    if code != 0:
        raise SystemExit(f"rmio {args[0]} failed ({code}); see {log}:\n{log.read_text()[-1500:]}")


def prepare(args: argparse.Namespace) -> dict[str, Path]:
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    log = out / "stages.log"
    mmsa, wm = out / "mmsa", out / "rmiov2"
    if not (mmsa / "mmsa.pt").is_file():
        if not (args.run / "mmsa.pt").is_file():
            raise SystemExit(f"{args.run}: no mmsa.pt (train it to the end with `rmio train mmsa`)")
        mmsa.mkdir(exist_ok=True)
        for name in KEEP:
            if (args.run / name).is_file():
                shutil.copy2(args.run / name, mmsa / name)
    threads = ("--set", "world_model.train.threads=1")
    if not (mmsa / "mmsa_wm.pt").is_file():
        rmio("train", "finetune", str(mmsa), "--p-mask", str(args.p_mask), log=log)
    bundles = {"mmsa": out / "mmsa_bundle", "rmiov2": out / "rmiov2_bundle"}
    if not (bundles["mmsa"] / "manifest.json").is_file():
        rmio("export", str(mmsa), "--out", str(bundles["mmsa"]), log=log)
    if not (wm / "wm_pretrain.pt").is_file():
        rmio(  # the MMSA run's own resolved config: the same task and environment settings
            *("train", "world-model", str(mmsa / "config.yaml"), "--run-dir", str(wm)),
            *("--seed", str(args.seed)),
            *("--set", f"run.data_policy={bundles['mmsa']}", *threads),
            *("--set", f"run.collect_steps={args.collect_steps}"),
            *(("--set", f"world_model.train.updates={args.updates}") if args.updates else ()),
            *(["--debug"] if args.debug else []),
            log=log,
        )
    if not (wm / "wm_finetune.pt").is_file():
        rmio("train", "finetune", str(wm), "--p-mask", str(args.p_mask), log=log)
    if not (bundles["rmiov2"] / "manifest.json").is_file():
        rmio(
            "export", str(mmsa), "--world-model", str(wm), "--out", str(bundles["rmiov2"]), log=log
        )
    actors = {k: load_manifest(b).sha256["actor.onnx"] for k, b in bundles.items()}
    if len(set(actors.values())) != 1:
        raise SystemExit(f"the two bundles ship different actors: {actors}")
    return bundles


def sweeps(args: argparse.Namespace, bundles: dict[str, Path]) -> dict[str, Any]:
    results = {}
    for name, bundle in bundles.items():
        path = args.out / f"robustness_{name}.json"
        if not path.is_file():
            print(f"robustness sweep of {bundle}", flush=True)
            result = robustness.sweep(
                bundle,
                p_loss=args.p_loss,
                episodes=args.episodes,
                seeds=args.seeds,
                strategies=["world-model", "hold-last", "zero-fill", "no-finetune"],
            )
            path.write_text(json.dumps(result, indent=1))
        results[name] = json.loads(path.read_text())
    for strategy in ("hold-last", "zero-fill", "random"):
        a, b = (results[k]["summary"][strategy] for k in ("mmsa", "rmiov2"))
        if strategy == "random":
            same = a["mean"] == b["mean"]
        else:
            same = [c["per_seed"] for c in a["curve"]] == [c["per_seed"] for c in b["curve"]]
        if not same:
            raise SystemExit(f"{strategy} differs between the two sweeps: not the same masks/seeds")
    return results


def merged(results: dict[str, Any]) -> dict[str, Any]:
    """One robustness result whose strategies are the table's columns (for report.plot)."""
    base = dict(results["mmsa"])
    base["strategies"] = list(COLUMNS)
    base["summary"] = {"random": results["mmsa"]["summary"]["random"]}
    for label, (which, strategy) in COLUMNS.items():
        base["summary"][label] = results[which]["summary"][strategy]
    base.pop("rows", None)
    return base


def report(args: argparse.Namespace, result: dict[str, Any], wall: float) -> str:
    cores = len(os.sched_getaffinity(0))
    lines = [
        f"# MMSA's reconstruction against RMIOv2's with MMSA's Q-actor: {result['scenario']}, "
        f"{platform.machine()}, {cores} cores, {time.strftime('%Y-%m-%d')}",
        "",
        f"MMSA run `{args.run.as_posix()}` (its Q-actor in both bundles); masked fine-tuning at "
        f"p_mask {args.p_mask:g} for both world models; the RMIOv2 world model pre-trained on "
        f"{args.collect_steps} steps the Q-actor collected (10% random actions). Bernoulli loss, "
        f"{args.seeds} seed families x {args.episodes} episodes, the same seeds and masks for "
        f"every column; {result['metric'].replace('_', ' ')}, mean ± std over seed families. The "
        f"last invocation took {wall / 60:.0f} min. Command: `python bench/mmsa_robustness.py "
        f"{args.run.as_posix()} --out OUT --p-mask {args.p_mask:g} --collect-steps "
        f"{args.collect_steps} --episodes {args.episodes} --seeds {args.seeds}`.",
    ]
    table = markdown(result).split("\n", 2)[2]  # without its title
    return "\n".join(lines) + "\n\n" + table


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("run", type=Path, help="a trained `rmio train mmsa` run directory")
    ap.add_argument("--out", type=Path, required=True, help="working directory (resumable)")
    ap.add_argument("--results", type=Path, help="RESULTS.md/.json/.png (default OUT/comparison)")
    ap.add_argument("--p-mask", type=float, default=0.5)
    ap.add_argument("--collect-steps", type=int, default=50000)
    ap.add_argument("--updates", type=int, help="RMIOv2 pre-training updates (default: config's)")
    ap.add_argument("--seed", type=int, default=0, help="the RMIOv2 world model's training seed")
    ap.add_argument("--p-loss", type=lambda s: [float(x) for x in s.split(",")],
                    default=[0.0, 0.2, 0.4, 0.6, 0.8, 1.0])  # fmt: skip
    ap.add_argument("--episodes", type=int, default=10)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--debug", action="store_true", help="the RMIOv2 world model's debug preset")
    args = ap.parse_args()
    start = time.perf_counter()
    bundles = prepare(args)
    result = merged(sweeps(args, bundles))
    results = args.results or args.out / "comparison"
    results.parent.mkdir(parents=True, exist_ok=True)
    text = report(args, result, time.perf_counter() - start)
    results.with_suffix(".md").write_text(text)
    results.with_suffix(".json").write_text(json.dumps(result, indent=1))
    plot(result, results.with_suffix(".png"))
    print(text)
    print(f"wrote {results}.md, .json and .png")


if __name__ == "__main__":
    main()
