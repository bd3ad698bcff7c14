"""MARIE's masked fine-tuning and its bundle (issue 23, item 2): a tiny MARIE trained and
fine-tuned a few updates here, exported as a window graph, checked for parity, and run in-process
(reference and batched sweep) and through the real swarm, on the agent and on the world-model node,
with equal returns; RMIOv2 bundles keep their manifest and runner."""

from __future__ import annotations

import glob
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from rich.console import Console
from swarm_helpers import run_swarm, swarm_settings

from rmio.envs import EnvConfig
from rmio.envs.loss import LossConfig
from rmio.envs.trajectory import TrajectoryBuffer
from rmio.errors import RmioError
from rmio.evaluation import robustness
from rmio.evaluation.reference import evaluate
from rmio.runtime.bundle import Manifest, load_manifest
from rmio.runtime.models import (
    WM_WINDOW_INPUTS,
    WindowModelRunner,
    WorldModelRunner,
    world_model_runner,
)
from rmio.runtime.settings import env_config_for
from rmio.runtime.validate import check_bundle
from rmio.testing import make_tiny_marie_bundle

pytestmark = [pytest.mark.timeout(600), pytest.mark.slow]
WINDOW = 6
QUIET = Console(quiet=True)


@pytest.fixture(scope="module")
def marie(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The bundle; its run directory (pre-trained 12 updates, fine-tuned 8) is ``<bundle>-run``."""
    return make_tiny_marie_bundle(tmp_path_factory.mktemp("marie") / "bundle", WINDOW)


@pytest.fixture(scope="module")
def marie_lbf(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A discrete task's (LBF 8x8, 2 agents, one-hot actions) bundle, without an actor."""
    return make_tiny_marie_bundle(
        tmp_path_factory.mktemp("marie_lbf") / "bundle",
        WINDOW,
        updates=6,
        finetune_updates=4,
        scenario="lbf_8x8_2p_2f_coop",
        actor=None,
    )


def _run(bundle: Path) -> Path:
    return bundle.parent / f"{bundle.name}-run"


def test_finetune_logs_and_resumes_to_the_same_weights(marie: Path, tmp_path: Path) -> None:
    """`rmio train finetune` takes a MARIE run (it refused one before): an interrupted fine-tuning
    resumed from its checkpoint ends on the weights of the uninterrupted one; the tokenizer stays
    the pre-trained one; held-out L_rec on lost agents is reported before and after; a resume with
    other masks is refused."""
    from click.testing import CliRunner

    from rmio.cli import cli
    from rmio.train.marie_train import load_marie

    run = tmp_path / "run"
    shutil.copytree(_run(marie), run)
    for name in ("marie_finetune.pt", "ckpt_marie_finetune.pt"):
        (run / name).unlink()
    half = CliRunner().invoke(cli, ["train", "finetune", str(run), "--updates", "4"])
    assert half.exit_code == 0, half.output
    (run / "marie_finetune.pt").unlink()  # as if interrupted after its last checkpoint
    refused = CliRunner().invoke(cli, ["train", "finetune", str(run), "--p-mask", "0.25"])
    assert refused.exit_code != 0
    assert "drew its masks as p_mask 0.5" in refused.output + str(refused.exception)
    resumed = CliRunner().invoke(cli, ["train", "finetune", str(run), "--updates", "8"])
    assert resumed.exit_code == 0 and "resuming" in resumed.output, resumed.output
    a, ckpt = load_marie(_run(marie) / "marie_finetune.pt")
    b, _ = load_marie(run / "marie_finetune.pt")
    pre, _ = load_marie(run / "marie_pretrain.pt")
    for (name, p), q in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        torch.testing.assert_close(p, q, msg=f"{name} differs after resume")
    for (name, p), q in zip(a.tok.state_dict().items(), pre.tok.state_dict().values(), strict=True):
        assert torch.equal(p, q), f"the tokenizer's {name} moved in fine-tuning"
    moved = [k for k, v in a.state_dict().items() if not torch.equal(v, pre.state_dict()[k])]
    assert any(k.startswith("blocks.") for k in moved)  # the Transformer was trained
    s = ckpt["summary"]
    assert s["updates"] == 8 and ckpt["masks"] == "p_mask 0.5"
    for key in ("holdout_lrec_masked", "holdout_lrec_masked_pretrain"):
        assert np.isfinite(s[key]) and s[key] > 0
    rows = (run / "marie_finetune.csv").read_text().splitlines()
    assert "obs_ce_masked" in rows[0] and "lrec_masked" in rows[0] and len(rows) >= 3


def test_bundle_manifest_parity_and_check(marie: Path) -> None:
    man = load_manifest(marie)
    assert man.wm_window is not None and man.wm_window["algo"] == "marie"
    assert man.wm_window["preset"] == "tiny" and man.wm_window["steps"] == WINDOW
    assert man.budget["wm_algo"] == "marie" and man.history_window == WINDOW
    assert man.files["wm_step"] == "wm_window.onnx"
    assert man.files["wm_step_pretrain"] == "wm_window_pretrain.onnx"
    assert (man.deter, man.stoch) == (0, 0)
    for key in ("parity_max_abs_random", "parity_max_abs_replay", "parity_max_abs_random_pretrain"):
        assert 0.0 <= man.metrics[key] <= 1e-3
    assert "wm_window.onnx" in check_bundle(marie)
    assert isinstance(world_model_runner(marie), WindowModelRunner)
    raw = json.loads((marie / "manifest.json").read_text())
    assert raw["wm_window"]["tokens"] == 3


def test_a_discrete_task_bundle_encodes_actions_one_hot(marie_lbf: Path) -> None:
    man = load_manifest(marie_lbf)
    assert man.spec.discrete and man.act_width == man.spec.action_dim
    assert "actor" not in man.files and man.wm_window["steps"] == WINDOW
    for key in ("parity_max_abs_random", "parity_max_abs_replay"):
        assert 0.0 <= man.metrics[key] <= 1e-3
    assert "wm_window.onnx" in check_bundle(marie_lbf)


def test_parity_check_catches_a_model_that_is_not_the_graph(marie: Path) -> None:
    """The held-out parity compares the lost agents' rows: the exported graph against a model
    whose token head differs fails it (its flips are far from argmax ties); against its own model
    it passes with no tie."""
    from rmio.train.marie_export import replay_parity
    from rmio.train.marie_train import load_marie

    model, _ = load_marie(_run(marie) / "marie_finetune.pt")
    holdout = TrajectoryBuffer.load(_run(marie) / "data" / "holdout.npz")
    runner = WindowModelRunner(marie)
    err, ties = replay_parity(model, runner, holdout, WINDOW, steps=12)
    assert err <= 1e-3 and ties == 0
    with torch.no_grad():
        model.obs_head[-1].bias[:] = torch.linspace(-5, 5, model.codebook)  # another argmax
    err, ties = replay_parity(model, runner, holdout, WINDOW, steps=12)
    assert err > 1e-3 and ties == 0  # flips this wide are no ties


@pytest.mark.parametrize("which", ["marie", "marie_lbf"], ids=["halfcheetah", "lbf-discrete"])
def test_the_graph_runs_the_transformer_for_the_lost_rows_alone(
    which: str, request: pytest.FixtureRequest
) -> None:
    """The exported graph runs the Transformer (and the context Perceiver) for the agents lost at
    t alone, one row per lost agent and one when none is: its outputs (onnxruntime, batch 1 as a
    coordinator calls it, and a batch of windows with different lost rows) are those of
    ``MarieWindow``, which computes every row, for 0, 1, some and all agents lost."""
    from rmio.train.marie_export import random_windows
    from rmio.train.marie_masked import LostRowsWindow, MarieWindow
    from rmio.train.marie_train import load_marie

    marie = request.getfixturevalue(which)
    model, _ = load_marie(_run(marie) / "marie_finetune.pt")
    assert load_manifest(marie).wm_window["rows"] == "lost"
    n = model.n
    obs, actions, mask, valid = random_windows(model, 4, WINDOW, torch.Generator().manual_seed(5))
    t = [WINDOW - 1] * 3 + [2]  # the last window is 3 steps long (padded)
    lost_sets = [[], [1], list(range(n)), [0]] if n > 2 else [[], [1], [0, 1], [0]]
    rows_seen: list[int] = []
    hook = model.blocks[0].register_forward_hook(
        lambda mod, a, out: rows_seen.append(a[0].shape[0])
    )
    session = WindowModelRunner(marie).session
    compared = 0
    try:
        for b, lost in enumerate(lost_sets):  # batch 1: row b alone, its lost agents at its t
            m = mask[b : b + 1].clone()
            m[0, :, t[b]] = 1.0
            m[0, lost, t[b]] = 0.0
            args = (obs[b : b + 1] * m[..., None], actions[b : b + 1], m, valid[b : b + 1])
            rows_seen.clear()
            with torch.no_grad():
                want = MarieWindow(model, WINDOW)(*args)
                assert rows_seen == [n]  # the reference runs every row
                rows_seen.clear()
                mine = LostRowsWindow(model, WINDOW)(*args)
            assert rows_seen == [max(1, len(lost))]
            got = session.run(
                None, {k: v.numpy() for k, v in zip(WM_WINDOW_INPUTS, args, strict=True)}
            )
            for out in (got, [v.numpy() for v in mine]):
                np.testing.assert_array_equal(out[1], want[1].numpy())
                np.testing.assert_allclose(out[0], want[0].numpy(), atol=1e-5)
            compared += len(lost)
        m = mask.clone()  # all four windows at once: rows lost in some windows only
        for b, lost in enumerate(lost_sets):
            m[b, :, t[b]] = 1.0
            m[b, lost, t[b]] = 0.0
        args = (obs * m[..., None], actions, m, valid)
        rows_seen.clear()
        with torch.no_grad():
            want = MarieWindow(model, WINDOW)(*args)
            rows_seen.clear()
            LostRowsWindow(model, WINDOW)(*args)
        assert rows_seen == [sum(len(lost) for lost in lost_sets)]
        got = session.run(None, {k: v.numpy() for k, v in zip(WM_WINDOW_INPUTS, args, strict=True)})
        np.testing.assert_array_equal(got[1], want[1].numpy())
        np.testing.assert_allclose(got[0], want[0].numpy(), atol=1e-5)
    finally:
        hook.remove()
    assert compared >= n + 2


@pytest.mark.parametrize("which", ["marie", "marie_lbf"], ids=["halfcheetah", "lbf-discrete"])
def test_training_and_the_deployed_graph_predict_the_same_tokens(
    which: str, request: pytest.FixtureRequest
) -> None:
    """The masked fine-tuning's prediction of a lost agent at a window's last step (PyTorch, from
    a training batch) is the graph's (onnxruntime, from the raw history through the runner), at an
    episode's start (a padded window) and in the middle of an episode; continuous actions (binned
    in the graph) and discrete ones (one-hot)."""
    marie = request.getfixturevalue(which)
    from rmio.config import Config, build_dataclass
    from rmio.train.marie_masked import masked_predictions
    from rmio.train.marie_train import load_marie
    from rmio.train.wm_data import SequenceSampler

    model, ckpt = load_marie(_run(marie) / "marie_finetune.pt")
    buf = TrajectoryBuffer.load(_run(marie) / "data" / "holdout.npz")
    cfg = build_dataclass(Config, ckpt["config"], "ckpt")
    long = next(k for k in range(buf.num_episodes) if len(buf.episode(k)["obs"]) > WINDOW + 6)
    episode = SequenceSampler(buf, cfg.world_model.smoothing).episodes()[long]
    runner = WindowModelRunner(marie)
    ep = buf.episode(long)
    assert load_manifest(marie).spec.discrete == (which == "marie_lbf")
    rng = np.random.default_rng(3)
    n = model.n
    compared = 0
    for end in (3, WINDOW - 1, WINDOW + 4):  # t: padded, exactly full, mid-episode
        start = max(0, end - WINDOW + 1)
        rows = slice(start, end + 2)  # S + 1 rows: the last one only gives targets
        mask = torch.as_tensor(rng.random((1, end + 2 - start, n)) > 0.5).float()
        mask[0, end - start, :2] = 0.0  # agents 0 and 1 lost at t
        batch = type(episode)(*[None if v is None else v[:, rows] for v in vars(episode).values()])
        batch.is_first = batch.is_first.clone()
        batch.is_first[:, 0] = 1.0
        with torch.no_grad():
            _, logits, target, _ = masked_predictions(model, batch, mask)
        want = logits[0, :, -1].argmax(-1).numpy()  # (n, K) at step t
        prev = np.full_like(ep["action"][start : end + 1], -1 if model.discrete else 0)
        if start > 0:
            prev[0] = ep["action"][start - 1]
        prev[1:] = ep["action"][start:end]
        masks = mask[0, : end + 1 - start].numpy()
        feeds = runner.feeds(
            ep["obs"][start : end + 1][:, None], prev[:, None], masks[:, None].astype(np.float32)
        )
        assert list(feeds) == list(WM_WINDOW_INPUTS)
        tokens = runner.session.run(["tokens_t"], feeds)[0][0]
        lost_t = masks[-1] < 0.5
        assert lost_t.sum() >= 2
        np.testing.assert_array_equal(tokens[lost_t], want[lost_t])
        np.testing.assert_array_equal(tokens[~lost_t], target[0, -1][~lost_t].numpy())
        _, recon = runner.replay(ep["obs"][start : end + 1], prev, masks.astype(np.float32))
        with torch.no_grad():
            decoded = model.tok.decode(torch.as_tensor(tokens)[None])[0].numpy()
        np.testing.assert_allclose(recon[-1], decoded, atol=1e-4)
        compared += int(lost_t.sum())
    assert compared >= 6


def delivered(run_dir: Path) -> dict[tuple[int, int, int], np.ndarray]:
    out = {}
    for path in glob.glob(str(run_dir / "records" / "a*.npz")):
        j = int(Path(path).name.split("-")[0][1:])
        rec = np.load(path)
        for e, t, row in zip(rec["recon_ep"], rec["recon_t"], rec["recon_obs"], strict=True):
            out[(int(e), int(t), j)] = row
    return out


def check_reconstructions(bundle: Path, run_dir: Path) -> int:
    """Every blind agent got what the window runner computes on the env host's records of its
    window (t - l..t, the last l steps of it read by the graph)."""
    env = np.load(run_dir / "records" / "env.npz")
    index = {(int(e), int(t)): k for k, (e, t) in enumerate(zip(env["ep"], env["t"], strict=True))}
    wm = WindowModelRunner(bundle)
    window = load_manifest(bundle).history_window
    got = delivered(run_dir)
    for (e, t, j), row in got.items():
        start = max(0, t - window)
        rows = [index[(e, h)] for h in range(start, t + 1)]
        prev = np.stack(
            [
                env["actions"][index[(e, h)]] if h >= 0 else np.zeros_like(env["actions"][0])
                for h in range(start - 1, t)
            ]
        )
        _, recon = wm.replay(env["obs"][rows], prev, env["observed"][rows].astype(np.float32))
        assert np.array_equal(recon[-1, j], row), f"episode {e} step {t} agent {j}"
        assert np.abs(row).sum() > 0
    return len(got)


@pytest.mark.parametrize(
    ("world_model", "transport", "wm_mode"),
    [("on-agent", "ipc", "incremental"), ("node", "tcp", "window")],
    ids=["on-agent-incremental", "wm-node"],
)
def test_swarm_returns_equal_the_in_process_evaluation(
    marie: Path, tmp_path: Path, world_model: str, transport: str, wm_mode: str
) -> None:
    """p_loss 0.3: the swarm's return is the in-process reference's, every reconstruction is the
    window runner's on the recorded window; incremental mode never continues (no state)."""
    settings = swarm_settings(
        marie,
        tmp_path,
        steps=40,
        record=True,
        world_model=world_model,
        transport=transport,
        wm_mode=wm_mode,
        # generous: a node reply later than its deadline would make the round skip the node
        # from then on, which a loaded 2-core machine must not cause
        step_deadline_ms=4000.0,
        wm_deadline_ms=2500.0,
    )
    report, _ = run_swarm(settings, tmp_path / "run")
    ev = report["events"]
    assert ev.get("agents.internal_errors", 0) == 0 and ev.get("deadline_misses", 0) == 0
    assert ev.get("agents.recon_miss", 0) == 0 and ev.get("agents.rounds_continued", 0) == 0
    if world_model == "node":
        assert report["processes"]["wm"]["wm.requests"] == ev["agents.rounds"] > 10
        assert ev.get("agents.wm_node_timeout", 0) == 0
    assert check_reconstructions(marie, tmp_path / "run") > 10
    ref = evaluate(
        marie,
        settings.env_config(),
        settings.loss_config(),
        episodes=settings.episodes,
        seed=settings.seed,
        wm_mode=wm_mode,
    )
    assert [ep["return"] for ep in report["episodes"]] == [r["return"] for r in ref]
    held = evaluate(
        marie,
        settings.env_config(),
        settings.loss_config(),
        episodes=settings.episodes,
        seed=settings.seed,
        recon="zero-fill",
    )
    assert held[0]["return"] != ref[0]["return"]  # the reconstructions changed the actions


def test_batched_sweep_equals_the_reference(marie: Path) -> None:
    steps = 25
    result = robustness.sweep(
        marie,
        p_loss=[0.5],
        episodes=2,
        seeds=1,
        strategies=["world-model", "no-finetune"],
        episode_limit=steps,
        wm_mode="incremental",
    )
    ref = evaluate(
        marie,
        EnvConfig(**env_config_for(load_manifest(marie), steps)),
        LossConfig("bernoulli", p_loss=0.5),
        episodes=2,
        seed=0,
    )
    row = next(r for r in result["rows"] if r["strategy"] == "world-model" and r["p_loss"] == 0.5)
    assert row["reconstructions"] > 0
    np.testing.assert_allclose(
        [e["return"] for e in row["episodes"]], [r["return"] for r in ref], rtol=1e-5, atol=1e-5
    )


def test_rmiov2_bundles_keep_their_manifest_and_runner(bundle: Path) -> None:
    data = json.loads((bundle / "manifest.json").read_text())
    # nothing of version 2 used: written as version 1, which older runtimes still read
    assert "wm_window" not in data and data["schema_version"] == 1
    data["wm_window"] = {"algo": "marie", "steps": 2}  # version 1 cannot say it
    with pytest.raises(RmioError, match="wm_window needs schema_version 2"):
        Manifest.from_dict(data)
    assert isinstance(world_model_runner(bundle), WorldModelRunner)
    with pytest.raises(RmioError, match=r"wm_window\.steps"):
        WindowModelRunner(bundle)
