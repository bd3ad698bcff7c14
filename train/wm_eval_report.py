"""The results of `rmio eval reconstruction` as a user reads them: which rows are world models,
the warnings of issue 25, the markdown table and the console tables. Kept apart from the scoring
(train/wm_eval.py) so that readers of a finished ``eval_reconstruction.json`` (rmio ablate, tests)
need neither torch nor the world model."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.table import Table

from rmio.errors import RmioError
from rmio.train.policy_metrics import POLICY_METRICS

BASELINES = ("zero-fill", "hold-last")


def is_model_row(name: str) -> bool:
    """A world model's row of the results (not a baseline's)."""
    return name not in BASELINES


def finetuned_row(strategies: dict[str, Any]) -> str:
    """The run's own fine-tuned world model's row label (RMIOv2's or MARIE's); rows of models
    scored ``--beside`` it carry their run's name before a colon and are not it."""
    keys = [k for k in strategies if is_model_row(k) and " fine-tuned" in k and ": " not in k]
    if len(keys) != 1:
        raise RmioError(
            f"the reconstruction results hold {len(keys)} fine-tuned rows of their own run "
            f"({', '.join(keys) or 'none'}), expected one; re-run rmio eval reconstruction"
        )
    return keys[0]


def policy_warnings(results: dict[str, Any]) -> list[str]:
    """The deploy-time check of issue 25: every p_mask at which a world model makes the actor
    disagree with itself more than hold-last does (the number that predicts return better than
    L_rec), so a user learns before deploying where the world model would hurt."""
    held = results["strategies"].get("hold-last", {})
    out = []
    for name, row in results["strategies"].items():
        if not is_model_row(name):
            continue
        for key in POLICY_METRICS:
            if key not in row or key not in held:
                continue
            worse = [
                f"{p:g} ({v:.4f} vs {h:.4f})"
                for p, v, h in zip(results["p_masks"], row[key], held[key], strict=True)
                if v is not None and h is not None and v > h
            ]
            if worse:
                out.append(
                    f"{name} does not beat hold-last on {key} at p_mask {', '.join(worse)}: at "
                    "those loss rates the blind agents would act better on their last observation"
                )
    return out


def masks_named(results: dict[str, Any]) -> str:
    """The test-time loss model in words, for titles (``burst masks (mean burst 4 steps)``)."""
    model = results.get("loss_model", "bernoulli")
    if model == "burst":
        return f"burst masks (mean burst {results['mean_burst_length']:g} steps)"
    return f"{model} masks"


def mode_named(results: dict[str, Any], short: bool = False) -> str:
    """How the world models' reconstructions were made, in words (results written before the
    mode existed filtered whole episodes)."""
    mode = results.get("mode", "episode")
    stride = results.get("window_stride", 1)
    every = "every step t" if stride == 1 else f"steps t = 0, {stride}, {2 * stride}, ..."
    if short:
        return f"{mode} mode" + (f", {every}" if mode == "window" else "")
    if mode == "window":
        text = (
            f"window mode, as the swarm replays: {every} of each episode, each reconstructed from "
            f"its own window of steps t - l..t (l = {results.get('history_window')}), from the "
            "zero state; the world models' metrics average over those steps, the baselines over "
            "every step"
        )
    else:
        text = (
            "episode mode: each episode filtered in one pass from step 0 (which the deployed "
            "swarm never runs), every step scored"
        )
    for label in results.get("window_models", []):
        text += f"; {label} rows: every step from its own window (its model keeps no state)"
    return text


def reconstruction_table(results: dict[str, Any]) -> str:
    """``eval_reconstruction.md``: every metric of every strategy per p_mask, then the warnings."""
    p = results["p_masks"]
    lines = [
        f"Test-time {masks_named(results)}; p_mask is the long-run fraction of lost steps.",
        "",
        f"Reconstruction: {mode_named(results)}.",
        "",
        *(
            [
                f"Held-out episodes: {results['holdout_episodes']}, collected by "
                f"{results['holdout_policy']}.",
                "",
            ]
            if results.get("holdout_policy")
            else []
        ),
        "| strategy | metric | " + " | ".join(f"p_mask {x:g}" for x in p) + " |",
        "|---|---|" + "---|" * len(p),
    ]
    for name, row in results["strategies"].items():
        for metric in (
            "lrec_masked",
            *POLICY_METRICS,
            "lrec_all",
            "lrec_decoder_all",
            "gpe",
            "gci",
        ):
            if metric in row:
                cells = ["-" if v is None else f"{v:.4f}" for v in row[metric]]
                lines.append(f"| {name} | {metric} | " + " | ".join(cells) + " |")
    for w in results.get("warnings", []):
        lines += ["", f"**Warning:** {w}"]
    return "\n".join(lines) + "\n"


def print_results(results: dict[str, Any], console: Console) -> None:
    """The console's view: how the reconstructions were made, L_rec on lost agents, then each
    policy metric, one table each."""
    console.print(f"Reconstruction: {mode_named(results)}")
    table = Table(
        title="L_rec on lost agents (held-out episodes, normalised units; lower is better), "
        + f"{masks_named(results)}, {mode_named(results, short=True)}"
    )
    table.add_column("strategy")
    for x in results["p_masks"]:
        table.add_column(f"p_mask {x:g}", justify="right")
    for name, row in results["strategies"].items():
        table.add_row(name, *["-" if v is None else f"{v:.4f}" for v in row["lrec_masked"]])
    console.print(table)
    for key in POLICY_METRICS:
        rows = [(n, r[key]) for n, r in results["strategies"].items() if key in r]
        if not rows:
            continue
        table = Table(
            title=f"{key}: the actor on reconstructed vs true observations of lost "
            f"agents ({results['policy']}; lower is better), {mode_named(results, short=True)}"
        )
        table.add_column("strategy")
        for x in results["p_masks"]:
            table.add_column(f"p_mask {x:g}", justify="right")
        for name, vals in rows:
            table.add_row(name, *["-" if v is None else f"{v:.4f}" for v in vals])
        console.print(table)
