"""MARIE's world model (`--algo marie`, issue 23 item 1): config validation, a debug run end to end
and its resume, the VQ tokenizer's round trip and straight-through gradient, and the causal
Transformer's masks (no look ahead, none across an episode start, no agent's own tokens in its
context token)."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from rich.console import Console

from rmio.config import algorithm_of, load_config
from rmio.envs import EnvConfig
from rmio.envs.collect import collect
from rmio.envs.loss import LossConfig
from rmio.errors import ConfigError
from rmio.train.marie_config import MARIE_PRESETS, MarieConfig
from rmio.train.marie_model import MarieWorldModel
from rmio.train.marie_nets import VQTokenizer

TINY = ["marie.preset=tiny"]


def test_algo_marie_enables_it_and_names_it() -> None:
    cfg = load_config("smax_2s3z", algo="marie")
    assert cfg.marie.enabled and cfg.marie.preset == "cpu"
    assert algorithm_of(cfg.to_dict()) == "marie"
    assert not load_config("smax_2s3z").marie.enabled
    assert MARIE_PRESETS["faithful"]["tokens"] == 16 and MARIE_PRESETS["faithful"]["layers"] == 10
    assert MarieConfig(preset="faithful").sizes()["codebook"] == 512


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("marie.preset=huge", "marie.preset"),
        ("marie.seq_len=10", "marie.seq_len (10) must be >= world_model.history_window (20)"),
        ("marie.codebook_decay=1.0", "marie.codebook_decay must be in [0, 1)"),
        ("marie.dropout=-0.1", "marie.dropout must be in [0, 1)"),
        ("marie.action_bins=1", "marie.action_bins must be >= 2"),
        ("marie.commitment=-1", "marie.commitment must be >= 0"),
    ],
)
def test_bad_settings_are_one_config_error(override: str, message: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_config("halfcheetah_6x1", algo="marie", overrides=[override])


def _cfg(updates: int):
    return load_config(
        "halfcheetah_6x1",
        preset="debug",
        algo="marie",
        overrides=[
            *TINY,
            f"world_model.train.updates={updates}",
            "world_model.train.checkpoint_every=4",
            "world_model.train.log_every=4",
        ],
    )


def test_debug_run_end_to_end_and_resume_gives_the_same_weights(tmp_path: Path) -> None:
    from rmio.train.marie_train import load_marie, train_marie

    quiet = Console(quiet=True)
    full = train_marie(_cfg(12), tmp_path / "a", "cpu", quiet)
    (tmp_path / "b").mkdir()
    shutil.copytree(tmp_path / "a" / "data", tmp_path / "b" / "data")  # the same collected data
    part = train_marie(_cfg(8), tmp_path / "b", "cpu", quiet)
    assert torch.load(part, weights_only=False)["summary"]["updates"] == 8
    part.unlink()  # as if the 8-update run had been interrupted after its last checkpoint
    resumed = train_marie(_cfg(12), tmp_path / "b", "cpu", quiet)
    a, ckpt = load_marie(full)
    b, _ = load_marie(resumed)
    for (name, p), q in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        torch.testing.assert_close(p, q, msg=f"{name} differs after resume")
    summary = ckpt["summary"]
    assert summary["updates"] == 12 and 0.0 <= summary["holdout_token_acc"] <= 1.0
    assert np.isfinite(summary["holdout_loss"])
    rows = (tmp_path / "b" / "marie_pretrain.csv").read_text().splitlines()
    assert rows[0].startswith("step,") and "obs_ce" in rows[0]
    assert len(rows) > 4 and (tmp_path / "b" / "tb").is_dir()
    again = train_marie(_cfg(12), tmp_path / "b", "cpu", quiet)  # done: not retrained
    assert again == resumed


def test_tokenizer_round_trip_on_a_tiny_case() -> None:
    """Four observations, two tokens each out of 16 codes: after training, decode(encode(o)) gives
    o back; the reconstruction alone reaches the encoder through the straight-through estimator."""
    torch.manual_seed(0)
    tok = VQTokenizer(1, 3, codebook=16, tokens=2, code_dim=4, hidden=32, layers=2, decay=0.9)
    obs = torch.tensor([[1.0, 0, 0], [0, 2.0, 0], [0, 0, -1.5], [1.0, -1.0, 0.5]])[:, None]
    tok.loss(obs, beta=0.0)[0].backward()
    assert tok.enc[0].weight.grad is not None and tok.enc[0].weight.grad.abs().sum() > 0
    before = tok.codebook.detach().clone()
    opt = torch.optim.Adam([p for p in tok.parameters() if p.requires_grad], lr=3e-3)
    for _ in range(600):
        opt.zero_grad()
        tok.loss(obs, beta=0.25)[0].backward()
        opt.step()
    assert not torch.equal(before, tok.codebook)  # moved by the EMA, not by a gradient
    tok.eval()
    with torch.no_grad():
        ids = tok.encode(obs)
        back = tok.decode(ids)
    assert ids.shape == (4, 1, 2) and len({tuple(r) for r in ids[:, 0].tolist()}) == 4
    assert (back - obs).abs().max() < 0.1, back


@pytest.fixture(scope="module")
def model() -> MarieWorldModel:
    buf, _ = collect(
        EnvConfig("mamujoco", "HalfCheetah-6x1", episode_limit=20),
        LossConfig("none"),
        steps=40,
        num_envs=1,
        seed=0,
    )
    torch.manual_seed(0)
    n, d = buf.spec.n_agents, buf.spec.obs_dim
    m = MarieWorldModel(
        MarieConfig(preset="tiny", seq_len=4), buf.spec, np.zeros((n, d)), np.ones((n, d))
    )
    return m.eval()


def _hidden(m: MarieWorldModel, ids: torch.Tensor, acts: torch.Tensor, episode: torch.Tensor):
    with torch.no_grad():
        seq = m.sequences(ids, acts).flatten(2, 3).flatten(0, 1)
        h = m.transform(seq, m.attention_bias(episode))
    return h.reshape(ids.shape[0], m.n, ids.shape[1], m.block, m.dim)


def _window(m: MarieWorldModel, steps: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(1)
    ids = torch.randint(0, m.codebook, (1, steps, m.n, m.k), generator=gen)
    acts = torch.randint(0, m.act_vocab, (1, steps, m.n, m.act_tokens), generator=gen)
    return ids, acts


def test_a_later_token_cannot_change_an_earlier_output(model: MarieWorldModel) -> None:
    """Change agent 0's observation tokens at step 2: every output before them is unchanged (its
    own context token c_2 included: c holds the others' tokens, never its own), and outputs from
    there on do change (so the comparison compared something)."""
    m = model
    ids, acts = _window(m)
    episode = torch.zeros(1, 4, dtype=torch.long)
    moved = ids.clone()
    moved[0, 2, 0] = (moved[0, 2, 0] + 1) % m.codebook
    h, h2 = _hidden(m, ids, acts, episode), _hidden(m, moved, acts, episode)
    flat, flat2 = h.flatten(2, 3), h2.flatten(2, 3)
    first_x = 2 * m.block + m.ctx  # agent 0's x_{2,1}
    torch.testing.assert_close(flat[:, 0, :first_x], flat2[:, 0, :first_x], rtol=0, atol=1e-6)
    assert (flat[:, 0, first_x:] - flat2[:, 0, first_x:]).abs().amax(-1).min() > 1e-4
    # the other agents see agent 0's step-2 tokens from their own c_2 on, not before step 2
    torch.testing.assert_close(
        flat[:, 1:, : 2 * m.block], flat2[:, 1:, : 2 * m.block], atol=1e-6, rtol=0
    )
    assert (flat[:, 1:, 2 * m.block] - flat2[:, 1:, 2 * m.block]).abs().amax() > 1e-4


def test_no_attention_across_an_episode_start(model: MarieWorldModel) -> None:
    m = model
    ids, acts = _window(m)
    episode = torch.tensor([[0, 0, 1, 1]])
    moved, moved_acts = ids.clone(), acts.clone()
    moved[0, :2] = (moved[0, :2] + 1) % m.codebook
    moved_acts[0, :2] = (moved_acts[0, :2] + 1) % m.act_vocab
    h, h2 = _hidden(m, ids, acts, episode), _hidden(m, moved, moved_acts, episode)
    torch.testing.assert_close(h[:, :, 2:], h2[:, :, 2:], rtol=0, atol=1e-6)
    assert (h[:, :, :2] - h2[:, :, :2]).abs().max() > 1e-4
    same = _hidden(m, moved, moved_acts, torch.zeros(1, 4, dtype=torch.long))
    assert (same[:, :, 2:] - h2[:, :, 2:]).abs().max() > 1e-4  # one episode: step 0 is seen


def test_the_context_token_never_holds_the_agents_own_tokens(model: MarieWorldModel) -> None:
    m = model
    ids, _ = _window(m, 1)
    moved = ids.clone()
    moved[0, 0, 0] = (moved[0, 0, 0] + 1) % m.codebook
    with torch.no_grad():
        c, c2 = m.contexts(ids), m.contexts(moved)
    torch.testing.assert_close(c[0, 0, 0], c2[0, 0, 0], rtol=0, atol=1e-6)
    assert (c[0, 0, 1:] - c2[0, 0, 1:]).abs().amax(-1).min() > 1e-5


def test_cli_trains_marie_and_refuses_the_stages_not_built_yet(tmp_path: Path) -> None:
    """`rmio train world-model --algo marie` runs MARIE's trainer into a marie-wm run directory;
    rerunning it on that directory finds it done; the reconstruction evaluation scores the
    pre-trained MARIE (it refused a MARIE run before issue 23's evaluation); joint pre-training,
    which has no MARIE counterpart, is refused in one line rather than running RMIOv2's."""
    from click.testing import CliRunner

    from rmio.cli import cli

    run = tmp_path / "run"
    args = ["train", "world-model", "halfcheetah_6x1", "--debug", "--algo", "marie"]
    args += ["--set", "marie.preset=tiny", "--set", "world_model.train.updates=4"]
    first = CliRunner().invoke(cli, [*args, "--run-dir", str(run)])
    assert first.exit_code == 0, first.output
    assert (run / "marie_pretrain.pt").is_file() and not (run / "wm_pretrain.pt").exists()
    again = CliRunner().invoke(cli, [*args, "--run-dir", str(run)])
    assert again.exit_code == 0 and "already finished" in again.output
    scored = CliRunner().invoke(cli, ["eval", "reconstruction", str(run)])
    assert scored.exit_code == 0, scored.output
    rows = json.loads((run / "eval_reconstruction.json").read_text())["strategies"]
    assert list(rows) == ["MARIE pre-trained", "zero-fill", "hold-last"]
    pretrain = ["train", "pretrain", "halfcheetah_6x1", "--debug", "--algo", "marie"]
    refused = CliRunner().invoke(cli, [*pretrain, "--run-dir", str(tmp_path / "joint")])
    assert refused.exit_code != 0 and not (tmp_path / "joint").exists()
    message = str(refused.exception)
    assert "joint pre-training is not built for --algo marie" in message
    assert "\n" not in message
