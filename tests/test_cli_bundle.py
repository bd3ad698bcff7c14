"""`rmio bundle`: an actor exported to ONNX by another framework (here a plain torch MLP with its
own input and output names, no agent id, no clipping) plus an rmio world model becomes a bundle that
passes the runtime's check, acts exactly as the foreign actor plus the contract's post-processing,
and runs in the in-process evaluation."""

from __future__ import annotations

import json
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import rmio
from rmio.runtime.bundle import load_manifest
from rmio.runtime.validate import check_bundle
from rmio.testing import make_tiny_bundle


def _export(net: nn.Module, width: int, path: Path, inputs: list[str], output: str) -> Path:
    args = tuple(torch.zeros(2, width) for _ in inputs)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            net,
            args,
            str(path),
            input_names=inputs,
            output_names=[output],
            dynamic_axes={name: {0: "n"} for name in [*inputs, output]},
            opset_version=17,
            dynamo=False,
        )
    return path


def _rmio_bundle(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "rmio.cli", "bundle", *args],
        capture_output=True,
        text=True,
        timeout=240,
    )


@pytest.fixture(scope="module")
def cheetah(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_bundle(tmp_path_factory.mktemp("wm") / "hc", "mamujoco/HalfCheetah-6x1", 4)


def test_foreign_continuous_actor_is_wrapped_checked_and_evaluated(
    cheetah: Path, tmp_path: Path
) -> None:
    spec = load_manifest(cheetah).spec
    torch.manual_seed(0)
    # a cleanrl-style shared actor: observation in, unbounded action out (3x wider than the box)
    net = nn.Sequential(nn.Linear(spec.obs_dim, 16), nn.Tanh(), nn.Linear(16, spec.action_dim))
    net[2].weight.data *= 30.0
    onnx_file = _export(net, spec.obs_dim, tmp_path / "policy.onnx", ["observation"], "act")
    out = tmp_path / "bundle"
    proc = _rmio_bundle("--actor", str(onnx_file), "--world-model", str(cheetah), "--out", str(out))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "is valid" in proc.stdout
    assert "is valid" in check_bundle(out)
    man = json.loads((out / "manifest.json").read_text())
    assert man["files"] == {"actor": "actor.onnx", "wm_step": "wm_step.onnx"}
    assert man["budget"]["policy_source"] == "external ONNX actor policy.onnx"
    assert (out / "wm_step.onnx").read_bytes() == (cheetah / "wm_step.onnx").read_bytes()

    b = rmio.load_bundle(out)
    obs = np.random.default_rng(1).normal(size=(12, spec.obs_dim)).astype(np.float32)
    ids = np.arange(12) % spec.n_agents
    with torch.no_grad():
        raw = net(torch.from_numpy(obs)).numpy()
    want = np.clip(raw, spec.action_low, spec.action_high) * spec.action_feature_mask[ids]
    got = b.act(obs, ids)
    assert np.abs(raw).max() > 1.5  # the clipping was exercised
    np.testing.assert_allclose(got, want, atol=1e-5)

    rows = rmio.evaluate(out, episodes=2, p_loss=0.4, seed=2, episode_limit=12)
    assert [r["steps"] for r in rows] == [12, 12]
    assert all(np.isfinite(r["return"]) and r["lost_fraction"] > 0 for r in rows)


def test_foreign_discrete_logits_become_the_best_available_action(tmp_path: Path) -> None:
    pytest.importorskip("lbforaging")
    wm = make_tiny_bundle(tmp_path / "lbf", "lbf/Foraging-8x8-2p-2f-coop-v3", 4)
    spec = load_manifest(wm).spec
    torch.manual_seed(1)
    net = nn.Sequential(nn.Linear(spec.obs_dim, 16), nn.ReLU(), nn.Linear(16, spec.action_dim))
    onnx_file = _export(net, spec.obs_dim, tmp_path / "q.onnx", ["x"], "logits")
    out = tmp_path / "bundle"
    proc = _rmio_bundle("--actor", str(onnx_file), "--world-model", str(wm), "--out", str(out))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    b = rmio.load_bundle(out)
    rng = np.random.default_rng(3)
    obs = rng.normal(size=(20, spec.obs_dim)).astype(np.float32)
    avail = rng.random((20, spec.action_dim)) < 0.5
    avail[:, 0] = True
    with torch.no_grad():
        logits = net(torch.from_numpy(obs)).numpy()
    want = np.where(avail, logits, -np.inf).argmax(1)
    np.testing.assert_array_equal(b.act(obs, np.zeros(20, np.int64), avail), want)
    rows = rmio.evaluate(out, episodes=1, p_loss=0.3, seed=0, episode_limit=10)
    assert rows[0]["steps"] <= 10 and np.isfinite(rows[0]["return"])


def test_refusals_are_one_line_with_exit_code_2(cheetah: Path, tmp_path: Path) -> None:
    spec = load_manifest(cheetah).spec
    wrong = _export(
        nn.Linear(spec.obs_dim + 3, spec.action_dim),
        spec.obs_dim + 3,
        tmp_path / "wide.onnx",
        ["obs"],
        "action",
    )
    proc = _rmio_bundle(
        "--actor", str(wrong), "--world-model", str(cheetah), "--out", str(tmp_path / "x")
    )
    assert proc.returncode == 2 and f"obs_dim {spec.obs_dim}" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and not (tmp_path / "x").exists()
    (tmp_path / "junk.onnx").write_bytes(b"not a model")
    proc = _rmio_bundle(
        "--actor",
        str(tmp_path / "junk.onnx"),
        "--world-model",
        str(cheetah),
        "--out",
        str(tmp_path / "y"),
    )
    assert proc.returncode == 2 and "not a readable ONNX model" in proc.stderr
    assert not (tmp_path / "y").exists()
    ok = _export(
        nn.Linear(spec.obs_dim, spec.action_dim),
        spec.obs_dim,
        tmp_path / "ok.onnx",
        ["obs"],
        "action",
    )
    proc = _rmio_bundle("--actor", str(ok), "--world-model", str(cheetah), "--out", str(cheetah))
    assert proc.returncode == 2 and "exists" in proc.stderr
