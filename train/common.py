"""What every trainer shares (world model, MAPPO, joint pre-training, export, evaluation): run
directories, devices, seeding, progress, and loading trained models from their checkpoints.

A leaf of ``rmio.train``: trainers import it, it imports no trainer, so the package has no cycles.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from rmio.config import Config, build_dataclass, load_config, save_config
from rmio.envs.base import EnvSpec
from rmio.errors import RmioError
from rmio.rundir import new_run_dir
from rmio.train.policy import Actor
from rmio.train.runlog import load_checkpoint
from rmio.train.world_model import RMIOWorldModel


def seed_everything(seed: int) -> None:
    np.random.seed(seed)
    torch.manual_seed(seed)


def begin_training(
    cfg: Config, final: Path, device: str, what: str, console: Console
) -> torch.device | None:
    """None when ``final`` already exists (a finished run is never retrained by accident); otherwise
    the torch device, with threads and seeds set from the config."""
    dev = resolve_device(device)  # a device this machine lacks is refused even for a done run
    if final.exists():
        console.print(f"{final} exists: {what} already finished (delete it to train again)")
        return None
    torch.set_num_threads(cfg.world_model.train.threads)
    seed_everything(cfg.run.seed)
    return dev


def resolve_device(name: str) -> torch.device:
    """The torch device ``name`` names; a bad string or a GPU this machine lacks is one RmioError
    line (exit code 2) before anything trains, not torch's traceback mid-run."""
    try:
        dev = torch.device(name)
    except (RuntimeError, TypeError):
        raise RmioError(
            f"--device '{name}' is not a device: give cpu, cuda, cuda:N (N: a GPU's index) or mps"
        ) from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise RmioError(f"--device {name} asked for, but torch sees no CUDA device on this machine")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        count = torch.cuda.device_count()
        raise RmioError(
            f"--device {name}: torch sees {count} CUDA device(s) here (cuda:0 to cuda:{count - 1})"
        )
    return dev


def prepare_run_dir(cfg: Config, run_dir: Path | None, algo: str) -> Path:
    """A new run directory, or an existing one whose saved config matches (resume)."""
    if run_dir is None:
        run_dir = new_run_dir(cfg, algo)
        save_config(cfg, run_dir)
        return run_dir
    saved = run_dir / "config.yaml"
    if saved.exists():
        old = load_config(saved)
        if (old.env.family, old.env.scenario) != (cfg.env.family, cfg.env.scenario):
            raise RmioError(
                f"run directory '{run_dir}' belongs to {old.env.family}/{old.env.scenario}, "
                f"not {cfg.env.family}/{cfg.env.scenario}; pick another --run-dir"
            )
        if old.digest() != cfg.digest():
            changes = old.changes_from(cfg)  # (key, this command's value, the run's)
            shown = ", ".join(f"{k} {v!r} here, {was!r} in the run" for k, v, was in changes[:3])
            shown = shown or "values differ only in type"
            more = f" and {len(changes) - 3} more" if len(changes) > 3 else ""
            raise RmioError(
                f"run directory '{run_dir}' was made with a different config (hash {old.digest()} "
                f"vs {cfg.digest()}: {shown}{more}); resume with the same config and overrides "
                "(--set KEY=VALUE), or use a new --run-dir"
            )
        return run_dir
    run_dir.mkdir(parents=True, exist_ok=True)
    save_config(cfg, run_dir)
    return run_dir


def build_model(cfg: Config, spec: EnvSpec, stats: tuple[np.ndarray, ...]) -> RMIOWorldModel:
    return RMIOWorldModel(spec, cfg.world_model.model, *stats)


def checkpoint_meta(cfg: Config, spec: EnvSpec, stats: tuple[np.ndarray, ...]) -> dict[str, Any]:
    """What every checkpoint carries so that it can be loaded alone: config (and hash), spec,
    statistics."""
    keys = ("obs_mean", "obs_std", "state_mean", "state_std")
    return {
        "config": cfg.to_dict(),
        "config_hash": cfg.digest(),
        "spec": spec.to_dict(),
        "stats": {k: v.tolist() for k, v in zip(keys, stats, strict=True)},
    }


def load_model(
    path: Path, device: torch.device | str = "cpu"
) -> tuple[RMIOWorldModel, dict[str, Any]]:
    """A world model from a checkpoint (its config and statistics travel with it)."""
    ckpt = load_checkpoint(path, device)
    cfg = build_dataclass(Config, ckpt["config"], str(path))
    spec = EnvSpec.from_dict(ckpt["spec"])
    stats = [
        np.asarray(ckpt["stats"][k], np.float32)
        for k in ("obs_mean", "obs_std", "state_mean", "state_std")
    ]
    model = build_model(cfg, spec, tuple(stats)).to(device)
    if ckpt.get("correction"):  # RMIO v1 after its correction stage (rmio.train.correction)
        model.attach_correction()
    model.load_state_dict(ckpt["model"])
    return model, ckpt


def load_actor(path: Path) -> tuple[Actor, dict[str, Any]]:
    """The trained actor of a `policy.pt` (MAPPO or RMIOv2 pre-training)."""
    ckpt = load_checkpoint(path)
    cfg = build_dataclass(Config, ckpt["config"], str(path))
    spec = EnvSpec.from_dict(ckpt["spec"])
    p = cfg.policy.ppo
    actor = Actor(
        spec,
        p.hidden,
        p.log_std_init,
        np.asarray(ckpt["obs_mean"], np.float32),
        np.asarray(ckpt["obs_std"], np.float32),
    )
    actor.load_state_dict(ckpt["ppo"]["actor"])
    return actor.eval(), ckpt


def progress(console: Console, label: str, total: int):
    """A progress bar with an info column, as a context manager yielding (progress, task)."""

    class _Ctx:
        def __enter__(self):
            self.p = Progress(
                TextColumn(label),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                TextColumn("{task.fields[info]}"),
                console=console,
                transient=False,
            )
            self.p.__enter__()
            return self.p, self.p.add_task(label, total=total, info="")

        def __exit__(self, *exc):
            return self.p.__exit__(*exc)

    return _Ctx()
