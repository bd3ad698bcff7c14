"""MARIE in rmio's evaluations (issue 23): `rmio eval reconstruction` of a MARIE run (L_rec, GPE,
GCI at every test-time p_mask, through the swarm's window graph module, equal to the exported
bundle's runner), RMIOv2 beside it in one table on the same held-out episodes and masks, and
`rmio export MARIE_RUN --policy BUNDLE` from the CLI. A tiny MARIE and a tiny RMIOv2 are trained
here on the same debug data."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from rich.console import Console

from rmio.cli import cli
from rmio.envs.trajectory import TrajectoryBuffer
from rmio.errors import RmioError
from rmio.runtime.bundle import load_manifest
from rmio.runtime.models import WindowModelRunner
from rmio.runtime.validate import check_bundle
from rmio.testing import make_tiny_marie_bundle
from rmio.train.export import PARITY_TOLERANCE

pytestmark = [pytest.mark.timeout(600), pytest.mark.slow]
WINDOW = 6
QUIET = Console(quiet=True)


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(MARIE run with its bundle at ``<run>/../bundle``, RMIOv2 run on the same data)."""
    from rmio.config import load_config, save_config
    from rmio.train.wm_train import finetune_world_model, train_world_model

    root = tmp_path_factory.mktemp("marie_eval")
    make_tiny_marie_bundle(root / "bundle", WINDOW)
    marie = root / "bundle-run"
    rmio = root / "rmiov2-run"
    cfg = load_config(
        "halfcheetah_6x1",
        preset="debug",
        overrides=[f"world_model.history_window={WINDOW}", "world_model.train.updates=12"],
    )
    save_config(cfg, rmio)
    shutil.copytree(marie / "data", rmio / "data")  # the same real data, as `rmio ablate` shares
    train_world_model(cfg, rmio, "cpu", QUIET)
    finetune_world_model(rmio, 0.5, "cpu", QUIET, 4)
    return marie, rmio


def test_reconstruction_table_of_a_marie_run(runs: tuple[Path, Path]) -> None:
    """`rmio eval reconstruction MARIE_RUN`: MARIE's rows (fine-tuned and pre-trained) with L_rec of
    lost agents, GPE and GCI at every test-time p_mask, all finite, and not zero-fill's numbers
    (the comparison is not vacuous)."""
    marie, _ = runs
    res = CliRunner().invoke(cli, ["eval", "reconstruction", str(marie)])
    assert res.exit_code == 0, res.output
    out = json.loads((marie / "eval_reconstruction.json").read_text())
    rows = out["strategies"]
    fine, pre = "MARIE fine-tuned (p_mask 0.5)", "MARIE pre-trained"
    assert list(rows) == [fine, "zero-fill", "hold-last", pre]
    zero = rows["zero-fill"]["lrec_masked"]
    for name in (fine, pre):
        row = rows[name]
        for key in ("lrec_all", "lrec_decoder_all", "gpe", "gci"):
            assert all(v is not None and math.isfinite(v) for v in row[key]), (name, key)
        triples = zip(out["p_masks"], row["lrec_masked"], zero, strict=True)
        lost = [(v, z) for p, v, z in triples if p > 0]
        assert all(math.isfinite(v) and v > 0 for v, _ in lost)
        assert all(abs(v - z) > 1e-4 for v, z in lost), (name, lost)
    assert (
        "| MARIE fine-tuned (p_mask 0.5) | gpe |" in (marie / "eval_reconstruction.md").read_text()
    )


def test_evaluation_rounds_are_the_bundles_rounds(runs: tuple[Path, Path]) -> None:
    """The evaluation's reconstruction of every step (PyTorch's window module, read off with the
    reward and termination heads) equals what the exported bundle's runner, the swarm's, returns
    for the same history and masks, within export's parity tolerance."""
    from rmio.config import load_config
    from rmio.train.marie_eval import load_window, reconstruct
    from rmio.train.wm_data import SequenceSampler

    marie, _ = runs
    bundle = marie.parent / "bundle"
    window, _ = load_window(marie / "marie_finetune.pt", "cpu")
    runner = WindowModelRunner(bundle, load_manifest(bundle))
    holdout = TrajectoryBuffer.load(marie / "data" / "holdout.npz")
    smoothing = load_config(marie / "config.yaml").world_model.smoothing
    ep = SequenceSampler(holdout, smoothing, "cpu").episodes()[0]
    T, n = min(ep.obs.shape[1], 25), ep.obs.shape[2]
    ep.obs, ep.prev_action = ep.obs[:, :T], ep.prev_action[:, :T]
    mask = (torch.rand(1, T, n, generator=torch.Generator().manual_seed(3)) > 0.4).float()
    recon, r_hat, g_hat = reconstruct(window, ep, mask)
    assert torch.isfinite(r_hat).all() and ((g_hat >= 0) & (g_hat <= 1)).all()
    obs = ep.obs[0].numpy()
    masks = mask[0].numpy()
    prev = ep.prev_action[0].numpy()
    compared = 0
    for t in range(T):
        s = max(0, t - WINDOW)  # the coordinator's window s..t
        _, got = runner.replay(obs[s : t + 1], prev[s : t + 1], masks[s : t + 1])
        lost = masks[t] < 0.5
        if lost.any():
            diff = np.abs(got[-1][lost] - recon[0, t][lost].numpy()).max()
            assert diff < PARITY_TOLERANCE, (t, diff)
            compared += int(lost.sum())
    assert compared >= 10


def test_rmiov2_beside_marie_in_one_table(runs: tuple[Path, Path]) -> None:
    """`--beside`: RMIOv2's models scored on the MARIE run's held-out episodes with the same masks
    (zero-fill's numbers are RMIOv2's own evaluation's), in one table."""
    marie, rmio = runs
    res = CliRunner().invoke(cli, ["eval", "reconstruction", str(rmio), "--checkpoint", "finetune"])
    assert res.exit_code == 0, res.output
    alone = json.loads((rmio / "eval_reconstruction.json").read_text())["strategies"]
    args = ["eval", "reconstruction", str(marie), "--checkpoint", "finetune"]
    res = CliRunner().invoke(cli, [*args, "--beside", str(rmio)])
    assert res.exit_code == 0, res.output
    rows = json.loads((marie / "eval_reconstruction.json").read_text())["strategies"]
    name = f"{rmio.name}: wm fine-tuned (p_mask 0.5)"
    assert list(rows) == ["MARIE fine-tuned (p_mask 0.5)", "zero-fill", "hold-last", name]
    assert rows[name] == alone["wm fine-tuned (p_mask 0.5)"]  # same episodes, same masks
    assert rows["zero-fill"]["lrec_masked"] == pytest.approx(alone["zero-fill"]["lrec_masked"])
    assert rows[name]["lrec_masked"] != rows["MARIE fine-tuned (p_mask 0.5)"]["lrec_masked"]


def test_beside_a_run_trained_on_other_data_is_refused(
    runs: tuple[Path, Path], tmp_path: Path
) -> None:
    """L_rec is in each model's own normalised units: a run whose input statistics differ would
    put rows of different units in one table, so `--beside` refuses it in one line."""
    marie, rmio = runs
    other = tmp_path / "other"
    shutil.copytree(rmio, other)
    ckpt = torch.load(other / "wm_finetune.pt", map_location="cpu", weights_only=False)
    ckpt["stats"]["obs_std"] = (np.asarray(ckpt["stats"]["obs_std"]) * 2).tolist()
    torch.save(ckpt, other / "wm_finetune.pt")
    args = ["eval", "reconstruction", str(marie), "--checkpoint", "finetune"]
    res = CliRunner().invoke(cli, [*args, "--beside", str(other)])
    assert isinstance(res.exception, RmioError), res.output  # rmio's CLI prints it as one line
    assert "trained on other data" in str(res.exception) and "\n" not in str(res.exception)


@pytest.mark.parametrize("form", ["shipped name", "bundle directory"])
def test_export_cli_takes_a_bundles_actor(
    runs: tuple[Path, Path], tmp_path: Path, form: str
) -> None:
    """`rmio export MARIE_RUN --policy BUNDLE`: a shipped bundle's name or a bundle directory (as
    for an RMIOv2 run; only a policy.pt file was accepted before), its actor.onnx shipped beside
    the window graph; the bundle checks."""
    from rmio.models import find_bundle

    marie, _ = runs
    policy = "halfcheetah_6x1" if form == "shipped name" else str(find_bundle("halfcheetah_6x1"))
    out = tmp_path / "bundle"
    res = CliRunner().invoke(cli, ["export", str(marie), "--policy", policy, "--out", str(out)])
    assert res.exit_code == 0, res.output
    manifest = load_manifest(out)
    assert manifest.wm_window is not None and manifest.wm_window["algo"] == "marie"
    assert manifest.files["actor"] == "actor.onnx"
    shipped = find_bundle("halfcheetah_6x1") / "actor.onnx"
    assert (out / "actor.onnx").read_bytes() == shipped.read_bytes()
    check_bundle(out)
    bad = CliRunner().invoke(cli, ["export", str(marie), "--policy", "no_such_bundle"])
    assert bad.exit_code != 0 and "no bundle 'no_such_bundle'" in str(bad.exception)
