"""Fine-tuning and evaluation masks from rmio's loss models (train/masks.py): each family has the
lost fraction and run lengths it promises, the paper's recipe is drawn exactly as before, and the
CLI fine-tunes and evaluates with them end to end."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from rmio.config import load_config  # noqa: E402
from rmio.errors import ConfigError  # noqa: E402
from rmio.train.masks import burst_rates, sample_loss_masks, sample_mixed_masks  # noqa: E402
from rmio.train.wm_data import sample_masks  # noqa: E402
from rmio.train.wm_train import Phase  # noqa: E402


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _runs(lost: np.ndarray) -> list[int]:
    """Lengths of the runs of consecutive lost steps along the time axis of (B, T, n) masks."""
    out: list[int] = []
    for seq in lost.transpose(0, 2, 1).reshape(-1, lost.shape[1]):
        k = 0
        for x in seq:
            if x:
                k += 1
            elif k:
                out.append(k)
                k = 0
        if k:
            out.append(k)
    return out


@pytest.mark.parametrize("p", [0.1, 0.5, 0.75])
def test_bernoulli_and_burst_lose_the_fraction_they_promise(p: float) -> None:
    shape = (400, 200, 6)
    for model in ("bernoulli", "burst"):
        m = sample_loss_masks(_gen(), shape, p, model, mean_burst_length=5.0)
        assert set(np.unique(m.numpy())) <= {0.0, 1.0}
        assert abs((1 - m).mean().item() - p) < 0.01, model


def test_bursts_last_their_mean_length_and_bernoulli_runs_do_not() -> None:
    shape = (400, 200, 6)
    burst = (sample_loss_masks(_gen(1), shape, 0.3, "burst", 5.0) == 0).numpy()
    bern = (sample_loss_masks(_gen(1), shape, 0.3, "bernoulli") == 0).numpy()
    # runs cut by the window's end are slightly shorter, hence the margin below 5
    assert 4.6 < np.mean(_runs(burst)) < 5.2
    assert np.mean(_runs(bern)) < 1.5  # 1 / (1 - 0.3) for independent losses


def test_bursts_beyond_what_the_mean_length_allows_get_longer() -> None:
    enter, leave = burst_rates(torch.tensor([0.9, 1.0, 0.0]), 4.0)
    assert enter[0] == 1.0 and abs(leave[0].item() - 0.1 / 0.9) < 1e-6
    m = sample_loss_masks(_gen(), (200, 200, 4), torch.tensor(0.9), "burst", 4.0)
    assert abs((1 - m).mean().item() - 0.9) < 0.01
    assert (sample_loss_masks(_gen(), (3, 20, 4), 1.0, "burst") == 0).all()
    assert (sample_loss_masks(_gen(), (3, 20, 4), 0.0, "burst") == 1).all()


def test_blackouts_blind_every_agent_at_once_for_one_run() -> None:
    m = sample_loss_masks(_gen(), (50, 24, 5), 0.25, "blackout")
    assert (m == m[..., :1]).all()  # all agents share each step's mask
    lost = (m[..., 0] == 0).numpy()
    assert (lost.sum(1) == 6).all()  # round(0.25 * 24) steps per sequence
    assert all(len(_runs(lost[b][None, :, None])) == 1 for b in range(50))  # one contiguous run


def test_mixed_masks_cover_the_whole_range_including_total_loss() -> None:
    m = sample_mixed_masks(_gen(), (512, 24, 6), ["bernoulli", "burst"], 0.0, 1.0, 4.0)
    lost = (1 - m).mean((1, 2)).numpy()
    assert lost.min() < 0.1 and lost.max() > 0.95
    assert np.histogram(lost, bins=4, range=(0, 1))[0].min() > 60  # spread over [0, 1]
    again = sample_mixed_masks(_gen(), (512, 24, 6), ["bernoulli", "burst"], 0.0, 1.0, 4.0)
    assert torch.equal(m, again)  # seeded


def test_the_papers_recipe_is_drawn_exactly_as_before() -> None:
    phase = Phase("finetune", 10, 1e-4, 0.5)
    assert phase.paper_masks()
    a = phase.sample(_gen(3), (8, 24, 6), "cpu")
    b = sample_masks(_gen(3), (8, 24, 6), 0.5, torch.device("cpu"))
    assert torch.equal(a, b)
    mixed = Phase("finetune", 10, 1e-4, 0.5, mask_models=("burst",))
    assert not mixed.paper_masks()


@pytest.mark.parametrize(
    "override,needle",
    [
        ("world_model.finetune.mask_models=[bernoulli,telepathy]", "mask_models"),
        ("world_model.finetune.p_mask_range=[0.8,0.2]", "p_mask_range"),
        ("world_model.eval.loss_model=gaussian", "eval.loss_model"),
        ("world_model.finetune.mean_burst_length=0.5", "mean_burst_length"),
    ],
)
def test_bad_mask_settings_are_refused(override: str, needle: str) -> None:
    with pytest.raises(ConfigError, match=needle):
        load_config("halfcheetah_6x1", overrides=[override])


def _rmio(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "rmio.cli", *args], capture_output=True, text=True, timeout=600
    )


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    run = tmp_path_factory.mktemp("masks") / "run"
    proc = _rmio("train", "world-model", "halfcheetah_6x1", "--debug", "--run-dir", str(run))
    assert proc.returncode == 0, proc.stderr
    return run


def test_finetune_and_evaluate_with_burst_masks_through_the_cli(
    pretrained: Path, tmp_path: Path
) -> None:
    run = tmp_path / "run"
    shutil.copytree(pretrained, run)
    proc = _rmio(
        "train", "finetune", str(run), "--mask-models", "bernoulli,burst",
        "--p-mask-range", "0", "1", "--mean-burst-length", "5",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    ckpt = torch.load(run / "wm_finetune.pt", weights_only=False)
    assert ckpt["masks"] == "bernoulli+burst masks, p_mask ~ U[0, 1], bursts of 5"
    proc = _rmio("eval", "reconstruction", str(run), "--loss-model", "burst")
    assert proc.returncode == 0, proc.stderr
    res = json.loads((run / "eval_reconstruction_burst.json").read_text())
    assert res["loss_model"] == "burst" and not (run / "eval_reconstruction.json").exists()
    (label,) = [k for k in res["strategies"] if k.startswith("wm fine-tuned")]
    assert label == "wm fine-tuned (bernoulli+burst masks, p_mask ~ U[0, 1], bursts of 5)"
    for row in res["strategies"].values():
        assert all(v is not None and np.isfinite(v) for v in row["lrec_masked"][1:])
    proc = _rmio("train", "finetune", str(run), "--mask-models", "gaussian")
    assert proc.returncode == 2 and "mask_models" in proc.stderr


def test_policy_aware_finetuning_through_the_cli(pretrained: Path, tmp_path: Path) -> None:
    """rmio's extension: the frozen actor's disagreement on lost agents joins the loss and the log,
    and the checkpoint and reports name it."""
    run = tmp_path / "run"
    shutil.copytree(pretrained, run)
    proc = _rmio(
        "train", "finetune", str(run), "--policy-weight", "2", "--policy", "halfcheetah_6x1",
        "--updates", "20",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert torch.load(run / "wm_finetune.pt", weights_only=False)["masks"] == (
        "p_mask 0.5, policy-aware 2"
    )
    rows = [json.loads(line) for line in (run / "wm_finetune.jsonl").read_text().splitlines()]
    assert rows and all(np.isfinite(r["policy_mae"]) for r in rows)
    # a device this machine lacks is refused even when the run is finished
    proc = _rmio("train", "finetune", str(run), "--device", "cuda:99")
    assert proc.returncode == 2 and "CUDA device" in proc.stderr, proc.stderr
    fresh = tmp_path / "fresh"
    shutil.copytree(pretrained, fresh)
    proc = _rmio("train", "finetune", str(fresh), "--policy-weight", "1")  # no actor named
    assert proc.returncode == 2 and "needs the actor" in proc.stderr
