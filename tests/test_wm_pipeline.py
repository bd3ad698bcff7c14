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
    corrupt = tmp_path / "run"
    (corrupt / "data").mkdir(parents=True)
    (corrupt / "config.yaml").write_text((run_dir / "config.yaml").read_text())
    (corrupt / "wm_pretrain.pt").write_bytes(b"\x00garbage")
    proc = rmio("train", "finetune", str(corrupt))
    assert proc.returncode == 2 and "corrupt" in proc.stderr and "Traceback" not in proc.stderr
    proc = rmio("export", "--check", str(tmp_path))
    assert proc.returncode == 2 and "no manifest.json" in proc.stderr
