"""Reusing another sweep's finished pre-training (`rmio ablate SWEEP --reuse OTHER_OUT`).

Several of the paper's tables start from the same world model: the p_mask and recipe sweeps
fine-tune one pre-trained model per seed, and the rmiov2 column of the fusion, Fig. 8 and MARIE
sweeps pre-trains the same model again on the same data. A run directory whose config hash equals
the one a stage is about to train, in a sweep that collected its data with the same actor (the
digests ``policies.json`` pins), holds exactly what that stage would train: its data and
``wm_pretrain.pt`` are hard-linked instead (the same test that lets a run resume). Fine-tuning and
evaluation still run in the new sweep."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from rich.console import Console

from rmio.config import Config, load_config

SHARED = ("data", "wm_pretrain.pt", "wm_pretrain.csv", "wm_pretrain.jsonl")
"""What a finished pre-training leaves that later stages read (its checkpoint for resuming and
its TensorBoard files stay behind)."""


def share(src: Path, dst: Path) -> None:
    """Hard-link (or copy) a finished artefact into another run directory."""
    if dst.exists():
        return
    dst.parent.mkdir(parents=True, exist_ok=True)
    if src.is_dir():
        shutil.copytree(src, dst, copy_function=_link)
    else:
        _link(src, dst)


def _link(src: str | Path, dst: str | Path) -> None:
    try:
        Path(dst).hardlink_to(src)
    except OSError:
        shutil.copy2(src, dst)


def _data_actor(out: Path) -> str | None:
    pinned = out / "policies.json"
    if not pinned.is_file():
        return None
    return json.loads(pinned.read_text()).get("run.data_policy", "random")


def reuse_pretraining(
    cfg: Config, run: Path, seed: int, reuse: tuple[Path, ...], out: Path, console: Console
) -> Path | None:
    """Fill ``run`` (made by prepare_run_dir, so its config.yaml is ``cfg``'s) from the first
    finished pre-training of seed ``seed`` in the ``reuse`` sweep directories with the same config
    hash and data actor; returns the run it came from, or None (then the stage trains)."""
    if (run / "wm_pretrain.pt").exists() or not reuse:
        return None
    mine = _data_actor(out)
    for other in reuse:
        if other.resolve() == out.resolve() or mine is None or _data_actor(other) != mine:
            continue  # a sweep without pinned actors, or collected with another actor
        found = (other / f"seed{seed}").glob("*/config.yaml")  # a sweep's own pretrain first
        for saved in sorted(found, key=lambda c: (c.parent.name != "pretrain", c.as_posix())):
            source = saved.parent
            if not (source / "wm_pretrain.pt").is_file():
                continue
            if load_config(saved).digest() != cfg.digest():
                continue
            for name in SHARED:
                if (source / name).exists():
                    share(source / name, run / name)
            (run / "REUSED_FROM").write_text(f"{source.relative_to(other.parent).as_posix()}\n")
            console.print(
                f"seed {seed}: pre-training reused from {source} (config hash {cfg.digest()}, "
                "same data actor)"
            )
            return source
    return None
