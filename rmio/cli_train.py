"""`rmio train`, `rmio eval` and `rmio export`: the PyTorch half, imported lazily (needs the `train`
extra)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from rmio.cli_ablate import register as register_ablate
from rmio.cli_eval import register as register_robustness
from rmio.cli_eval import register_open_loop, register_policy
from rmio.cli_params import BUNDLE, config_options, device_option
from rmio.cli_params import require_torch as _require_torch
from rmio.errors import RmioError


def _console():
    from rmio.console import console

    return console


run_dir_option = click.option(
    "--run-dir",
    type=click.Path(path_type=Path),
    default=None,
    help="Run directory; an existing one is resumed (default: a new one under run.runs_dir).",
)


@click.group()
def train() -> None:
    """Train world models (and, later, policies)."""


def _start_run(
    cfg: Any,
    run_dir: Path | None,
    algo: str,
    device: str,
    module: str,
    function: str,
    check: str | None = None,
) -> None:
    """New or resumed run directory, then the trainer ``module.function(cfg, run_dir, device,
    console)``; ``check`` names the module's ``check(cfg)``, which refuses a setting the trainer
    cannot train before the run directory is made (so a refused run leaves none behind)."""
    import importlib

    _require_torch()
    from rmio.train.common import prepare_run_dir, resolve_device

    resolve_device(device)  # a GPU this machine lacks: refused before the run directory is made
    trainer = importlib.import_module(module)
    if check is not None:
        getattr(trainer, check)(cfg)
    run_dir = prepare_run_dir(cfg, run_dir, algo)
    _console().print(f"run directory: {run_dir}")
    getattr(trainer, function)(cfg, run_dir, device, _console())


def _refuse_marie(marie: bool, what: str) -> None:
    """MARIE has its own trainer, fine-tuning, export and evaluation; a stage that has no MARIE
    counterpart (joint pre-training) says so instead of silently running RMIOv2's on a MARIE
    config."""
    if marie:
        raise RmioError(f"{what} is not built for --algo marie (issue 23)")


def _run_is_marie(run_dir: Path) -> bool:
    from rmio.config import load_config

    saved = run_dir / "config.yaml"
    return saved.exists() and load_config(saved).marie.enabled


@train.command("world-model")
@config_options()
@run_dir_option
@device_option
def world_model(cfg: Any, run_dir: Path | None, device: str, algo: str | None = None) -> None:
    """Pre-train the RMIOv2 world model on real trajectories (collected first, with a random policy
    or the actor of --set run.data_policy=RUN/policy.pt).

    With --algo marie, MARIE's world model (train/marie_*.py) on the same data instead.
    Re-running with the same --run-dir resumes from the last checkpoint.
    """
    marie = cfg.marie.enabled  # from --algo marie, or a resumed run's config
    _start_run(
        cfg,
        run_dir,
        f"{algo or ('marie' if marie else 'rmiov2')}-wm",
        device,
        "rmio.train.marie_train" if marie else "rmio.train.wm_train",
        "train_marie" if marie else "train_world_model",
    )


@train.command("pretrain")
@config_options()
@run_dir_option
@device_option
def pretrain(cfg: Any, run_dir: Path | None, device: str, algo: str | None = None) -> None:
    """RMIOv2 joint pre-training (Algorithm 1): world model + MAPPO trained in imagination.

    Leaves wm_pretrain.pt and the real data in the run directory, so `rmio train finetune` and
    `rmio export` follow directly. Resumable with --run-dir.
    """
    _refuse_marie(cfg.marie.enabled, "joint pre-training")
    _start_run(cfg, run_dir, algo or "rmiov2", device, "rmio.train.joint", "train_joint")


@train.command("mappo")
@config_options()
@run_dir_option
@device_option
def mappo(cfg: Any, run_dir: Path | None, device: str) -> None:
    """Model-free r-MAPPO on the real environment (the baseline); resumable with --run-dir."""
    _start_run(cfg, run_dir, "mappo", device, "rmio.train.mappo", "train_mappo")


@train.command("qmix")
@config_options()
@run_dir_option
@device_option
def qmix(cfg: Any, run_dir: Path | None, device: str) -> None:
    """Model-free QMIX (episode replay, recurrent Q-agents, monotonic mixer on the global state;
    discrete actions); settings in the config's qmix: section; resumable with --run-dir."""
    _start_run(
        cfg, run_dir, "qmix", device, "rmio.train.qmix", "train_qmix", check="check_value_task"
    )


@train.command("mmsa")
@config_options()
@run_dir_option
@device_option
def mmsa(cfg: Any, run_dir: Path | None, device: str) -> None:
    """MMSA (model-based QMIX: SALE embeddings in the Q-agents, a latent world model rolled out 3
    steps from each agent's recurrent state, the roll-out state in the mixer; discrete actions);
    settings in the config's qmix: and mmsa: sections; resumable with --run-dir."""
    _start_run(cfg, run_dir, "mmsa", device, "rmio.train.mmsa", "train_mmsa", check="check_mmsa")


@train.command("finetune")
@click.argument("run_dir", type=click.Path(path_type=Path, exists=True, file_okay=False))
@click.option(
    "--p-mask",
    type=click.FloatRange(0.0, 1.0),
    default=None,
    help="Masking probability per agent and step (default world_model.finetune.p_mask).",
)
@click.option("--updates", type=click.IntRange(min=1), default=None, help="Upper bound on updates.")
@click.option(
    "--mask-models",
    default=None,
    help="Comma-separated loss models the masks are drawn from, one per sequence: bernoulli "
    "(the paper), burst, blackout (default world_model.finetune.mask_models).",
)
@click.option(
    "--p-mask-range",
    type=(click.FloatRange(0.0, 1.0), click.FloatRange(0.0, 1.0)),
    default=None,
    help="LOW HIGH: draw each sequence's mask rate from U[LOW, HIGH] instead of --p-mask.",
)
@click.option(
    "--mean-burst-length",
    type=click.FloatRange(min=1.0),
    default=None,
    help="Mean run of lost steps of burst masks (default world_model.finetune's).",
)
@click.option(
    "--policy-weight",
    type=click.FloatRange(min=0.0),
    default=None,
    help="rmio's policy-aware fine-tuning: weight of the frozen actor's disagreement on lost "
    "agents (0: the paper's objective; default world_model.finetune.policy_weight).",
)
@click.option(
    "--policy",
    default=None,
    help="The actor of --policy-weight: a policy.pt or a bundle (default run.data_policy).",
)
@device_option
def finetune(
    run_dir: Path,
    p_mask: float | None,
    updates: int | None,
    mask_models: str | None,
    p_mask_range: tuple[float, float] | None,
    mean_burst_length: float | None,
    policy_weight: float | None,
    policy: str | None,
    device: str,
) -> None:
    """Masked fine-tuning of a pre-trained world model (Algorithm 2, lines 20-27); the masks can
    also come from burst or blackout loss and from a range of rates (rmio's, not the paper's).

    On a MARIE run (--algo marie), rmio's masked-token fine-tuning of MARIE (not the paper's):
    lost agents' tokens become [MASK] and are predicted all at once. On an MMSA run, rmio's
    observation decoder then masked fine-tuning of MMSA's latent model (not the paper's), which
    `rmio export MMSA_RUN` ships as the bundle's world model."""
    _require_torch()
    marie = _run_is_marie(run_dir)  # rmio's masked fine-tuning of MARIE (train/marie_finetune.py)
    if marie:
        from rmio.train.marie_finetune import finetune_marie as finetune_world_model
    elif (run_dir / "mmsa.pt").is_file():  # rmio's observation decoder for MMSA, not the paper's
        from rmio.train.mmsa_finetune import finetune_mmsa as finetune_world_model
    else:
        from rmio.train.wm_train import finetune_world_model

    masks: dict[str, Any] = {}
    if mask_models is not None:
        masks["mask_models"] = [m.strip() for m in mask_models.split(",") if m.strip()]
    if p_mask_range is not None:
        masks["p_mask_range"] = list(p_mask_range)
    if mean_burst_length is not None:
        masks["mean_burst_length"] = mean_burst_length
    if policy_weight is not None:
        masks["policy_weight"] = policy_weight
    if policy is not None:
        masks["policy"] = policy
    finetune_world_model(run_dir, p_mask, device, _console(), updates, masks)


@click.group("eval")
def eval_group() -> None:
    """Evaluate trained models."""


@eval_group.command("reconstruction")
@click.argument("run_dir", type=click.Path(path_type=Path, exists=True, file_okay=False))
@click.option(
    "--checkpoint",
    type=click.Choice(["finetune", "pretrain", "both"]),
    default="both",
    show_default=True,
)
@click.option(
    "--loss-model",
    type=click.Choice(["bernoulli", "burst", "blackout"]),
    default=None,
    help="Test-time masks (default world_model.eval.loss_model, bernoulli); results of another "
    "model go to eval_reconstruction_<model>.*",
)
@click.option(
    "--mean-burst-length",
    type=click.FloatRange(min=1.0),
    default=None,
    help="Mean run of lost steps of burst masks (default world_model.eval's).",
)
@click.option(
    "--policy",
    default=None,
    help="Bundle whose actor the policy metrics use (default: the run's bundle, else "
    "run.data_policy when it is a bundle).",
)
@click.option(
    "--beside",
    multiple=True,
    type=click.Path(path_type=Path, exists=True, file_okay=False),
    help="Another run of the same task (RMIOv2, a variant or MARIE) whose world models are scored "
    "on RUN_DIR's held-out episodes with the same masks, in the same table; repeatable.",
)
@click.option(
    "--mode",
    type=click.Choice(["window", "episode"]),
    default=None,
    help="How a filtering world model reconstructs step t (default world_model.eval.mode, "
    "window): window replays steps t - history_window..t from the zero state, as the swarm "
    "does, at every world_model.eval.window_stride-th step; episode filters each whole episode "
    "in one pass. MARIE always scores windows.",
)
@click.option(
    "--window-stride",
    type=click.IntRange(min=1),
    default=None,
    help="In window mode, reconstruct and score every N-th step of an episode (default "
    "world_model.eval.window_stride, 1); the baselines score every step.",
)
@device_option
def reconstruction(
    run_dir: Path,
    checkpoint: str,
    loss_model: str | None,
    mean_burst_length: float | None,
    policy: str | None,
    beside: tuple[Path, ...],
    mode: str | None,
    window_stride: int | None,
    device: str,
) -> None:
    """L_rec on held-out trajectories for every test-time p_mask, GPE, GCI, and the zero-fill and
    hold-last baselines; writes a table (markdown, JSON) and a PNG plot into the run directory.

    RMIOv2's world models reconstruct as the swarm does (--mode window, the default). A MARIE run
    is scored through its window graph's PyTorch module (the swarm's round), with the same masks
    as RMIOv2's; --beside puts other runs' models in the same table."""
    _require_torch()
    from rmio.train.marie_eval import evaluate_reconstruction

    evaluate_reconstruction(
        run_dir, checkpoint, device, _console(), loss_model, mean_burst_length, policy,
        list(beside), mode, window_stride,
    )  # fmt: skip


register_robustness(eval_group)
register_open_loop(eval_group)
register_policy(eval_group)


@click.command("export")
@click.argument(
    "run_dir", type=click.Path(path_type=Path, exists=True, file_okay=False), required=False
)
@click.option(
    "--out",
    type=click.Path(path_type=Path),
    default=None,
    help="Bundle directory (default RUN_DIR/bundle).",
)
@click.option(
    "--check",
    "check_dir",
    type=BUNDLE,
    default=None,
    help="Re-validate an existing bundle instead of exporting.",
)
@click.option(
    "--policy",
    "policy_arg",
    default=None,
    help="Ship the actor of this policy.pt, or a bundle's actor.onnx (a directory or a shipped "
    "name, e.g. halfcheetah_6x1), instead of RUN_DIR's own (same scenario); a QMIX "
    "qmix.pt or an MMSA mmsa.pt (or their ckpt_*.pt) ships its Q-agent as a recurrent actor.",
)
@click.option(
    "--world-model",
    "world_model",
    default=None,
    help="For a QMIX or MMSA run (which export no world model): the world model to pair its "
    "Q-agent with, a bundle (directory or shipped name) or a world-model run directory of the "
    "same task.",
)
def export(
    run_dir: Path | None,
    out: Path | None,
    check_dir: Path | None,
    policy_arg: str | None,
    world_model: str | None,
) -> None:
    """Export the (fine-tuned) world model as a one-step ONNX graph plus manifest, checked against
    PyTorch. A QMIX or MMSA run exports its Q-agent (greedy over available actions, its GRU state
    carried between steps) beside the world model named by --world-model."""
    # onnxruntime alone: a deployment can check a bundle without torch
    if check_dir is not None:
        from rmio.runtime.validate import check_bundle

        _console().print(check_bundle(check_dir))
        return
    if run_dir is None:
        raise click.UsageError("give RUN_DIR to export, or --check BUNDLE")
    _require_torch()
    from rmio.models import find_bundle
    from rmio.train.export import export_run
    from rmio.train.export_q import export_qmix, is_q_checkpoint

    # a policy.pt (or Q checkpoint) file, else a bundle directory or a shipped bundle's name
    policy = None if policy_arg is None else Path(policy_arg)
    if policy is not None and not policy.is_file():
        policy = find_bundle(policy_arg)
    # a QMIX or MMSA run (no world model to export): its final Q-agent, else its last checkpoint's
    names = [f"{stem}{a}.pt" for a in ("qmix", "mmsa") for stem in ("", "ckpt_")]
    q_ckpt = next((run_dir / f for f in names if (run_dir / f).is_file()), None)
    if list(run_dir.glob("wm_*.pt")):
        q_ckpt = None
    if policy is not None and is_q_checkpoint(policy):  # RUN_DIR holds the world model
        export_qmix(policy, world_model or run_dir, out or run_dir / "bundle", _console())
    elif q_ckpt is not None and world_model is None and (run_dir / "mmsa_wm.pt").is_file():
        from rmio.train.mmsa_export import export_mmsa_bundle  # its own fine-tuned world model

        export_mmsa_bundle(run_dir, q_ckpt, out or run_dir / "bundle", _console())
    elif q_ckpt is not None:
        if world_model is None:
            raise RmioError(
                f"'{run_dir}' is a {q_ckpt.stem.removeprefix('ckpt_').upper()} run, which exports "
                "no world model: name one of the same task with --world-model (a bundle, a "
                "shipped name or a world-model run directory)"
            )
        export_qmix(q_ckpt, world_model, out or run_dir / "bundle", _console())
    elif world_model is not None:
        raise RmioError(
            f"--world-model pairs a QMIX or MMSA actor with a world model, and '{run_dir}' is "
            "neither (export its own world model, or give --policy RUN/qmix.pt or RUN/mmsa.pt)"
        )
    else:
        export_run(run_dir, out or run_dir / "bundle", _console(), policy)


@click.command("plot")
@click.argument(
    "run_dirs",
    nargs=-1,
    required=True,
    type=click.Path(path_type=Path, exists=True, file_okay=False),
)
@click.option(
    "--out",
    type=click.Path(path_type=Path),
    default=Path("learning_curves.png"),
    show_default=True,
)
@click.option(
    "--metric",
    type=click.Choice(["return_mean", "win_rate"]),
    default="return_mean",
    show_default=True,
)
def plot(run_dirs: tuple[Path, ...], out: Path, metric: str) -> None:
    """Overlay the learning curves (evaluation metric vs real environment steps) of several runs."""
    from rmio.errors import RmioError
    from rmio.train.evaluate import plot_curves

    missing = [str(d) for d in run_dirs if not (d / "eval.jsonl").exists()]
    if missing:
        raise RmioError(f"no eval.jsonl (evaluations of a policy run) in: {', '.join(missing)}")
    plot_curves(list(run_dirs), out, metric)
    _console().print(f"wrote {out}")


def register(cli: click.Group) -> None:
    """Attach the training, evaluation and export commands to the main group (keeps cli.py free of
    torch)."""
    register_ablate(cli)
    cli.add_command(plot)
    cli.add_command(train)
    cli.add_command(eval_group)
    cli.add_command(export)
