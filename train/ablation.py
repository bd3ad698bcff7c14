"""Ablation sweeps of the RMIOv2 paper's Tables 1 and 2 (`rmio ablate SWEEP.yaml`): one command per
table.

A sweep varies one thing, either the method (``vary: algo``: fusion ablations, or MARIE beside
RMIOv2: ``marie`` is pre-trained by its own trainer, masked-fine-tuned and exported as a window
graph, then evaluated like the others) or the fine-tuning
mask rate (``vary: p_mask``), and reports for every variant the reconstruction loss of lost agents
on held-out episodes next to the robustness AUC of one fixed policy deployed with that variant's
world model, so the two columns can be read side by side. All variants share the real data (the
fusion variants) or the pre-trained world model (the p_mask variants), so only the varied thing
differs. Every stage is resumable: re-running the same command skips what is already done.

The sweep's YAML and its checks are train/ablation_config.py, its table train/ablation_report.py.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from rich.console import Console
from rich.markdown import Markdown

from rmio.config import ALGORITHMS, load_config, preset_values
from rmio.envs.loss import LossConfig
from rmio.errors import RmioError
from rmio.evaluation import robustness
from rmio.models import resolve_model_path
from rmio.train.ablation_config import AblationConfig, load_ablation, policy_path, resolve_sweep
from rmio.train.ablation_report import aggregate, markdown
from rmio.train.ablation_reuse import reuse_pretraining, share
from rmio.train.common import prepare_run_dir
from rmio.train.export import export_run
from rmio.train.marie_eval import evaluate_reconstruction
from rmio.train.marie_finetune import finetune_marie
from rmio.train.marie_train import train_marie
from rmio.train.trials import Trial, run_trials
from rmio.train.wm_eval_report import finetuned_row
from rmio.train.wm_train import ensure_data, finetune_world_model, train_world_model


def run_ablation(
    path: Path,
    out: Path,
    debug: bool,
    console: Console,
    device: str = "cpu",
    jobs: int = 1,
    backend: str = "local",
    address: str | None = None,
    reuse: tuple[Path, ...] = (),
) -> dict[str, Any]:
    """Train and evaluate every variant of every seed; after each seed the table so far is written
    (``ablation.md`` / ``ablation.json`` with the seeds done), so a long sweep reports as it goes.

    ``jobs`` > 1 runs the trials (one preparation per seed, then one trial per seed and variant) in
    that many worker processes, ``backend="ray"`` as Ray tasks (:mod:`rmio.train.trials`); every
    trial seeds itself, so the table is the same as with one job. ``reuse`` names other sweep
    directories whose finished pre-trainings stand in for identical ones here
    (:mod:`rmio.train.ablation_reuse`)."""
    ab = load_ablation(path)
    pin_policies(ab, out, console)
    sweep = Sweep(resolve_sweep(path), out, debug, device, tuple(reuse))
    evaluated: dict[int, list[dict[str, Any]]] = {}
    result: dict[str, Any] = {}

    def seed_done(seed: int, rows: list[dict[str, Any]]) -> None:
        nonlocal result
        evaluated[seed] = rows
        result = _write_table(ab, out, dict(sorted(evaluated.items())), console)

    if jobs <= 1 and backend == "local":
        for seed in ab.seeds:
            prepare_seed(sweep, seed, console)
            seed_done(seed, [run_variant(sweep, seed, k, console) for k in range(len(ab.variants))])
    else:
        trials = [Trial(seed, _trial_name(ab, k), k) for seed in ab.seeds for k in trial_order(ab)]
        run_trials(
            sweep, trials, jobs, console, seed_done, prepare_seed, run_variant, backend, address
        )
    done = dict(sorted(evaluated.items()))
    extra = []
    if ab.vary == "recipe" and done:  # every recipe starts from one pre-trained model per seed
        console.rule(f"[bold]{ab.name}: the pre-trained model")
        extra.append(_pretrained_row(ab, out, done, device))
    if ab.robustness.baselines and done:
        console.rule(f"[bold]{ab.name}: hold-last and zero-fill with the same actor")
        extra += _baseline_rows(ab, out, done)
    if extra:
        result = _write_table(ab, out, done, console, extra)
    return result


def _actor_digest(source: Path) -> str:
    """sha256 of what acts: a bundle's actor file, or a policy.pt."""
    if source.is_dir():
        manifest = json.loads((source / "manifest.json").read_text())
        source = source / manifest["files"]["actor"]
    return hashlib.sha256(source.read_bytes()).hexdigest()


def pin_policies(ab: AblationConfig, out: Path, console: Console) -> None:
    """A sweep resumed after its policy was replaced (a shipped bundle re-exported, a policy.pt
    retrained) would put two actors' numbers in one table. The actors the sweep deploys, collects
    with and fine-tunes for (policy-aware recipes) are fingerprinted in ``OUT/policies.json`` when
    it starts, and every re-run checks them; a folder started before rmio kept that record is
    checked against the actors its trials exported."""
    given = {"policy": ab.policy}
    keys = {"run.data_policy": "run.data_policy", "world_model.finetune.policy": "finetune.policy"}
    for line in ab.set:
        key, _, value = line.partition("=")
        if key.strip() in keys and value.strip() not in ("", "null"):
            given[keys[key.strip()]] = value.strip()
    for v in ab.variants if ab.vary == "recipe" else []:
        if (v.get("finetune") or {}).get("policy"):
            given[f"finetune.policy of {v['name']}"] = str(v["finetune"]["policy"])
    sources = {
        k: policy_path(ab) if k == "policy" else resolve_model_path(v) for k, v in given.items()
    }  # a data policy that is not there is the trainer's error to report
    now = {k: _actor_digest(v) for k, v in sources.items() if v.exists()}
    record = out / "policies.json"
    if record.exists():
        before = json.loads(record.read_text())
        changed = [f"{k} ({given[k]})" for k in now if before.get(k) not in (None, now[k])]
        now = {**before, **now}
    else:  # the actors already deployed by this folder's trials, if any
        shipped = {
            _actor_digest(m.parent)
            for m in out.glob("seed*/*/bundle/manifest.json")
            if "actor" in json.loads(m.read_text()).get("files", {})
        }
        changed = [f"policy ({ab.policy})"] if shipped and now["policy"] not in shipped else []
    if changed:
        raise RmioError(
            f"{out}: the actor of the sweep's {' and '.join(changed)} is not the one the "
            "sweep started with; run it into a new --out, or delete this one to start over"
        )
    out.mkdir(parents=True, exist_ok=True)
    record.write_text(json.dumps(now, indent=1))


@dataclass(frozen=True)
class Sweep:
    """Everything a trial needs to find its sweep and its directory (picklable: worker processes
    receive it)."""

    path: Path
    out: Path
    debug: bool
    device: str
    reuse: tuple[Path, ...] = ()
    """Other sweep directories whose finished pre-trainings may stand in for this sweep's."""


def trial_order(ab: AblationConfig) -> list[int]:
    """The order a seed's trials are handed to the workers: the longest first (a MARIE trial
    takes 3-5x an RMIOv2 one), so that a worker done with a short one goes on to the next seed's
    long one instead of leaving it to run alone at the end. The table keeps the sweep's order."""
    return sorted(range(len(ab.variants)), key=lambda k: _trial_name(ab, k) != "marie")


def _trial_name(ab: AblationConfig, index: int) -> str:
    v = ab.variants[index]
    if ab.vary == "recipe":
        return str(v["name"])
    return str(v) if ab.vary == "algo" else f"p_mask_{float(v):g}"


def _shrunk(ab: AblationConfig) -> list[str]:
    """The sweep's ``set:`` lines that --debug keeps: it shrinks a shipped sweep, so a line loses
    to every key the debug preset sets (a section line to any key under it), unless it is a
    number smaller than the preset's."""
    small = preset_values(ab.scenario, "debug")
    kept = []
    for line in ab.set:
        key, _, text = line.partition("=")
        key = key.strip()
        covered = [k for k in small if k == key or k.startswith(key + ".")]
        value = yaml.safe_load(text) if text.strip() else None
        smaller = (
            covered == [key]
            and all(
                isinstance(v, (int, float)) and not isinstance(v, bool) for v in (value, small[key])
            )
            and value < small[key]
        )
        if not covered or smaller:
            kept.append(line)
    return kept


def _config(ab: AblationConfig, sweep: Sweep, seed: int, algo: str | None = None) -> Any:
    preset = "debug" if sweep.debug else None
    lines = _shrunk(ab) if sweep.debug else list(ab.set)
    overrides = [*lines, f"run.seed={seed}"]
    if algo is None:
        return load_config(ab.scenario, preset=preset, overrides=overrides)
    return load_config(ab.scenario, preset=preset, overrides=overrides, algo=algo)


def prepare_seed(sweep: Sweep, seed: int, console: Console) -> None:
    """What every variant of one seed shares: the real data (fusion sweeps, collected into the
    first variant's run) or the pre-trained world model (p_mask sweeps)."""
    ab = load_ablation(sweep.path)
    sdir = sweep.out / f"seed{seed}"
    if ab.vary == "algo":
        algo = ab.variants[0]
        cfg = _config(ab, sweep, seed, algo)
        run = prepare_run_dir(cfg, sdir / algo, algo)
        reuse_pretraining(cfg, run, seed, sweep.reuse, sweep.out, console)
        ensure_data(cfg, run, console)
    else:
        cfg = _config(ab, sweep, seed)
        pre = prepare_run_dir(cfg, sdir / "pretrain", "rmiov2")
        reuse_pretraining(cfg, pre, seed, sweep.reuse, sweep.out, console)
        console.rule(f"[bold]{ab.name}: pre-training, seed {seed}")
        train_world_model(cfg, pre, sweep.device, console)


def run_variant(sweep: Sweep, seed: int, index: int, console: Console) -> dict[str, Any]:
    """Train (or resume) one variant of one seed on what :func:`prepare_seed` made, then evaluate
    it; returns its table row, which names its run relative to the sweep directory."""
    ab = load_ablation(sweep.path)
    sdir = sweep.out / f"seed{seed}"
    variant = ab.variants[index]
    n_ft = ab.finetune_updates
    if sweep.debug:  # a shipped sweep's count must not lift the debug preset's
        own = _config(ab, sweep, seed).world_model.finetune.updates
        n_ft = own if n_ft is None else min(n_ft, own)
    if ab.vary == "algo":
        cfg = _config(ab, sweep, seed, variant)
        run = prepare_run_dir(cfg, sdir / variant, variant)
        share(sdir / ab.variants[0] / "data", run / "data")  # the same real data for every method
        reuse_pretraining(cfg, run, seed, sweep.reuse, sweep.out, console)
        console.rule(f"[bold]{ab.name}: {variant}, seed {seed}")
        # a method whose preset fixes its own fine-tuning rate keeps it (GAWM: 0, no masking)
        preset = ALGORITHMS[variant].get("world_model", {}).get("finetune", {}).get("p_mask")
        p = ab.p_mask if preset is None else float(preset)
        if cfg.marie.enabled:  # MARIE's trainer and rmio's masked fine-tuning of it (issue 23)
            train_marie(cfg, run, sweep.device, console)
            finetune_marie(run, p, sweep.device, console, n_ft)
        else:
            train_world_model(cfg, run, sweep.device, console)
            finetune_world_model(run, p, sweep.device, console, n_ft)
        label = str(variant)
    else:
        run = sdir / _trial_name(ab, index)
        for name in ("config.yaml", "data", "wm_pretrain.pt"):  # the same pre-trained model
            share(sdir / "pretrain" / name, run / name)
        if ab.vary == "recipe":
            label = str(variant["name"])
            console.rule(f"[bold]{ab.name}: fine-tuning recipe {label}, seed {seed}")
            recipe = dict(variant.get("finetune") or {})
            p = float(recipe.pop("p_mask", ab.p_mask))
            finetune_world_model(run, p, sweep.device, console, n_ft, recipe)
        else:
            label = f"p_mask {float(variant):g}"
            console.rule(f"[bold]{ab.name}: fine-tuning at p_mask {float(variant):g}, seed {seed}")
            finetune_world_model(run, float(variant), sweep.device, console, n_ft)
    row = _evaluate(label, run, ab, sweep.device, console)
    row["run"] = Path(row["run"]).relative_to(sweep.out).as_posix()
    return row


def _write_table(
    ab: AblationConfig,
    out: Path,
    evaluated: dict[int, list[dict[str, Any]]],
    console: Console,
    baselines: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    seeds = list(evaluated)
    labels = [r["variant"] for r in evaluated[seeds[0]]]
    rows = [aggregate(label, [evaluated[s][k] for s in seeds]) for k, label in enumerate(labels)]
    rows += baselines or []
    result = {
        "name": ab.name,
        "scenario": ab.scenario,
        "vary": ab.vary,
        "policy": ab.policy,
        "seeds": seeds,
        "seeds_planned": ab.seeds,
        "report_p_mask": ab.p_mask,
        "robustness": ab.robustness.__dict__,
        "rows": rows,
        "budget": {"set": ab.set, "finetune_updates": ab.finetune_updates},
    }
    if ab.paper:
        n = len(labels)
        result["paper"] = {
            "source": ab.paper.source,
            "rows": {
                label: {"auc": auc, "lrec": lrec}
                for label, auc, lrec in zip(
                    labels, ab.paper.auc or [None] * n, ab.paper.lrec or [None] * n, strict=True
                )
            },
        }
    (out / "ablation.json").write_text(json.dumps(result, indent=1))
    md = markdown(result)
    (out / "ablation.md").write_text(md)
    console.print(Markdown(md))
    console.print(f"wrote {out / 'ablation.md'} and ablation.json (seeds {seeds} of {ab.seeds})")
    return result


def _rob_path(where: Path, model: str, stem: str = "robustness") -> Path:
    return where / f"{stem}{'' if model == 'bernoulli' else '_' + model}.json"


def _robustness(
    bundle: Path, ab: AblationConfig, model: str, strategies: list[str], path: Path
) -> dict[str, Any]:
    """One robustness sweep under one loss model, cached in ``path``."""
    if path.exists():
        return json.loads(path.read_text())
    r = ab.robustness
    rob = robustness.sweep(
        bundle,
        p_loss=r.p_loss,
        episodes=r.episodes,
        seeds=r.seeds,
        strategies=strategies,
        episode_limit=r.steps,
        loss=LossConfig(model, mean_burst_length=r.mean_burst_length),
    )
    path.write_text(json.dumps(rob, indent=1))
    return rob


def _curve(summary: dict[str, Any]) -> dict[str, Any]:
    return {
        "auc_mean": summary["auc_mean"],
        "auc_std": summary["auc_std"],
        "curve": [c["mean"] for c in summary["curve"]],
    }


def _reconstruction(run: Path, which: str, device: str, console: Console) -> dict[str, Any]:
    """``rmio eval reconstruction`` of the run's ``which`` model, or its cached result when that
    was made in the run's evaluation mode: a cached one from another mode (those before window
    mode had none: episode) would put two kinds of L_rec in one table."""
    rec_path = run / "eval_reconstruction.json"
    ev = load_config(run / "config.yaml").world_model.eval
    rec = json.loads(rec_path.read_text()) if rec_path.exists() else None
    if rec is None or (rec.get("mode", "episode"), rec.get("window_stride", 1)) != (
        ev.mode,
        ev.window_stride if ev.mode == "window" else rec.get("window_stride", 1),
    ):
        rec = evaluate_reconstruction(run, which, device, console)
    return rec


def _evaluate(
    label: str, run: Path, ab: AblationConfig, device: str, console: Console
) -> dict[str, Any]:
    """L_rec (and the actor's disagreement) on lost agents at the reporting p_mask, then the
    robustness AUC of the policy with this world model under every loss model of the sweep."""
    rec = _reconstruction(run, "finetune", device, console)
    key = finetuned_row(rec["strategies"])
    masks = rec["p_masks"]
    nearest = min(range(len(masks)), key=lambda i: abs(masks[i] - ab.p_mask))
    lrec = rec["strategies"][key]["lrec_masked"][nearest]
    bundle = run / "bundle"
    if not (bundle / "manifest.json").exists():
        export_run(run, bundle, console, policy_path(ab))
    by_loss = {
        m: _curve(
            _robustness(bundle, ab, m, ["world-model"], _rob_path(run, m))["summary"]["world-model"]
        )
        for m in ab.robustness.loss_models
    }
    first = json.loads(_rob_path(run, ab.robustness.loss_models[0]).read_text())
    return {
        "variant": label,
        "run": str(run),
        "lrec_lost": lrec,
        "lrec_p_mask": masks[nearest],
        **_policy_metric(rec["strategies"][key], nearest),
        **by_loss[ab.robustness.loss_models[0]],
        "by_loss": by_loss,
        "p_loss": first["p_loss"],
        "metric": first["metric"],
    }


def _policy_metric(row: dict[str, Any], k: int) -> dict[str, Any]:
    """The actor's disagreement on lost agents (issue 25), when the evaluation had an actor."""
    for name in ("action_mae", "action_changed"):
        if row.get(name) and row[name][k] is not None:
            return {"policy_metric": name, "policy_value": row[name][k]}
    return {}


def _baseline_rows(
    ab: AblationConfig, out: Path, evaluated: dict[int, list[dict[str, Any]]]
) -> list[dict[str, Any]]:
    """Hold-last and zero-fill with the same actor, masks and evaluation seeds (they do not depend
    on the training seed: one sweep, cached in OUT/baselines*.json); L_rec over training seeds'
    held-out data."""
    first = out / evaluated[next(iter(evaluated))][0]["run"]
    sweeps = {
        m: _robustness(
            first / "bundle", ab, m, ["hold-last", "zero-fill"], _rob_path(out, m, "baselines")
        )
        for m in ab.robustness.loss_models
    }
    rows = []
    for strat in ("hold-last", "zero-fill"):
        recs = [
            json.loads((out / rs[0]["run"] / "eval_reconstruction.json").read_text())
            for rs in evaluated.values()
        ]
        k = min(
            range(len(recs[0]["p_masks"])), key=lambda i: abs(recs[0]["p_masks"][i] - ab.p_mask)
        )
        lrecs = [r["strategies"][strat]["lrec_masked"][k] for r in recs]
        by_loss = {m: _curve(sw["summary"][strat]) for m, sw in sweeps.items()}
        m0 = sweeps[ab.robustness.loss_models[0]]
        pm = [_policy_metric(r["strategies"][strat], k) for r in recs]
        rows.append(
            {
                "variant": f"{strat} (no world model)",
                "runs": [],
                "lrec_lost": float(sum(lrecs) / len(lrecs)),
                "lrec_lost_std": float(np.std(lrecs)) if len(lrecs) > 1 else 0.0,
                "lrec_p_mask": recs[0]["p_masks"][k],
                **(
                    {
                        "policy_metric": pm[0]["policy_metric"],
                        "policy_value": float(np.mean([x["policy_value"] for x in pm])),
                    }
                    if all(pm)
                    else {}
                ),
                **by_loss[ab.robustness.loss_models[0]],
                "by_loss": by_loss,
                "p_loss": m0["p_loss"],
                "metric": m0["metric"],
                "per_seed": [],
            }
        )
    return rows


def _pretrained_row(
    ab: AblationConfig, out: Path, evaluated: dict[int, list[dict[str, Any]]], device: str
) -> dict[str, Any]:
    """The model every recipe of a seed was fine-tuned from, before any fine-tuning (issue 21 asks
    whether a recipe ever loses to it): L_rec of ``OUT/seed<S>/pretrain`` and the robustness of the
    bundles' ``no-finetune`` world model (the seed's pre-trained weights), per training seed."""
    rows = []
    for seed, variants in evaluated.items():
        pre = out / f"seed{seed}" / "pretrain"
        rec = _reconstruction(pre, "pretrain", device, Console(quiet=True))
        keys = [k for k in rec["strategies"] if k.endswith(" pre-trained") and ": " not in k]
        if len(keys) != 1:
            raise RmioError(f"{pre}: expected one pre-trained row, found {keys or 'none'}")
        masks = rec["p_masks"]
        k = min(range(len(masks)), key=lambda i: abs(masks[i] - ab.p_mask))
        bundle = out / variants[0]["run"] / "bundle"  # its wm_step_pretrain.onnx is this seed's
        sweeps = {
            m: _robustness(bundle, ab, m, ["no-finetune"], _rob_path(pre, m))
            for m in ab.robustness.loss_models
        }
        by_loss = {m: _curve(sw["summary"]["no-finetune"]) for m, sw in sweeps.items()}
        m0 = sweeps[ab.robustness.loss_models[0]]
        rows.append(
            {
                "variant": "pre-trained",
                "run": pre.relative_to(out).as_posix(),
                "lrec_lost": rec["strategies"][keys[0]]["lrec_masked"][k],
                "lrec_p_mask": masks[k],
                **_policy_metric(rec["strategies"][keys[0]], k),
                **by_loss[ab.robustness.loss_models[0]],
                "by_loss": by_loss,
                "p_loss": m0["p_loss"],
                "metric": m0["metric"],
            }
        )
    return aggregate("pre-trained (no fine-tuning)", rows)
