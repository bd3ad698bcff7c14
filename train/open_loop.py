"""Open-loop prediction error against horizon (`rmio eval open-loop`, issue 23 item 3): the shape
of MARIE's Fig. 7, for RMIOv2's world model and MARIE's on the same held-out windows.

Each window is ``context + horizon`` consecutive rows of one held-out episode. The model sees the
real observations of rows [0, context); from there it predicts rows context .. context + horizon - 1
*open loop*: with the real actions, but feeding back only its own predictions.

* RMIOv2: the posterior filters the context, then the prior's mode rolls forward
  (`rmio.train.joint_diag.prior_rollout`, the diagnostics' rollout) and the decoder gives each row.
* MARIE: its token sequence holds the context's blocks (the real observations' code ids, the real
  actions, the Perceiver's e_s); each next step is generated autoregressively, K code ids one after
  the other, each the **argmax** of the observation head by default (greedy, the counterpart of
  RMIOv2's prior mode; MARIE's imagination samples instead), each fed back before the next; the K
  ids are decoded by the VQ decoder, then the step's block is appended with the real action and the
  Perceiver's e_t over the team's *predicted* ids. With rmio's context token
  (``marie.context_token``) the block of a step being predicted starts with c_t over an all-[MASK]
  team (nobody's observation of that step is known); once generated, the block is re-entered with
  c_t over the predicted team ids (the agent's own masked), as pre-training saw it. Pre-training
  never masks the others' ids, so an all-[MASK] c_t is new to a model that has not had masked
  fine-tuning: its open-loop error includes that. A sequence longer than ``marie.seq_len`` steps
  keeps its last ``seq_len`` (MARIE's code restarts from the last step's tokens instead).
  ``sample``: draw each id from the head's softmax, as MARIE's imagination does (seeded).
* ``teacher_forced``: the same, but every step is fed back with its *real* ids (RMIOv2: the
  posterior of the real observations), so horizon k is a one-step prediction: the floor the
  open-loop error compounds from.

Errors, the same for both models: observations as the mean absolute error per real feature, in the
units of the held-out data's run (``(o - mean) / std`` with the per agent and feature statistics of
that run's training data, RMIOv2's normalised units) averaged over agents (``obs_l1``, Fig. 7's L1
per observation dimension), and the squared error the same way (``obs_mse``, joint_diag's
``diag_obs_err``); rewards as the absolute error against the true reward (``reward_abs``;
MARIE's per-agent predictions averaged) and against the target the model was trained on
(``reward_abs_target``: RMIOv2's smoothed reward, MARIE's true one).
"""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.console import Console

from rmio.config import load_config
from rmio.envs.trajectory import TrajectoryBuffer
from rmio.errors import RmioError
from rmio.train.joint_diag import prior_rollout
from rmio.train.marie_model import MarieWorldModel
from rmio.train.wm_data import Batch, SequenceSampler, observation_stats
from rmio.train.wm_train import eval_holdout
from rmio.train.world_model import RMIOWorldModel

METRICS = ("obs_l1", "obs_mse", "reward_abs", "reward_abs_target")
Cache = list[tuple[torch.Tensor, torch.Tensor]]


# --------------------------------------------------------------------------------- windows


def heldout_windows(
    buf: TrajectoryBuffer,
    smoothing: Any,
    length: int,
    windows: int,
    device: torch.device | str = "cpu",
) -> Batch:
    """Up to ``windows`` windows of ``length`` rows that lie inside one episode each, starts spread
    evenly over every possible one (deterministic: each model sees the same windows)."""
    sampler = SequenceSampler(buf, smoothing, device)
    first = sampler.arrays["is_first"] > 0.5
    bounds = [*np.flatnonzero(first).tolist(), len(buf)]
    starts = [s for a, b in itertools.pairwise(bounds) for s in range(a, b - length + 1)]
    if not starts:
        raise RmioError(
            f"no held-out episode has {length} rows (context + horizon); lower --context/--horizon"
        )
    pick = np.unique(np.linspace(0, len(starts) - 1, min(windows, len(starts))).round().astype(int))
    idx = torch.as_tensor(np.asarray(starts)[pick][:, None] + np.arange(length)[None])
    return sampler._gather(idx.to(sampler.device), first_is_start=True)


def errors(
    pred_obs: torch.Tensor,
    pred_reward: torch.Tensor,
    batch: Batch,
    context: int,
    std: torch.Tensor,
    feature_mask: torch.Tensor,
    target_reward: torch.Tensor,
) -> dict[str, np.ndarray]:
    """Per-horizon means over windows: ``pred_obs`` raw (B, H, n, D), ``pred_reward`` (B, H) or
    (B, H, n) per agent, ``std`` (n, D) the common scale, ``target_reward`` (B, T) the model's own
    training target."""
    h = pred_obs.shape[1]
    rows = slice(context, context + h)
    fm = feature_mask.to(pred_obs)
    diff = (pred_obs - batch.obs[:, rows]) / std * fm
    per = lambda x: (x.sum(-1) / fm.sum(-1)).mean(-1)  # noqa: E731 - real features, then agents
    if pred_reward.dim() == 2:
        pred_reward = pred_reward[..., None]
    raw = batch.raw_reward if batch.raw_reward is not None else batch.reward
    out = {
        "obs_l1": per(diff.abs()),
        "obs_mse": per(diff**2),
        "reward_abs": (pred_reward - raw[:, rows, None]).abs().mean(-1),
        "reward_abs_target": (pred_reward - target_reward[:, rows, None]).abs().mean(-1),
    }
    return {k: v.mean(0).cpu().numpy().astype(np.float64) for k, v in out.items()}


# --------------------------------------------------------------------------------- RMIOv2


@torch.no_grad()
def rmiov2_rollout(
    model: RMIOWorldModel, batch: Batch, context: int, horizon: int, teacher_forced: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """Predicted raw observations (B, H, n, D) and rewards (B, H) of rows context..context+H-1."""
    if batch.obs.shape[1] < context + horizon:
        raise RmioError("the windows are shorter than context + horizon")
    if teacher_forced:  # the posterior of every real row, then one prior step from each
        mask = torch.ones(batch.obs.shape[:3], device=batch.obs.device)
        post = model.observe(
            model.normalize_obs(batch.obs), batch.prev_action, mask, batch.is_first, sample=False
        )
        prev, rows = slice(context - 1, context - 1 + horizon), slice(context, context + horizon)
        h = model.transition(post.h[:, prev], post.z[:, prev], batch.prev_action[:, rows])
        heads = model.heads(h, model.prior(h).mode())
        obs, reward = heads["obs"], heads["reward"]
    else:
        steps = [hd for _, hd in prior_rollout(model, batch, context, horizon)]
        obs = torch.stack([hd["obs"] for hd in steps], 1)
        reward = torch.stack([hd["reward"] for hd in steps], 1)
    return model.denormalize_obs(obs), reward


# --------------------------------------------------------------------------------- MARIE


def _extend(
    model: MarieWorldModel, x: torch.Tensor, cache: Cache | None
) -> tuple[torch.Tensor, Cache]:
    """Run the Transformer on ``x`` (B', m, D), embedded tokens that follow the cached ones (keys
    and values of every layer): hidden states (B', m, D) and the longer cache. The same layers,
    positions and causal mask as ``MarieWorldModel.transform`` over the whole sequence."""
    past = 0 if cache is None else cache[0][0].shape[2]
    m = x.shape[1]
    x = model.drop(x + model.pos.weight[past : past + m])
    ok = torch.ones(m, past + m, dtype=torch.bool, device=x.device).tril(past)
    bias = torch.zeros(m, past + m, device=x.device).masked_fill(~ok, float("-inf"))
    new: Cache = []
    for i, block in enumerate(model.blocks):
        x, kv = block(x, bias, None if cache is None else cache[i])
        new.append(kv)
    return model.ln_f(x), new


def _blocks(model: MarieWorldModel, ids: torch.Tensor, acts: torch.Tensor) -> torch.Tensor:
    """(B, S, n, K) ids, (B, S, n, A) action ids -> (B * n, S * block, D), as in training."""
    return model.sequences(ids, acts).flatten(2, 3).flatten(0, 1)


@torch.no_grad()
def marie_rollout(
    model: MarieWorldModel,
    batch: Batch,
    context: int,
    horizon: int,
    teacher_forced: bool = False,
    sample: bool = False,
    seed: int = 0,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Predicted raw observations (B, H, n, D), each agent's reward (B, H, n) and the generated
    code ids (B, H, n, K) of rows context..context+H-1 (see the module docstring); ``model`` in
    eval mode."""
    if context < 1 or batch.obs.shape[1] < context + horizon:
        raise RmioError(
            "MARIE's open loop needs context >= 1 and windows of context + horizon rows"
        )
    b, n, k, blk, cap = batch.obs.shape[0], model.n, model.k, model.block, model.mcfg.seq_len
    first = batch.is_first > 0.5
    true_ids = model.tok.encode(batch.obs)  # (B, T, n, K)
    acts = model.action_ids(batch.prev_action[:, 1:], first[:, 1:])  # block s holds a_s
    start = max(0, context - cap)
    seq = _blocks(model, true_ids[:, start:context], acts[:, start:context])
    hid, cache = _extend(model, seq, None)
    last = hid[:, -1]  # e_{t-1}: the reward of row t, and MARIE's first token of step t
    gen = torch.Generator(device=batch.obs.device).manual_seed(seed)
    masked = torch.full((b, n, k), model.mask_id, dtype=torch.long, device=batch.obs.device)
    obs_l, rew_l, ids_l = [], [], []
    for step in range(horizon):
        t = context + step
        if seq.shape[1] // blk >= cap:  # no room for step t: keep the last cap - 1 steps
            seq = seq[:, seq.shape[1] - (cap - 1) * blk :]
            hid, cache = _extend(model, seq, None)
            last = hid[:, -1]
        rew_l.append(model.reward_head(last)[:, 0].view(b, n))
        gen, h = cache, last
        if model.ctx:  # rmio's c_t: no agent's observation of step t is known
            c = model.contexts(masked).reshape(b * n, 1, -1)
            out, gen = _extend(model, c, gen)
            h = out[:, -1]
        ids = []
        for j in range(k):
            logits = model.obs_head(h)
            if sample:
                tok = torch.multinomial(logits.softmax(-1), 1, generator=gen)[:, 0]
            else:
                tok = logits.argmax(-1)  # greedy: the mode, as RMIOv2's prior's
            ids.append(tok)
            if j < k - 1:
                out, gen = _extend(model, model.obs_emb(tok)[:, None], gen)
                h = out[:, -1]
        pred = torch.stack(ids, -1).view(b, n, k)
        ids_l.append(pred)
        obs_l.append(model.tok.decode(pred))
        if step < horizon - 1:  # enter step t's whole block: c_t over the team, x_t, a_t, e_t
            fed = true_ids[:, t] if teacher_forced else pred
            new = _blocks(model, fed[:, None], acts[:, t : t + 1])
            out, cache = _extend(model, new, cache)
            last = out[:, -1]
            seq = torch.cat([seq, new], 1)
    return torch.stack(obs_l, 1), torch.stack(rew_l, 1), torch.stack(ids_l, 1)


@torch.no_grad()
def tokenizer_floor(model: MarieWorldModel, batch: Batch, context: int, horizon: int) -> Any:
    """MARIE's tokenizer floor, decode(encode(o)) of the predicted rows, raw (B, H, n, D): what
    predicting every code id right would give (the caller scores it in the common units)."""
    obs = batch.obs[:, context : context + horizon]
    return model.tok.decode(model.tok.encode(obs))


# --------------------------------------------------------------------------------- runs


def load_run_model(
    run_dir: Path, checkpoint: str, device: torch.device | str = "cpu"
) -> tuple[str, torch.nn.Module, dict[str, Any], Any]:
    """The world model a run directory holds, with its checkpoint and config: ("marie", ...) from
    ``marie_<checkpoint>.pt`` in a MARIE run (``marie.enabled``), else ("rmiov2", ...) from
    ``wm_<checkpoint>.pt``."""
    from rmio.config import Config, build_dataclass
    from rmio.train.common import load_model
    from rmio.train.marie_train import load_marie

    algo = "marie" if load_config(run_dir / "config.yaml").marie.enabled else "rmiov2"
    path = run_dir / ckpt_name(algo, checkpoint)
    if not path.is_file():
        raise RmioError(f"'{run_dir}' has no {path.name} (train it first, or pick --checkpoint)")
    model, ckpt = (load_marie if algo == "marie" else load_model)(path, device)
    model.eval()
    return algo, model, ckpt, build_dataclass(Config, ckpt["config"], str(run_dir))


def training_budget(algo: str, ckpt: dict[str, Any], cfg: Any) -> dict[str, Any]:
    """What the checkpoint was trained with: updates, batch, rows per sequence, data, wall time."""
    summary = ckpt.get("summary", {})
    out = {
        "phase": ckpt.get("phase"),
        "updates": summary.get("updates"),
        "seconds": summary.get("seconds"),
        "batch": cfg.world_model.train.batch_size,
        "rows": cfg.marie.seq_len + 1 if algo == "marie" else cfg.world_model.train.seq_len,
        "env_steps": ckpt.get("env_steps"),
    }
    if algo == "marie":
        out["preset"] = cfg.marie.preset
        out["context_token"] = cfg.marie.context_token
    return out


def evaluate_open_loop(
    run_dirs: list[Path],
    data_dir: Path | None = None,
    *,
    context: int = 5,
    horizon: int = 15,
    windows: int = 256,
    checkpoint: str = "pretrain",
    device: torch.device | str = "cpu",
    labels: list[str] | None = None,
    sample: bool = False,
    quiet: bool = False,
) -> dict[str, Any]:
    """Open-loop and teacher-forced errors against horizon of every run's world model on the same
    held-out windows (``data_dir``'s, by default the first run's), in that run's units;
    ``sample``: MARIE draws its tokens instead of taking the argmax. The held-out episodes are
    ``wm_train.eval_holdout``'s: a finished joint pre-training run's are its own actor's."""
    import time

    data_dir = data_dir or run_dirs[0]
    train_path = data_dir / "data" / "train.npz"
    if not train_path.is_file() or not (data_dir / "config.yaml").is_file():
        raise RmioError(f"'{data_dir}' has no collected data (data/train.npz, config.yaml)")
    data_cfg = load_config(data_dir / "config.yaml")
    # a joint pre-training run's held-out episodes are its own actor's, not the random warm-up's
    holdout, held_by = eval_holdout(data_dir, data_cfg, Console(stderr=True, quiet=quiet))
    spec = holdout.spec
    train_buf = TrajectoryBuffer.load(train_path)
    _, std = observation_stats(train_buf)[:2]
    std_t = torch.as_tensor(std, device=device)
    fm = torch.as_tensor(spec.obs_feature_mask, dtype=torch.float32, device=device)
    length = context + horizon
    result: dict[str, Any] = {
        "scenario": spec.name,
        "data": _label(data_dir),
        "data_policy": held_by,
        "holdout_episodes": holdout.num_episodes,
        "context": context,
        "horizon": horizon,
        "checkpoint": checkpoint,
        "marie_tokens": "sampled" if sample else "argmax",
        "runs": [],
    }
    for i, run in enumerate(run_dirs):
        algo, model, ckpt, cfg = load_run_model(run, checkpoint, device)
        if ckpt["spec"] != spec.to_dict():
            raise RmioError(
                f"'{run}' was trained for {ckpt['spec']['name']}, the held-out data of "
                f"'{data_dir}' is {spec.name} (or another agent layout)"
            )
        smoothing = (
            cfg.world_model.smoothing if algo == "rmiov2" else data_cfg.world_model.smoothing
        )
        batch = heldout_windows(holdout, smoothing, length, windows, device)
        t0 = time.perf_counter()
        row: dict[str, Any] = {
            "label": labels[i] if labels else f"{algo} {_label(run)}",
            "algo": algo,
            "file": ckpt_name(algo, checkpoint),
            "budget": training_budget(algo, ckpt, cfg),
        }
        for mode in ("open_loop", "teacher_forced"):
            tf = mode == "teacher_forced"
            if algo == "marie":
                obs, reward, _ = marie_rollout(model, batch, context, horizon, tf, sample)
                target = batch.raw_reward
            else:
                obs, reward = rmiov2_rollout(model, batch, context, horizon, tf)
                target = batch.reward
            err = errors(obs, reward, batch, context, std_t, fm, target)
            row[mode] = {k: [float(x) for x in v] for k, v in err.items()}
        if algo == "marie":
            floor = tokenizer_floor(model, batch, context, horizon)
            zeros = torch.zeros(floor.shape[:2], device=floor.device)
            err = errors(floor, zeros, batch, context, std_t, fm, batch.raw_reward)
            row["tokenizer_floor_l1"] = float(err["obs_l1"].mean())
        row["eval_seconds"] = time.perf_counter() - t0
        result["windows"] = int(batch.obs.shape[0])
        result["runs"].append(row)
    return result


def ckpt_name(algo: str, checkpoint: str) -> str:
    """``pretrain``/``finetune`` -> the file each trainer writes."""
    return f"marie_{checkpoint}.pt" if algo == "marie" else f"wm_{checkpoint}.pt"


def _label(run: Path) -> str:
    """A run named by its last two path components (never a machine path)."""
    return "/".join(run.resolve().parts[-2:])
