"""Which reconstruction number predicts return, measured on held-out data (issue 25, part 1).

bench/policy_metrics_rank.py measures errors on-policy, inside the robustness sweep, where each
strategy also changes the states the team visits (a cheetah that has stopped makes hold-last look
accurate). This script measures them off-policy, on the same held-out episodes for every
strategy, as `rmio eval reconstruction` does: for each trained run (world-model variants, e.g. the
Table 1 runs) and for hold-last and zero-fill, L_rec of lost agents and the actor's action error at
p_mask 0.2-0.8; then the rank correlation (Spearman) of each, negated, with the return the same
strategy reached at that p_loss (the runs' robustness.json; hold-last and zero-fill from
bench/results/policy_metrics_rank.json, same actor and bundle family).

    python bench/policy_metrics_heldout.py RUN_DIR... --policy halfcheetah_6x1

Writes bench/results/policy_metrics_heldout.md and .json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import numpy as np
import torch
from rich.console import Console

from rmio.config import load_config
from rmio.models import find_bundle
from rmio.train.common import load_model
from rmio.train.policy_metrics import PolicyProbe
from rmio.train.wm_data import SequenceSampler
from rmio.train.wm_eval import evaluate_model
from rmio.train.wm_train import eval_holdout

P = [0.2, 0.4, 0.6, 0.8]
HERE = Path(__file__).resolve().parent


def spearman(a: list[float], b: list[float]) -> float:
    def ranks(x: np.ndarray) -> np.ndarray:
        r = np.empty(len(x))
        r[np.argsort(x, kind="mergesort")] = np.arange(len(x), dtype=np.float64)
        for v in np.unique(x):
            r[x == v] = r[x == v].mean()
        return r

    ra, rb = ranks(np.asarray(a, float)), ranks(np.asarray(b, float))
    return float(np.corrcoef(ra, rb)[0, 1]) if ra.std() and rb.std() else float("nan")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("runs", nargs="+", type=Path, help="run directories with wm_finetune.pt")
    ap.add_argument("--policy", default="halfcheetah_6x1", help="the deployed actor's bundle")
    ap.add_argument("--baselines", type=Path, default=HERE / "results/policy_metrics_rank.json")
    ap.add_argument("--out", type=Path, default=HERE / "results/policy_metrics_heldout")
    ap.add_argument(
        "--mode",
        choices=["window", "episode"],
        default="window",
        help="how the world models reconstruct (world_model.eval.mode): the swarm's windows, or "
        "one pass over each episode",
    )
    args = ap.parse_args()
    torch.set_num_threads(1)
    probe = PolicyProbe(find_bundle(args.policy))
    table: dict[str, dict[str, list[float]]] = {}
    for run in args.runs:
        cfg = load_config(run / "config.yaml")
        cfg.world_model.eval.p_masks = P
        cfg.world_model.eval.mode = args.mode
        model, _ = load_model(run / "wm_finetune.pt")
        model.eval()
        holdout, _ = eval_holdout(run, cfg, Console(quiet=True))  # a joint run's: its actor's
        sampler = SequenceSampler(holdout, cfg.world_model.smoothing, "cpu")
        res = evaluate_model(model, sampler.episodes(), cfg, cfg.run.seed + 555, probe)
        rob = json.loads((run / "robustness.json").read_text())
        curve = {c["p_loss"]: c["mean"] for c in rob["summary"]["world-model"]["curve"]}
        table[run.name] = {
            "lrec": res["model"]["lrec_masked"],
            "action": res["model"]["action_mae"],
            "return": [curve[p] for p in P],
        }
        for b in ("hold-last", "zero-fill"):  # the same held-out data and masks for every run
            table.setdefault(b, {"lrec": [], "action": [], "runs": []})
            table[b]["runs"].append(res[b]["lrec_masked"] + res[b]["action_mae"])
    base = json.loads(args.baselines.read_text())["tasks"][args.policy]["cells"]
    for b in ("hold-last", "zero-fill"):
        stacked = np.array(table[b].pop("runs"))
        table[b]["lrec"] = stacked[:, : len(P)].mean(0).tolist()
        table[b]["action"] = stacked[:, len(P) :].mean(0).tolist()
        table[b]["return"] = [
            next(c["return"] for c in base if c["strategy"] == b and c["p_loss"] == p) for p in P
        ]
    names = list(table)
    rho = {
        key: [
            spearman([table[n]["return"][k] for n in names], [-table[n][key][k] for n in names])
            for k in range(len(P))
        ]
        for key in ("lrec", "action")
    }
    lines = [
        "# Which reconstruction number predicts return, on held-out data (issue 25)",
        "",
        f"{platform.machine()}, {os.cpu_count()} cores, {time.strftime('%Y-%m-%d')}; actor of "
        f"`{args.policy}`; command: `python bench/policy_metrics_heldout.py "
        + " ".join(f"RUNS/{r.parent.name}/{r.name}" for r in args.runs)
        + f" --policy {args.policy} --mode {args.mode}` (RUNS: the ablation sweep's directory); "
        f"world models in {args.mode} mode (rmio eval reconstruction --mode). L_rec and "
        "action_mae of lost agents on each run's held-out episodes (hold-last and zero-fill: "
        "averaged over those runs' data); return at the same p_loss from each run's "
        "robustness.json (hold-last, zero-fill: bench/results/policy_metrics_rank.json). Spearman "
        "rho of the negated number with the return across the strategies at each p.",
        "",
        "| strategy | "
        + " | ".join(f"L_rec @ {p:g}" for p in P)
        + " | "
        + " | ".join(f"action_mae @ {p:g}" for p in P)
        + " | "
        + " | ".join(f"return @ {p:g}" for p in P)
        + " |",
        "|---|" + "---|" * (3 * len(P)),
    ]
    for n in names:
        t = table[n]
        lines.append(
            f"| {n} | "
            + " | ".join(f"{v:.4f}" for v in t["lrec"])
            + " | "
            + " | ".join(f"{v:.4f}" for v in t["action"])
            + " | "
            + " | ".join(f"{v:.1f}" for v in t["return"])
            + " |"
        )
    lines += [
        "",
        "| number | " + " | ".join(f"rho @ {p:g}" for p in P) + " | mean |",
        "|---|" + "---|" * (len(P) + 1),
        *[
            f"| {'L_rec' if k == 'lrec' else 'action_mae'} | "
            + " | ".join(f"{v:.2f}" for v in rho[k])
            + f" | {np.nanmean(rho[k]):.2f} |"
            for k in rho
        ],
    ]
    print("\n".join(lines))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    args.out.with_suffix(".json").write_text(json.dumps({"p": P, "table": table, "rho": rho}))
    print(f"wrote {args.out}.md and .json")


if __name__ == "__main__":
    main()
