"""`rmio export MMSA_RUN` of a run fine-tuned for observation loss (`rmio train finetune`,
train/mmsa_finetune.py): the MMSA Q-actor beside the run's own world model, rmio's extension (not
the paper's).

The world model is RMIOv2's contract unchanged (docs/BUNDLE.md, ``wm_step.onnx``): ``h`` is the
Q-agent's GRU state (deter = qmix.rnn_hidden), ``z`` MMSA's latent state s^ and the observation
the agent last acted on (stoch = mmsa.latent_dim + obs_dim), so the coordinator, the incremental
mode and every evaluation run it as they run RMIOv2's. ``wm_step_pretrain.onnx`` is the decoder
stage's model (the ``no-finetune`` strategy). Parity against PyTorch: random inputs, then real
episodes of the agent replayed with masks through the runtime's own ``WorldModelRunner``; a bundle
beyond ``PARITY_TOLERANCE`` is refused. The actor is then written and checked by the Q-actor
export (train/export_q.py), as with ``--world-model``.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

import numpy as np
import torch
from rich.console import Console
from torch import nn

from rmio.config import Config, build_dataclass
from rmio.envs.base import EnvSpec
from rmio.errors import RmioError
from rmio.runtime.bundle import SCHEMA_VERSION, WM_INPUTS, WM_OUTPUTS, Manifest
from rmio.runtime.models import WorldModelRunner
from rmio.train.export import PARITY_TOLERANCE, export_onnx, portable_path
from rmio.train.export_q import _check_task, _write, load_q_agent
from rmio.train.mmsa_finetune import DATA_SEED, FINAL, PRETRAINED, collect, load_obs_model
from rmio.train.mmsa_recon import MMSAObsModel

PARITY_SEED = 3 * DATA_SEED
"""The replay parity's episodes use env seeds of their own."""


class MMSAStep(nn.Module):
    """``wm_step.onnx``: (h, z, prev_action, obs, mask) -> (h_next, z_next, obs_recon)."""

    def __init__(self, model: MMSAObsModel) -> None:
        super().__init__()
        self.model = model

    def forward(self, h, z, prev_action, obs, mask):
        return self.model.step(h, z, prev_action, obs, mask)


def _random_inputs(
    model: MMSAObsModel, batch: int, gen: torch.Generator
) -> tuple[torch.Tensor, ...]:
    n, d, a = model.n_agents, model.obs_dim, model.agent
    h = torch.randn(batch, n, model.hidden, generator=gen).tanh()
    z = torch.randn(batch, n, model.stoch, generator=gen)
    acts = torch.randint(model.n_actions, (batch, n), generator=gen)
    prev = torch.nn.functional.one_hot(acts, model.n_actions).float()
    obs = a.obs_mean + a.obs_std * torch.randn(batch, n, d, generator=gen)
    mask = (torch.rand(batch, n, generator=gen) > 0.5).float()
    return h, z, prev, obs * mask.unsqueeze(-1), mask


def random_parity(model: MMSAObsModel, runner: WorldModelRunner, batch: int = 3) -> float:
    args = _random_inputs(model, batch, torch.Generator().manual_seed(0))
    with torch.no_grad():
        ref = [t.numpy() for t in model.step(*args)]
    feeds = {k: v.numpy() for k, v in zip(WM_INPUTS, args, strict=True)}
    got = runner.session.run(list(WM_OUTPUTS), feeds)
    return max(float(np.abs(a - b).max()) for a, b in zip(ref, got, strict=True))


def replay_parity(
    model: MMSAObsModel,
    runner: WorldModelRunner,
    cfg: Config,
    episodes: int = 2,
    p_mask: float = 0.5,
) -> float:
    """Real episodes of the agent, masked at ``p_mask``, through onnxruntime's ``replay`` and the
    PyTorch step; the largest reconstruction difference."""
    data = collect(model.agent, cfg, episodes, cfg.run.seed + PARITY_SEED, torch.device("cpu"))
    rng = np.random.default_rng(0)
    worst = 0.0
    for k in range(data.count):
        length = int(data.data["length"][k])
        obs = data.data["obs"][k, : length + 1]
        prev = np.full((length + 1, model.n_agents), -1, np.int64)
        prev[1:] = data.data["actions"][k, :length]
        masks = (rng.random(prev.shape) >= p_mask).astype(np.float32)
        _, onnx_rec = runner.replay(obs, prev, masks)
        with torch.no_grad():
            h, z = model.initial(1)
            enc = torch.as_tensor(runner.encode_actions(prev))
            recs = []
            for t in range(length + 1):
                m = torch.as_tensor(masks[t])[None]
                o = torch.as_tensor(obs[t])[None] * m.unsqueeze(-1)
                h, z, rec = model.step(h, z, enc[t][None], o, m)
                recs.append(rec[0].numpy())
        worst = max(worst, float(np.abs(np.stack(recs) - onnx_rec).max()))
    return worst


def _world_model_files(run_dir: Path, out: Path, console: Console) -> Manifest:
    """``wm_step.onnx`` (and ``wm_step_pretrain.onnx``) and a manifest without an actor in
    ``out``, checked for parity."""
    model, ckpt = load_obs_model(run_dir / FINAL)
    cfg = build_dataclass(Config, ckpt["config"], str(run_dir / FINAL))
    example = _random_inputs(model, 2, torch.Generator().manual_seed(1))
    export_onnx(MMSAStep(model), example, out / "wm_step.onnx", WM_INPUTS, WM_OUTPUTS)
    a = model.agent
    manifest = Manifest(
        schema_version=SCHEMA_VERSION,
        spec=EnvSpec.from_dict(ckpt["spec"]),
        history_window=cfg.world_model.history_window,
        deter=model.hidden,
        stoch=model.stoch,
        act_width=model.n_actions,
        obs_mean=a.obs_mean.tolist(),
        obs_std=a.obs_std.tolist(),
        files={"wm_step": "wm_step.onnx"},
        config=ckpt["config"],
        budget={
            "wm_algo": "mmsa-recon",
            "wm_extension": "rmio's observation decoder and masked fine-tuning of MMSA, not the "
            "paper's",
            "wm_checkpoint": FINAL,
            "p_mask": ckpt.get("p_mask"),
            "masks": ckpt.get("masks"),
            "updates": ckpt.get("updates"),
        },
        metrics={"reconstruction_holdout": ckpt.get("holdout")},
    )
    manifest.save(out)
    parity = {
        "parity_max_abs_random": random_parity(model, WorldModelRunner(out, manifest)),
        "parity_max_abs_replay": replay_parity(model, WorldModelRunner(out, manifest), cfg),
    }
    pre = run_dir / PRETRAINED
    if pre.exists():
        before, _ = load_obs_model(pre)
        path = out / "wm_step_pretrain.onnx"
        export_onnx(MMSAStep(before), example, path, WM_INPUTS, WM_OUTPUTS)
        manifest.files["wm_step_pretrain"] = path.name
        runner = WorldModelRunner(out, manifest, file=path.name)
        parity["parity_max_abs_random_pretrain"] = random_parity(before, runner)
    console.print(
        f"MMSA world model parity onnxruntime vs torch: max |diff| "
        f"{parity['parity_max_abs_random']:.2e} (random inputs, batch 3), "
        f"{parity['parity_max_abs_replay']:.2e} (real episodes replayed with masks)"
    )
    if max(parity.values()) > PARITY_TOLERANCE:
        raise RmioError(
            f"the exported MMSA world model drifts from PyTorch by {max(parity.values()):.2e} "
            f"(tolerance {PARITY_TOLERANCE})"
        )
    manifest.metrics.update(parity)
    manifest.save(out)
    return manifest


def export_mmsa_bundle(run_dir: Path, policy: Path, out: Path, console: Console) -> Path:
    """A bundle of ``policy``'s MMSA Q-actor (the run's mmsa.pt or ckpt_mmsa.pt) and the run's own
    fine-tuned world model; a bundle that fails a check is removed."""
    if not (run_dir / FINAL).is_file():
        raise RmioError(
            f"'{run_dir}' has no {FINAL}: run `rmio train finetune {run_dir}` (rmio's observation "
            "decoder for MMSA) or pair the agent with a world model via --world-model"
        )
    agent, cfg, ckpt = load_q_agent(policy)
    fresh = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            source = Path(tmp)
            manifest = _world_model_files(run_dir, source, console)
            _check_task(cfg, ckpt, manifest, policy, run_dir)
            data = json.loads((source / "manifest.json").read_text())
            data["budget"]["wm_source"] = portable_path(str(run_dir / FINAL))
            (source / "manifest.json").write_text(json.dumps(data))
            return _write(agent, cfg, ckpt, policy, run_dir, source, manifest, out, console)
    except BaseException:
        if fresh:
            shutil.rmtree(out, ignore_errors=True)
        raise
