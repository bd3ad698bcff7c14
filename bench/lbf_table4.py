"""MMSA against QMIX and MAPPO on the paper's LBF tasks at one real-step budget (issue 22, its
Table 4): trains every (task, algorithm, seed) run that is not finished, two at a time with one
torch thread each, then writes the returns at the budget beside the paper's and the learning curves.

    python bench/lbf_table4.py --tasks lbf_10x10_3p_5f lbf_10x10_4p_3f \\
        --seeds 0 1 2 --steps 300000 --root runs/lbf-table4 --jobs 2 --out bench/results/lbf_table4

Re-running the same command resumes: a finished run is left as it is, an interrupted one goes on
from its last checkpoint (each trainer resumes its --run-dir). ``--report-only`` writes the tables
from what is there. The paper trains 2M steps (its Table 10); say the budget you used.
``--algos`` also takes the paper's Fig. 5b ablations of MMSA (``mmsa-no-wm``, ``mmsa-no-sale``,
``mmsa-no-klb``, ``mmsa-no-gs``), each its own row, and ``qmix-pymarl2`` / ``mmsa-pymarl2`` run
QMIX or MMSA on pymarl2's recipe (PYMARL2). Writes OUT.md, OUT.json and OUT_<task>.png.

Other discrete tasks run the same way; ``--metric win_rate`` tabulates SMAX's win rate, beside the
published figure in PUBLISHED where there is one:

    python bench/lbf_table4.py --tasks smax_3m --metric win_rate --steps 500000 \
        --eval-every 20000 --root runs/smax3m-table --out bench/results/smax_3m_value
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path

import numpy as np
from training import summarise

from rmio.train.evaluate import plot_curves
from rmio.yamlio import load_yaml

PAPER = {  # MMSA paper, Table 4 (LBF, final episode return at 2M steps; its tasks are -v2)
    "lbf_10x10_3p_5f": {"mmsa": 0.53, "qmix": 0.11, "mappo": 0.33},
    "lbf_10x10_4p_3f": {"mmsa": 0.88, "qmix": 0.31, "mappo": 0.27},
    "lbf_2s_8x8_2p_2f_coop": {"mmsa": 0.93, "qmix": 0.73, "mappo": 0.69},
    "lbf_2s_10x10_3p_3f": {"mmsa": 0.86, "qmix": 0.53, "mappo": 0.61},
}
PUBLISHED = {  # tasks outside the MMSA paper: (source, {algorithm: figure}) of the metric
    "smax_3m": (
        "SMAC paper (Samvelyan et al. 2019), QMIX median test win rate on SC2 3m at 2M "
        "steps; SMAX approximates SMAC, so the figure is a reference, not a like-for-like "
        "number",
        {"qmix": 1.0},
    ),
}
BUDGET_KEY = {"qmix": "qmix", "mmsa": "qmix", "mappo": "policy.mappo"}
"""Where each trainer reads its budget and evaluation period (MMSA shares QMIX's section)."""
ABLATIONS = {  # the MMSA paper's Fig. 5b ablations
    "mmsa-no-wm": ["mmsa.mixer_rollout=false"],
    "mmsa-no-sale": ["mmsa.sale=false"],
    "mmsa-no-gs": ["mmsa.mixer_state=false"],
    "mmsa-no-klb": ["mmsa.kl_balance=false"],
}
"""--algos names beyond the trainers': MMSA with the overrides that make the ablation."""
PYMARL2 = [
    "qmix.optimizer=adam",
    "qmix.lr=0.001",
    "qmix.td_lambda=0.6",
    "qmix.batch_size=128",
    "qmix.epsilon_anneal_steps=100000",
    "qmix.update_every_episodes=4",
]
"""pymarl2's QMIX recipe (Adam at 1e-3, TD(lambda 0.6), 128-episode batches, epsilon over 100k
steps), one update per 4 finished episodes as its parallel runner takes one per batch of parallel
episodes (4 = the LBF configs' run.num_envs), so an update costs per episode what pymarl's does."""
DEBUG_KEEPS = ("qmix.batch_size", "qmix.epsilon_anneal_steps")
"""Recipe settings --debug leaves at the preset's values (sized for its 40-episode buffer)."""
RECIPES = {"qmix-pymarl2": ("qmix", PYMARL2), "mmsa-pymarl2": ("mmsa", PYMARL2)}
"""--algos names for a trainer on pymarl2's recipe instead of pymarl's (MMSA keeps its own
mmsa.lr, 1e-3 as well): rmio's check of whether MMSA's gain survives a stronger QMIX base."""


VERDICTS = [("mmsa", "qmix"), ("mmsa-pymarl2", "qmix-pymarl2"), ("mmsa", "qmix-pymarl2")]
"""The MMSA-above-QMIX comparisons the report states: the paper's where either side was asked
for (the other may be missing), the others where both were."""


def trainer(algo: str) -> str:
    """The `rmio train` command an --algos name runs (an ablation runs MMSA's)."""
    if algo in RECIPES:
        return RECIPES[algo][0]
    return "mmsa" if algo in ABLATIONS else algo


def overrides(algo: str) -> list[str]:
    """The --set lines an --algos name adds to its trainer's config."""
    return ABLATIONS.get(algo) or (RECIPES[algo][1] if algo in RECIPES else [])


def command(
    task: str, algo: str, seed: int, run: Path, steps: int, every: int, debug: bool = False
) -> list[str]:
    key = BUDGET_KEY[trainer(algo)]
    lines = [o for o in overrides(algo) if not (debug and o.split("=")[0] in DEBUG_KEEPS)]
    extra = [arg for line in lines for arg in ("--set", line)]
    return [
        *(sys.executable, "-m", "rmio.cli", "train", trainer(algo), task, "--seed", str(seed)),
        *("--run-dir", str(run)),
        *("--set", f"{key}.env_steps={steps}", "--set", f"{key}.eval_every={every}"),
        *("--set", "world_model.train.threads=1"),
        *extra,
        *(["--debug"] if debug else []),
    ]


def finished(run: Path, steps: int) -> bool:
    """The run's last evaluation reached the budget."""
    path = run / "eval.jsonl"
    if not path.is_file():
        return False
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return bool(rows) and rows[-1]["step"] >= steps


def train(job: tuple[str, str, int, Path], args: argparse.Namespace) -> tuple[str, float, int]:
    task, algo, seed, run = job
    run.parent.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    start = time.time()
    with open(run.parent / f"{run.name}.log", "a") as log:
        rc = subprocess.run(
            command(task, algo, seed, run, args.steps, args.eval_every, args.debug),
            stdout=log,
            stderr=log,
            env=env,
        ).returncode
    return f"{task} {algo} seed {seed}", time.time() - start, rc


def updates_per_s(run: Path, algo: str) -> float | None:
    """Learner updates per second at the run's logged real-step rate: QMIX and MMSA update once per
    finished episode (their ``updates`` count; MMSA's world model trains in the same update),
    MAPPO takes ppo.epochs x ppo.minibatches gradient steps per logged iteration."""
    path = run / f"{trainer(algo)}.jsonl"
    if not path.is_file():
        return None
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    rows = [r for r in rows if r.get("env_steps_per_s")]
    if not rows:
        return None
    last = rows[-1]
    if algo == "mappo":
        ppo = load_yaml(run / "config.yaml", "run config")["policy"]["ppo"]
        updates = len(rows) * ppo["epochs"] * ppo["minibatches"]
    else:
        updates = last.get("updates")
    if not updates:
        return None
    return float(updates) / last["step"] * last["env_steps_per_s"]


def _num(value: float | None, digits: int) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _mean_spread(cell: dict) -> str:
    """Mean ± std over the seeds at the budget; one seed has no spread to show."""
    if not cell["seeds"]:
        return "-"
    spread = f" ± {cell['std']:.2f}" if cell["seeds"] > 1 else ""
    return f"{cell['mean']:.2f}{spread}"


METRIC_TEXT = {
    "return_mean": (
        "return",
        "Return: fraction of the food collected on LBF (greedy evaluation, the trainer's eval "
        "episodes on seeds apart from training's)",
    ),
    "win_rate": (
        "win rate",
        "Win rate: fraction of greedy evaluation episodes won (the trainer's eval episodes on "
        "seeds apart from training's)",
    ),
}


def _reference(task: str, algo: str) -> float | None:
    """The MMSA paper's Table 4 figure, or a published one for a task outside it."""
    algo = RECIPES[algo][0] if algo in RECIPES else algo  # the same method on another recipe
    if task in PAPER:
        return PAPER[task].get(algo)
    return PUBLISHED.get(task, ("", {}))[1].get(algo)


def report(args: argparse.Namespace) -> tuple[str, dict]:
    name, meaning = METRIC_TEXT[args.metric]
    in_paper = all(task in PAPER for task in args.tasks)
    sources = [
        "the MMSA paper's Table 4 at 2M steps (tasks -v2; lbforaging here provides -v3)"
        if task in PAPER
        else f"{task}: {PUBLISHED[task][0]}"
        for task in args.tasks
        if task in PAPER or task in PUBLISHED
    ]
    lines = [
        f"# MMSA, QMIX and MAPPO on {' '.join(args.tasks)} at {args.steps:,} real steps"
        + (" (MMSA paper Table 4)" if in_paper else ""),
        "",
        f"{platform.machine()}, {len(os.sched_getaffinity(0))} cores, "
        f"Python {platform.python_version()}, "
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; one torch thread per run, "
        f"{args.jobs} runs at a time.",
        "",
        f"Command: `python bench/lbf_table4.py --tasks {' '.join(args.tasks)} --algos "
        f"{' '.join(args.algos)} --seeds {' '.join(map(str, args.seeds))} --steps {args.steps} "
        f"--eval-every {args.eval_every} --metric {args.metric} --root {args.root} "
        f"--jobs {args.jobs} --out {args.out}`",
        "",
        f"{meaning}, at the last evaluation at or before the budget; mean ± std over the seeds "
        "that reached it. Reference column: "
        + ("; ".join(dict.fromkeys(sources)) if sources else "none published")
        + ".",
        "",
        f"| task | algorithm | seeds at budget | {name} | reference | best seen | "
        "h per 1M steps | env steps/s | learner updates/s |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    table: dict = {}
    for task in args.tasks:
        for algo in args.algos:
            runs = [args.root / task / algo / f"seed{s}" for s in args.seeds]
            done = [summarise(r, [args.steps], args.metric) for r in runs if r.is_dir()]
            at = [
                d["at_budget"][args.steps][args.metric] for d in done if d["at_budget"][args.steps]
            ]
            best = [d["best"][args.metric] for d in done if d["best"]]
            hours = [d["hours_per_100k"] for d in done if "hours_per_100k" in d]
            rate = [d["overall_steps_per_s"] for d in done if "overall_steps_per_s" in d]
            ups = [u for r in runs if (u := updates_per_s(r, algo)) is not None]
            cell = {
                "metric": args.metric,
                "seeds": len(at),
                "mean": float(np.mean(at)) if at else None,
                "std": float(np.std(at)) if at else None,
                "per_seed": at,
                "best_mean": float(np.mean(best)) if best else None,
                "hours_per_1m": 10 * float(np.median(hours)) if hours else None,
                "env_steps_per_s": float(np.median(rate)) if rate else None,
                "updates_per_s": float(np.median(ups)) if ups else None,
                "reference": _reference(task, algo),
            }
            table.setdefault(task, {})[algo] = cell
            lines.append(
                f"| {task} | {algo} | {len(at)} of {len(runs)} | "
                + " | ".join(
                    [
                        _mean_spread(cell),
                        _num(cell["reference"], 2),
                        _num(cell["best_mean"], 2),
                        _num(cell["hours_per_1m"], 1),
                        _num(cell["env_steps_per_s"], 0),
                        _num(cell["updates_per_s"], 1),
                    ]
                )
                + " |"
            )
    lines += [
        "",
        "Rates are medians over seeds of each run's own log (one core each). Learner updates: "
        "QMIX and MMSA one gradient step on a qmix.batch_size-episode batch (32; 128 on "
        "pymarl2's recipe) per qmix.update_every_episodes finished episodes (1; 4 on pymarl2's "
        "recipe; MMSA's world model trains in the same step), MAPPO epochs x "
        "minibatches gradient steps per iteration.",
        "",
        "MMSA above QMIX at the budget (means over seeds):",
    ]
    stated = len(lines)
    for task, cells in table.items():
        for mmsa, qmix in VERDICTS:
            asked = {mmsa, qmix} & set(args.algos)
            if not asked or ((mmsa, qmix) != VERDICTS[0] and len(asked) < 2):
                continue
            m, q = cells.get(mmsa, {}).get("mean"), cells.get(qmix, {}).get("mean")
            pair = "" if (mmsa, qmix) == VERDICTS[0] else f", {mmsa} against {qmix}"
            if m is None or q is None:
                lines.append(f"- {task}{pair}: not measured")
            else:
                verdict = "holds" if m > q else "does not hold" + (": equal" if m == q else "")
                lines.append(f"- {task}{pair}: {verdict} ({m:.2f} against {q:.2f})")
    if len(lines) == stated:
        lines.append("- not measured: --algos holds no MMSA row to set against a QMIX row")
    lines += ["", f"Learning curves (greedy {name} against real steps, every run):", ""]
    lines += [f"![{task}]({args.out.name}_{task}.png)" for task in args.tasks]
    return "\n".join(lines) + "\n", table


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tasks", nargs="+", default=["lbf_10x10_3p_5f", "lbf_10x10_4p_3f"])
    ap.add_argument(
        "--algos",
        nargs="+",
        default=["mmsa", "qmix", "mappo"],
        help="trainers (mmsa, qmix, mappo), MMSA's ablations (mmsa-no-wm, mmsa-no-sale, "
        "mmsa-no-klb, mmsa-no-gs: the paper's Fig. 5b) and QMIX or MMSA on pymarl2's recipe "
        "(qmix-pymarl2, mmsa-pymarl2)",
    )
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--steps", type=int, default=300_000, help="real env steps per run")
    ap.add_argument("--eval-every", type=int, default=10_000)
    ap.add_argument("--root", type=Path, default=Path("runs/lbf-table4"))
    ap.add_argument("--jobs", type=int, default=2, help="runs at a time")
    ap.add_argument(
        "--metric",
        choices=sorted(METRIC_TEXT),
        default="return_mean",
        help="what the table and curves compare (win_rate for SMAX)",
    )
    ap.add_argument("--debug", action="store_true", help="the configs' debug presets (a check)")
    ap.add_argument("--report-only", action="store_true", help="write the tables, train nothing")
    ap.add_argument("--out", type=Path, required=True, help="OUT.md, OUT.json, OUT_<task>.png")
    args = ap.parse_args()
    known = [*BUDGET_KEY, *ABLATIONS, *RECIPES]
    unknown = sorted(set(args.algos) - set(known))
    if unknown:
        ap.error(f"unknown algorithm(s) {', '.join(unknown)}: choose from {', '.join(known)}")
    # seed-major: a partial study still compares every algorithm on the same seeds
    jobs = [
        (task, algo, seed, args.root / task / algo / f"seed{seed}")
        for seed in args.seeds
        for task in args.tasks
        for algo in args.algos
    ]
    todo = [j for j in jobs if not finished(j[3], args.steps)]
    if not args.report_only and todo:
        print(f"{len(todo)} of {len(jobs)} runs to train, {args.jobs} at a time; logs beside them")
        start = time.time()
        with ThreadPoolExecutor(args.jobs) as pool:
            running = [pool.submit(train, j, args) for j in todo]
            for done in as_completed(running):
                name, took, rc = done.result()
                state = "done" if rc == 0 else f"failed (exit {rc}; see its .log)"
                minutes = (time.time() - start) / 60
                print(f"[{minutes:6.1f} min] {name} {state} in {took / 60:.1f} min", flush=True)
    text, table = report(args)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".md").write_text(text)
    args.out.with_suffix(".json").write_text(json.dumps(table, indent=1) + "\n")
    for task in args.tasks:
        runs = [j[3] for j in jobs if j[0] == task and (j[3] / "eval.jsonl").is_file()]
        if runs:
            plot_curves(runs, args.out.parent / f"{args.out.name}_{task}.png", args.metric)
    print(text)


if __name__ == "__main__":
    main()
