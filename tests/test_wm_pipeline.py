"""HalfCheetah 6x1 debug preset end to end through the CLI: train, fine-tune, evaluate, export,
check."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch")


def rmio(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "rmio.cli", *args], capture_output=True, text=True, timeout=timeout
    )


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    run = tmp_path_factory.mktemp("wm") / "run"
    proc = rmio("train", "world-model", "halfcheetah_6x1", "--debug", "--run-dir", str(run))
    assert proc.returncode == 0, proc.stderr
    proc = rmio("train", "finetune", str(run), "--p-mask", "0.5")
    assert proc.returncode == 0, proc.stderr
    return run


def _rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_pretraining_writes_logs_and_the_loss_falls(run_dir: Path) -> None:
    rows = _rows(run_dir / "wm_pretrain.jsonl")
    assert [r["step"] for r in rows] == [10, 20, 30, 40, 50, 60]
    assert rows[-1]["loss_ema"] < rows[0]["loss_ema"]
    assert (run_dir / "wm_pretrain.csv").read_text().startswith("step,")
    assert list((run_dir / "tb").iterdir())  # TensorBoard events
    assert (run_dir / "config.yaml").is_file() and (run_dir / "data" / "holdout.npz").is_file()


def test_rerunning_a_finished_run_does_nothing(run_dir: Path) -> None:
    before = (run_dir / "wm_pretrain.pt").stat().st_mtime_ns
    proc = rmio("train", "world-model", "halfcheetah_6x1", "--debug", "--run-dir", str(run_dir))
    assert proc.returncode == 0 and "already finished" in proc.stdout
    assert (run_dir / "wm_pretrain.pt").stat().st_mtime_ns == before


def test_finetuning_masked_its_inputs(run_dir: Path) -> None:
    rows = _rows(run_dir / "wm_finetune.jsonl")
    assert rows and all("obs_masked" in r for r in rows)


def test_reconstruction_eval_and_export(run_dir: Path) -> None:
    proc = rmio("eval", "reconstruction", str(run_dir))
    assert proc.returncode == 0, proc.stderr
    res = json.loads((run_dir / "eval_reconstruction.json").read_text())
    names = set(res["strategies"])
    assert {"zero-fill", "hold-last", "wm pre-trained", "wm fine-tuned (p_mask 0.5)"} <= names
    for row in res["strategies"].values():
        assert row["lrec_masked"][0] is None  # nothing is lost at p_mask 0
        assert all(v is not None and np.isfinite(v) for v in row["lrec_masked"][1:])
    assert (run_dir / "eval_reconstruction.png").stat().st_size > 1000

    bundle = run_dir / "bundle"
    proc = rmio("export", str(run_dir), "--out", str(bundle))
    assert proc.returncode == 0, proc.stderr
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert manifest["metrics"]["parity_max_abs_random"] < 1e-3
    assert manifest["metrics"]["parity_max_abs_replay"] < 1e-3
    # agent-steps left out as argmax ties (train/export.py); most replays have none
    assert manifest["metrics"]["parity_replay_ties"] < 10
    assert (
        manifest["spec"]["name"] == "mamujoco/HalfCheetah-6x1"
        and manifest["budget"]["p_mask"] == 0.5
    )
    proc = rmio("export", "--check", str(bundle))
    assert proc.returncode == 0 and "is valid" in proc.stdout

    # the runtime side (torch-free) replays the exported graph and gets finite reconstructions
    from rmio.envs.trajectory import TrajectoryBuffer
    from rmio.runtime.models import WorldModelRunner

    ep = TrajectoryBuffer.load(run_dir / "data" / "holdout.npz").episode(0)
    runner = WorldModelRunner(bundle)
    masks = np.ones((20, 6), np.float32)
    masks[5:, 2] = 0.0
    _, recon = runner.replay(ep["obs"][:20], np.zeros((20, 6, 1), np.float32), masks)
    assert recon.shape == (20, 6, 9) and np.isfinite(recon).all()


def test_eval_reconstruction_reports_what_the_actor_does(run_dir: Path) -> None:
    """Issue 25's policy metrics: the shipped actor on true vs reconstructed observations."""
    run = run_dir
    proc = rmio("eval", "reconstruction", str(run), "--policy", "halfcheetah_6x1")
    assert proc.returncode == 0, proc.stderr
    res = json.loads((run / "eval_reconstruction.json").read_text())
    assert res["policy"] == "halfcheetah_6x1"
    for name in ("wm pre-trained", "wm fine-tuned (p_mask 0.5)", "hold-last", "zero-fill"):
        row = res["strategies"][name]
        assert row["action_mae"][0] is None  # nothing is lost at p_mask 0
        assert all(v is not None and 0 <= v < 2 for v in row["action_mae"][1:])
    # the same actor on different inputs: the three strategies do not all agree
    worst = {res["strategies"][n]["action_mae"][-1] for n in ("wm pre-trained", "hold-last")}
    assert len(worst | {res["strategies"]["zero-fill"]["action_mae"][-1]}) == 3
    assert "action_mae" in (run / "eval_reconstruction.md").read_text()
    proc = rmio("eval", "reconstruction", str(run), "--policy", "smax_2s3z")
    assert proc.returncode == 2 and "acts in" in proc.stderr


def test_bad_inputs_are_one_clear_line(run_dir: Path, tmp_path: Path) -> None:
    proc = rmio("train", "world-model", "ant_4x2", "--debug", "--run-dir", str(run_dir))
    assert proc.returncode == 2 and "belongs to mamujoco/HalfCheetah-6x1" in proc.stderr
    proc = rmio(
        "train",
        "world-model",
        "halfcheetah_6x1",
        "--debug",
        "--set",
        "world_model.train.lr=1e-3",
        "--run-dir",
        str(run_dir),
    )
    assert proc.returncode == 2 and "different config" in proc.stderr
    # and says which key differs, so the user can resume with the run's value
    assert "world_model.train.lr 0.001 here" in proc.stderr and len(proc.stderr.splitlines()) == 1
    corrupt = tmp_path / "run"
    (corrupt / "data").mkdir(parents=True)
    (corrupt / "config.yaml").write_text((run_dir / "config.yaml").read_text())
    (corrupt / "wm_pretrain.pt").write_bytes(b"\x00garbage")
    proc = rmio("train", "finetune", str(corrupt))
    assert proc.returncode == 2 and "corrupt" in proc.stderr and "Traceback" not in proc.stderr
    proc = rmio("export", "--check", str(tmp_path))
    assert proc.returncode == 2 and "no manifest.json" in proc.stderr


def test_a_refused_export_leaves_no_bundle_behind(run_dir: Path, tmp_path: Path) -> None:
    """The world model's graphs are written before the actor is checked; a refusal must not leave
    a manifest that a resumed sweep (train/ablation.py) would take for a finished export."""
    smax = Path(__file__).resolve().parents[1] / "models" / "smax_2s3z"
    out = tmp_path / "fresh"
    proc = rmio("export", str(run_dir), "--out", str(out), "--policy", str(smax))
    assert proc.returncode == 2 and "has no actor for" in proc.stderr, proc.stderr
    assert not out.exists()
    kept = tmp_path / "existing"
    kept.mkdir()
    (kept / "notes.txt").write_text("mine")
    proc = rmio("export", str(run_dir), "--out", str(kept), "--policy", str(smax))
    assert proc.returncode == 2 and "has no actor for" in proc.stderr, proc.stderr
    assert (kept / "wm_step.onnx").is_file()  # it did get as far as the world model
    assert not (kept / "manifest.json").exists() and (kept / "notes.txt").read_text() == "mine"


@pytest.fixture(scope="module")
def bundle(run_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("wb") / "bundle"
    proc = rmio("export", str(run_dir), "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    return out


def _episode(run_dir: Path) -> tuple:
    """The run's config, fine-tuned world model, first held-out episode and one p_mask 0.5 mask."""
    from rmio.config import load_config
    from rmio.envs.trajectory import TrajectoryBuffer
    from rmio.train.common import load_model
    from rmio.train.wm_data import SequenceSampler
    from rmio.train.wm_eval import draw_masks

    cfg = load_config(run_dir / "config.yaml")
    model, _ = load_model(run_dir / "wm_finetune.pt")
    model.eval()
    holdout = TrajectoryBuffer.load(run_dir / "data" / "holdout.npz")
    ep = SequenceSampler(holdout, cfg.world_model.smoothing).episodes()[0]
    return cfg, model, ep, draw_masks(ep, [0.5], 1, 7)


def test_window_mode_reconstructs_as_the_exported_bundle_replays(
    run_dir: Path, bundle: Path
) -> None:
    """Issue 25: window mode's reconstruction of step t is the swarm's: WorldModelRunner.replay of
    the exported wm_step.onnx over steps max(0, t - l)..t from the zero state, with a_{s-1} at the
    window's first step (evaluation/reference.py's window), for a t inside the first l steps and
    one after; and it is not what one pass over the whole episode gives after l steps."""
    import torch

    from rmio.envs.trajectory import TrajectoryBuffer
    from rmio.runtime.history import ActionCodec, window_start
    from rmio.runtime.models import WorldModelRunner
    from rmio.train.wm_eval_window import window_heads

    cfg, model, ep, mask = _episode(run_dir)
    l = cfg.world_model.history_window  # noqa: E741
    raw = TrajectoryBuffer.load(run_dir / "data" / "holdout.npz").episode(0)
    T = raw["obs"].shape[0]
    assert ep.obs.shape[1] == T and l + 10 < T
    steps = [7, T - 5]
    obs_n = model.normalize_obs(ep.obs)
    with torch.no_grad():
        heads = window_heads(model, obs_n, ep.prev_action, mask, torch.tensor(steps), l, rows=l + 1)
        post = model.observe(obs_n, ep.prev_action, mask, ep.is_first, sample=False)
        whole = model.heads(post.h, post.z)["obs"]
    ours = model.denormalize_obs(heads["obs"])[0].numpy()  # (W, n, D) raw units
    runner = WorldModelRunner(bundle)
    codec = ActionCodec.of(runner.manifest.spec)
    none = np.stack([codec.none()] * raw["obs"].shape[1])
    m = mask[0].numpy()
    fm = np.broadcast_to(model.feature_mask.numpy().astype(bool), ours.shape[1:])  # real features
    for k, t in enumerate(steps):
        s = window_start(t, l)
        prev = np.stack([raw["action"][h] if h >= 0 else none for h in range(s - 1, t)])
        _, recon = runner.replay(raw["obs"][s : t + 1], prev, m[s : t + 1])
        lost = m[t] == 0
        assert lost.any()  # the comparison covers lost agents
        np.testing.assert_allclose(ours[k][fm], recon[-1][fm], rtol=1e-4, atol=1e-4)
        gap = np.abs(model.denormalize_obs(whole)[0, t].numpy() - ours[k])[fm].max()
        # inside the first l steps the window is the episode so far; after, it is not
        assert gap < 1e-4 if t <= l else gap > 1e-3, (t, gap)


def test_window_and_episode_modes_differ_and_share_the_baselines(run_dir: Path) -> None:
    """The two modes score the same masks: the baselines are identical (every step scored in
    either mode), the world model's rows are not (the debug run's episodes are longer than the
    window)."""
    from rmio.train.wm_eval import evaluate_episode

    cfg, model, ep, _ = _episode(run_dir)
    args = (model, ep, [0.25, 0.75], 2, 3, 0.05, 0.05)
    win = evaluate_episode(*args, mode="window", window=cfg.world_model.history_window, stride=1)
    one = evaluate_episode(*args, mode="episode")
    for name in ("zero-fill", "hold-last"):
        for key, v in one[name].items():
            np.testing.assert_allclose(win[name][key], v, rtol=1e-6)
    assert np.all(np.abs(win["model"]["masked_sum"] - one["model"]["masked_sum"]) > 1e-3)
    np.testing.assert_array_equal(win["model"]["masked_count"], one["model"]["masked_count"])

    proc = rmio("eval", "reconstruction", str(run_dir), "--mode", "episode")
    assert proc.returncode == 0, proc.stderr
    res = json.loads((run_dir / "eval_reconstruction.json").read_text())
    assert res["mode"] == "episode" and "episode mode" in proc.stdout
    assert "Reconstruction: episode mode" in (run_dir / "eval_reconstruction.md").read_text()
    proc = rmio("eval", "reconstruction", str(run_dir))  # the default: the swarm's windows
    assert proc.returncode == 0, proc.stderr
    win_res = json.loads((run_dir / "eval_reconstruction.json").read_text())
    assert (win_res["mode"], win_res["window_stride"], win_res["history_window"]) == (
        "window",
        1,
        20,
    )
    assert "every step t" in (run_dir / "eval_reconstruction.md").read_text()
    label = "wm fine-tuned (p_mask 0.5)"
    assert win_res["strategies"][label]["lrec_masked"] != res["strategies"][label]["lrec_masked"]
    for name in ("zero-fill", "hold-last"):  # the same masks and steps for the baselines
        assert win_res["strategies"][name] == res["strategies"][name]
    proc = rmio("eval", "reconstruction", str(run_dir), "--window-stride", "3")
    assert proc.returncode == 0, proc.stderr
    strided = json.loads((run_dir / "eval_reconstruction.json").read_text())
    assert strided["window_stride"] == 3
    assert "steps t = 0, 3, 6" in (run_dir / "eval_reconstruction.md").read_text()
    every_step = win_res["strategies"][label]["lrec_masked"]
    assert strided["strategies"][label]["lrec_masked"] != every_step


@pytest.mark.parametrize(
    ("setting", "says"),
    [
        ("world_model.eval.mode=sliding", "world_model.eval.mode' must be one of 'window'"),
        ("world_model.eval.window_stride=0", "world_model.eval.window_stride must be >= 1"),
    ],
)
def test_a_bad_evaluation_mode_is_one_config_line(setting: str, says: str, tmp_path: Path) -> None:
    proc = rmio(
        "train", "world-model", "halfcheetah_6x1", "--debug", "--set", setting, "--run-dir",
        str(tmp_path / "run"),
    )  # fmt: skip
    assert proc.returncode == 2 and says in proc.stderr, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and "Traceback" not in proc.stderr
