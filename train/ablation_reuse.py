"""Reusing another sweep's finished pre-training (`rmio ablate SWEEP --reuse OTHER_OUT`).

Several of the paper's tables start from the same world model: the p_mask and recipe sweeps
fine-tune one pre-trained model per seed, and the rmiov2 column of the fusion, Fig. 8 and MARIE
sweeps pre-trains the same model again on the same data. A run directory whose config hash equals
the one a stage is about to train, in a sweep that collected its data with the same actor (the
digests ``policies.json`` pins), holds exactly what that stage would train: its data and
``wm_pretrain.pt`` are hard-linked instead (the same test that lets a run resume). Fine-tuning and
evaluation still run in the new sweep."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

from rich.console import Console

from rmio.config import Config, load_config
from rmio.errors import RmioError

LINKED = ("data", "wm_pretrain.pt")
"""What a finished pre-training leaves that later stages read, hard-linked (both are written once;
its checkpoint for resuming and its TensorBoard files stay behind)."""
COPIED = ("wm_pretrain.csv", "wm_pretrain.jsonl")
"""Its logs, copied: they are appended to, and a run trained again must not write into the other
sweep's."""


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


def _same_file(a: Path, b: Path) -> bool:
    if a.stat().st_size != b.stat().st_size:
        return False
    return hashlib.sha256(a.read_bytes()).digest() == hashlib.sha256(b.read_bytes()).digest()


def reuse_pretraining(
    cfg: Config, run: Path, seed: int, reuse: tuple[Path, ...], out: Path, console: Console
) -> Path | None:
    """Fill ``run`` (made by prepare_run_dir, so its config.yaml is ``cfg``'s) from the first
    finished pre-training of seed ``seed`` in the ``reuse`` sweep directories with the same config
    hash and data actor; returns the run it came from, or None (then the stage trains). A run that
    already holds data of its own reuses only a model trained on the very same data."""
    if (run / "wm_pretrain.pt").exists() or not reuse:
        return None
    mine = _data_actor(out)
    for other in reuse:
        if other.resolve() == out.resolve():
            continue
        theirs = _data_actor(other)
        if mine is None or theirs != mine:
            why = "it pinned no actors" if theirs is None else "its data come from another actor"
            console.print(f"--reuse {other}: skipped, {why}")
            continue
        found = (other / f"seed{seed}").glob("*/config.yaml")  # a sweep's own pretrain first
        for saved in sorted(found, key=lambda c: (c.parent.name != "pretrain", c.as_posix())):
            source = saved.parent
            if not (source / "wm_pretrain.pt").is_file():
                continue  # written at once when pre-training ends: absent while it runs
            try:
                if load_config(saved).digest() != cfg.digest():
                    continue
            except RmioError:  # a config of another rmio version or of a foreign tool
                continue
            own = run / "data" / "train.npz"
            if own.exists() and not _same_file(own, source / "data" / "train.npz"):
                continue
            for name in LINKED:
                share(source / name, run / name)
            for name in COPIED:
                if (source / name).exists() and not (run / name).exists():
                    shutil.copy2(source / name, run / name)
            (run / "REUSED_FROM").write_text(f"{source.relative_to(other.parent).as_posix()}\n")
            console.print(
                f"seed {seed}: pre-training reused from {source} (config hash {cfg.digest()}, "
                "same data actor)"
            )
            return source
    return None
