"""`rmio export` of a MARIE run: the window graph (``wm_window.onnx``, train/marie_masked.py's
``LostRowsWindow``, which runs the Transformer for the lost agents' rows alone) in place of
RMIOv2's ``wm_step.onnx``, under the manifest role ``wm_step`` with ``Manifest.wm_window`` saying
what it is, checked for parity against PyTorch's ``MarieWindow`` (every row computed).

Parity is checked twice, as for RMIOv2: on random windows with a batch of 3 (lost rows, a padded
window), and on held-out episodes with random loss masks, every step's window built by the
runtime's runner (``WindowModelRunner``) from the raw history as a coordinator holds it, and by
PyTorch from the same history on its own, so the runner's padding and action encoding are checked
too. Observations and tokens are compared; a token that differs is reported as its fraction. A
lost agent whose [MASK] tokens differ only where PyTorch's two best logits are within
``PARITY_TOLERANCE`` (an argmax tie, train/parity.py) is left out of the held-out comparison and
counted (``parity_replay_ties``); every round reads its raw window, so a tie never carries over.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.console import Console

from rmio.config import algorithm_of, load_config
from rmio.envs.base import EnvSpec
from rmio.envs.trajectory import TrajectoryBuffer
from rmio.errors import RmioError
from rmio.runtime.bundle import SCHEMA_VERSION, Manifest
from rmio.runtime.models import WM_WINDOW_INPUTS, WM_WINDOW_OUTPUTS, WindowModelRunner
from rmio.train.marie_finetune import FINAL as FINETUNED
from rmio.train.marie_masked import LostRowsWindow, MarieWindow
from rmio.train.marie_model import MarieWorldModel
from rmio.train.marie_train import FINAL as PRETRAINED
from rmio.train.marie_train import load_marie
from rmio.train.parity import PARITY_TOLERANCE, argmax_ties

log = logging.getLogger(__name__)
FILE, FILE_PRETRAIN = "wm_window.onnx", "wm_window_pretrain.onnx"


def random_windows(
    model: MarieWorldModel, batch: int, steps: int, gen: torch.Generator
) -> tuple[torch.Tensor, ...]:
    """Random inputs of the window graph: observations around the data's statistics, about a
    third of the rows lost, discrete actions one-hot, and the last window of the batch 3 steps long
    (an episode's first steps, padded after them)."""
    n, d = model.n, model.tok.mean.shape[-1]
    obs = (
        model.tok.mean[:, None]
        + torch.randn(batch, n, steps, d, generator=gen) * model.tok.std[:, None]
    )
    mask = (torch.rand(batch, n, steps, generator=gen) > 0.35).float()
    width = model.act_vocab if model.discrete else model.act_tokens
    if model.discrete:
        pick = torch.randint(0, width, (batch, n, steps - 1), generator=gen)
        actions = torch.nn.functional.one_hot(pick, width).float()
    else:
        low, high = model.act_low, model.act_high
        actions = low + (high - low) * torch.rand(batch, n, steps - 1, width, generator=gen)
    valid = torch.ones(batch, steps)
    valid[-1, min(3, steps - 1) :] = 0.0
    keep = mask * valid[:, None]
    return obs * keep[..., None], actions * valid[:, None, 1:, None], keep, valid


def random_parity(model: MarieWorldModel, path: Path, steps: int) -> tuple[float, float]:
    """(max |onnxruntime - torch| of obs_recon, fraction of tokens that differ) on 3 random
    windows."""
    from rmio.runtime.models import make_session

    args = random_windows(model, 3, steps, torch.Generator().manual_seed(0))
    with torch.no_grad():
        ref = [t.numpy() for t in MarieWindow(model, steps)(*args)]
    feeds = {k: v.numpy() for k, v in zip(WM_WINDOW_INPUTS, args, strict=True)}
    got = make_session(path).run(list(WM_WINDOW_OUTPUTS), feeds)
    return float(np.abs(ref[0] - got[0]).max()), float((ref[1] != got[1]).mean())


def _torch_window(
    model: MarieWorldModel, obs: np.ndarray, prev: np.ndarray, masks: np.ndarray, steps: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Step t's reconstruction (n, obs_dim), tokens (n, K) and token logits (n, K, codebook) from
    the history of steps s..t as a coordinator holds it (T, n, ...), its last k steps placed in
    PyTorch (the reference the runner's numpy feeds are checked against)."""
    T, n = masks.shape
    k = min(T, steps)
    o = torch.zeros(1, n, steps, obs.shape[-1])
    m = torch.zeros(1, n, steps)
    o[0, :, :k] = torch.as_tensor(obs[T - k :]).transpose(0, 1)
    m[0, :, :k] = torch.as_tensor(masks[T - k :]).transpose(0, 1)
    a = torch.zeros(1, n, steps - 1, model.act_vocab if model.discrete else model.act_tokens)
    for j, h in enumerate(range(T - k + 1, T)):  # a_h taken on o_{h-1}: prev[h]
        act = torch.as_tensor(prev[h])
        if model.discrete:
            act = torch.nn.functional.one_hot(act.long().clamp_min(0), a.shape[-1]).float()
            act = act * (torch.as_tensor(prev[h]) >= 0).float()[:, None]
        a[0, :, j] = act
    valid = torch.zeros(1, steps)
    valid[0, :k] = 1.0
    window = MarieWindow(model, steps)
    with torch.no_grad():
        recon, codes, hidden = window.round(o * m[..., None], a, m, valid)
        logits = window.step_logits(hidden, valid)
    return recon[0].numpy(), codes[0].numpy(), logits[0].numpy()


def replay_parity(
    model: MarieWorldModel,
    runner: WindowModelRunner,
    holdout: TrajectoryBuffer,
    window: int,
    steps: int = 40,
    p_mask: float = 0.5,
) -> tuple[float, int]:
    """Every step's round of the first held-out episodes under random masks, in both runtimes:
    max |difference| of the lost agents' reconstructions, and how many lost agent-steps were left
    out as argmax ties."""
    rng = np.random.default_rng(0)
    worst, ties = 0.0, 0
    for e in range(min(holdout.num_episodes, 2)):
        ep = holdout.episode(e)
        T = min(steps, len(ep["obs"]))
        obs = ep["obs"][:T].astype(np.float32)
        prev = (
            np.full_like(ep["action"][:T], -1)
            if model.discrete
            else np.zeros_like(ep["action"][:T])
        )
        prev[1:] = ep["action"][: T - 1]
        masks = (rng.random((T, obs.shape[1])) >= p_mask).astype(np.float32)
        for t in range(T):
            s = max(0, t - window)  # the coordinator's window s..t (runtime/history.py)
            lost = masks[t] < 0.5
            if not lost.any():
                continue
            _, got = runner.replay(obs[s : t + 1], prev[s : t + 1], masks[s : t + 1])
            ref, ref_tokens, logits = _torch_window(
                model, obs[s : t + 1] * masks[s : t + 1, :, None], prev[s : t + 1],
                masks[s : t + 1], runner.steps,
            )  # fmt: skip
            err = np.abs(got[-1] - ref).max(-1)  # per agent
            compared = lost.copy()
            if (err[lost] > PARITY_TOLERANCE).any():
                feeds = runner.feeds(*(x[s : t + 1, None] for x in (obs, prev, masks)))
                (tokens,) = runner.session.run(["tokens_t"], feeds)
                eye = np.eye(logits.shape[-1], dtype=np.float32)
                tied = argmax_ties(logits, eye[ref_tokens], eye[tokens[0]])
                if tied is not None:
                    ties += int((tied & lost).sum())
                    compared &= ~tied
            if compared.any():
                worst = max(worst, float(err[compared].max()))
    return worst, ties


def export_marie_world_model(
    run_dir: Path, out: Path, console: Console, export_onnx: Callable[..., None]
) -> tuple[Manifest, EnvSpec, dict[str, float]]:
    """Write ``wm_window.onnx`` (and ``wm_window_pretrain.onnx`` after fine-tuning) with
    ``export_onnx`` (train/export.py's, passed in so that neither module imports the other) and the
    manifest's world-model fields; returns the manifest, the task's spec and the parity errors
    (the caller adds the actor and refuses the bundle above the tolerance)."""
    path = run_dir / FINETUNED
    if not path.exists():
        path = run_dir / PRETRAINED
        if not path.exists():
            raise RmioError(f"'{run_dir}' has no trained MARIE world model to export")
        console.print(
            "[yellow]no fine-tuned MARIE in this run: exporting the pre-trained one; it was never "
            "trained to fill in lost observations (`rmio train finetune` does)[/]"
        )
    model, ckpt = load_marie(path, "cpu")
    cfg = load_config(run_dir / "config.yaml")
    window = cfg.world_model.history_window
    steps = window
    if not 2 <= steps <= cfg.marie.seq_len:
        raise RmioError(
            f"MARIE's window graph reads the last history_window = {window} steps, which must be "
            f"in [2, marie.seq_len = {cfg.marie.seq_len}]"
        )
    example = random_windows(model, 2, steps, torch.Generator().manual_seed(1))
    export_onnx(
        LostRowsWindow(model, steps), example, out / FILE, WM_WINDOW_INPUTS, WM_WINDOW_OUTPUTS
    )
    summary: dict[str, Any] = ckpt.get("summary", {})
    stats = ckpt["stats"]
    manifest = Manifest(
        schema_version=SCHEMA_VERSION,
        spec=EnvSpec.from_dict(ckpt["spec"]),
        history_window=window,
        deter=0,
        stoch=0,
        act_width=model.act_vocab if model.discrete else model.act_tokens,
        obs_mean=stats["obs_mean"],
        obs_std=stats["obs_std"],
        wm_window={
            "algo": "marie",
            "preset": cfg.marie.preset,
            "steps": steps,
            "tokens": model.k,
            "codebook": model.codebook,
            "context_token": bool(model.ctx),
            "graph": "rmio's masked-token extension: lost agents' tokens [MASK], all K at once",
            "rows": "lost",
        },
        files={"wm_step": FILE},
        config=ckpt["config"],
        config_hash=ckpt["config_hash"],
        budget={
            "wm_checkpoint": path.name,
            "p_mask": ckpt.get("p_mask"),
            "mask_recipe": ckpt.get("masks"),
            "updates": summary.get("updates"),
            "wm_algo": algorithm_of(ckpt["config"]),
        },
        metrics={k: v for k, v in summary.items() if k.startswith("holdout_")},
    )
    manifest.save(out)
    runner = WindowModelRunner(out, manifest)
    err_random, tokens_random = random_parity(model, out / FILE, steps)
    holdout = TrajectoryBuffer.load(run_dir / "data" / "holdout.npz")
    err_replay, ties = replay_parity(model, runner, holdout, window)
    parity = {"parity_max_abs_random": err_random, "parity_max_abs_replay": err_replay}
    manifest.metrics.update(
        parity, parity_tokens_differ_random=tokens_random, parity_replay_ties=ties
    )
    if path.name == FINETUNED and (run_dir / PRETRAINED).exists():
        pre, _ = load_marie(run_dir / PRETRAINED, "cpu")
        export_onnx(
            LostRowsWindow(pre, steps),
            example,
            out / FILE_PRETRAIN,
            WM_WINDOW_INPUTS,
            WM_WINDOW_OUTPUTS,
        )
        manifest.files["wm_step_pretrain"] = FILE_PRETRAIN
        parity["parity_max_abs_random_pretrain"] = random_parity(pre, out / FILE_PRETRAIN, steps)[0]
        manifest.metrics["parity_max_abs_random_pretrain"] = parity[
            "parity_max_abs_random_pretrain"
        ]
    console.print(
        f"MARIE window graph ({cfg.marie.preset} preset, {steps} steps): parity onnxruntime vs "
        f"torch max |diff| {err_random:.2e} (random windows, batch 3; tokens differing "
        f"{tokens_random:.1%}), {err_replay:.2e} (held-out rounds with masks"
        + (f"; {ties} lost agent-step(s) left out as argmax ties" if ties else "")
        + ")"
    )
    return manifest, manifest.spec, parity
