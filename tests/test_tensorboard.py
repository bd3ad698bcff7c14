"""Evaluation returns and hyperparameters in TensorBoard (issue 17, part 4): MAPPO and joint
pre-training write every evaluation as ``eval/*`` scalars next to their training curves, and the
run's config as text and as hparams. Real (tiny) training runs, read back with TensorBoard's own
event reader."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.timeout(900), pytest.mark.slow]


def _train(*args: str) -> None:
    res = subprocess.run(
        [sys.executable, "-m", "rmio.cli", "train", *args],
        capture_output=True,
        text=True,
        timeout=800,
    )
    assert res.returncode == 0, res.stderr[-3000:]


def _check_tensorboard(run: Path, prefix: str, hparam: str, value: float) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import plugin_data_pb2

    events = EventAccumulator(str(run / "tb"))
    events.Reload()
    evals = [json.loads(line) for line in (run / "eval.jsonl").read_text().splitlines()]
    assert len(evals) >= 2
    scalars = events.Tags()["scalars"]
    assert any(tag.startswith(f"{prefix}/") for tag in scalars), scalars
    logged = {e.step: e.value for e in events.Scalars("eval/return_mean")}
    assert logged == {
        row["step"]: pytest.approx(row["return_mean"], rel=1e-6, abs=1e-6) for row in evals
    }
    assert "eval/return_std" in scalars
    text = events.Tensors("config/text_summary")[0].tensor_proto.string_val[0].decode()
    assert "episode_limit" in text and "ppo:" in text
    content = events.PluginTagToContent("hparams")["_hparams_/session_start_info"]
    start = plugin_data_pb2.HParamsPluginData.FromString(content).session_start_info
    assert start.hparams[hparam].number_value == value
    assert start.hparams["env.scenario"].string_value == "HalfCheetah-6x1"


def test_mappo_logs_eval_returns_and_hparams(tmp_path: Path) -> None:
    run = tmp_path / "mappo"
    _train(
        *("mappo", "halfcheetah_6x1", "--debug", "--run-dir", str(run)),
        *("--set", "policy.mappo.env_steps=200", "--set", "policy.mappo.eval_every=100"),
    )
    _check_tensorboard(run, "mappo", "policy.mappo.env_steps", 200)


def test_joint_pretraining_logs_eval_returns_and_hparams(tmp_path: Path) -> None:
    run = tmp_path / "joint"
    _train(
        *("pretrain", "halfcheetah_6x1", "--debug", "--run-dir", str(run)),
        *("--set", "policy.imagination.env_steps=300"),
        *("--set", "policy.imagination.eval_every=150"),
    )
    _check_tensorboard(run, "joint", "policy.imagination.env_steps", 300)
