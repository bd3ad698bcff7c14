"""Resume equals an uninterrupted run for the two world-model stages no other test interrupts:
RMIO v1's correction block and MARIE's masked fine-tuning (train/resume.py holds the keys every
world-model trainer checkpoints; RMIOv2's loop is interrupted in tests/test_world_model.py and
MMSA's in tests/test_mmsa_resume.py). Each stage runs 12 updates in one go in one run directory,
and 8 then (its final file deleted, as if killed after its last checkpoint) 12 in a copy of it.
A stage that stopped early and lost its final file stays stopped when re-run (RMIOv2, RMIO v1,
MARIE; MMSA's in tests/test_mmsa_resume.py)."""

from __future__ import annotations

import io
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from rich.console import Console

from rmio.config import Config, load_config, save_config

pytestmark = pytest.mark.timeout(600)
RESUME_KEYS = {"optim", "step", "best", "since_best", "ema", "np_rng", "mask_rng", "torch_rng"}
QUIET = Console(quiet=True)


Stage = Callable[[Path, Console, int], Path]
"""Runs a stage in a run directory for a number of updates and returns its final file."""


def _resume_against_uninterrupted(
    pretrained: Path, stage: Stage, ckpt: str, keys: set[str], resuming: str
) -> tuple[dict[str, Any], dict[str, Any]]:
    """(uninterrupted 12-update final file, resumed one) of ``stage`` on copies of
    ``pretrained``; checks the 8-update checkpoint's keys and the resume message on the way."""
    full, part = pretrained.with_name("full"), pretrained.with_name("part")
    shutil.copytree(pretrained, full)
    shutil.copytree(pretrained, part)  # the same data and pre-trained model
    done = torch.load(stage(full, QUIET, 12), weights_only=False)
    stopped = stage(part, QUIET, 8)
    at8 = torch.load(stopped, weights_only=False)
    written = torch.load(part / ckpt, weights_only=False)
    assert at8["summary"]["updates"] == written["step"] == 8
    assert RESUME_KEYS | keys <= written.keys(), sorted(written)
    stopped.unlink()  # as if killed after the update-8 checkpoint
    text = io.StringIO()
    resumed = torch.load(stage(part, Console(file=text, width=200), 12), weights_only=False)
    assert f"{resuming} from update 8" in text.getvalue(), text.getvalue()
    assert done["summary"]["updates"] == resumed["summary"]["updates"] == 12
    assert done["model"].keys() == resumed["model"].keys() and done["model"]
    for name, value in done["model"].items():
        torch.testing.assert_close(value, resumed["model"][name], rtol=0, atol=0, msg=name)
    # the last 4 updates moved the weights: equal final weights are not the update-8 ones
    assert any(not torch.equal(v, at8["model"][k]) for k, v in resumed["model"].items())
    assert done["summary"]["final_loss_ema"] == resumed["summary"]["final_loss_ema"]
    return done, resumed


def _debug_config(algo: str, *overrides: str) -> Config:
    return load_config(
        "halfcheetah_6x1",
        preset="debug",
        algo=algo,
        overrides=[
            *overrides,
            "world_model.train.updates=6",
            "world_model.train.checkpoint_every=4",
        ],
    )


def test_correction_stage_resumes_to_the_uninterrupted_weights(tmp_path: Path) -> None:
    from rmio.train.common import prepare_run_dir
    from rmio.train.wm_train import finetune_world_model, train_world_model

    cfg = _debug_config("rmio-v1", "world_model.train.seq_len=8")
    pretrained = prepare_run_dir(cfg, tmp_path / "pretrained", "rmio-v1")
    train_world_model(cfg, pretrained, "cpu", QUIET)
    _resume_against_uninterrupted(
        pretrained,
        lambda run, console, n: finetune_world_model(run, 0.5, "cpu", console, n),
        "ckpt_correction.pt",
        {"block", "p_mask", "masks"},
        "resuming the correction stage",
    )


def test_marie_finetuning_resumes_to_the_uninterrupted_weights(tmp_path: Path) -> None:
    from rmio.train.marie_finetune import finetune_marie
    from rmio.train.marie_train import train_marie

    cfg = _debug_config(
        "marie", "marie.preset=tiny", "marie.seq_len=6", "world_model.history_window=6"
    )
    pretrained = tmp_path / "pretrained"
    save_config(cfg, pretrained)
    train_marie(cfg, pretrained, "cpu", QUIET)
    done, resumed = _resume_against_uninterrupted(
        pretrained,
        lambda run, console, n: finetune_marie(run, 0.5, "cpu", console, n),
        "ckpt_marie_finetune.pt",
        {"model", "phase", "holdout_before", "p_mask", "masks"},
        "resuming MARIE's masked fine-tuning",
    )
    for key in ("holdout_lrec_masked", "holdout_lrec_masked_pretrain"):
        assert done["summary"][key] == resumed["summary"][key], key


def _stop_early(run: Path) -> None:
    """Patience 2 and an improvement of 90% required: fine-tuning stalls at update 3."""
    import yaml

    path = run / "config.yaml"
    raw = yaml.safe_load(path.read_text())
    raw["world_model"]["finetune"].update({"patience": 2, "min_delta": 0.9})
    path.write_text(yaml.safe_dump(raw, sort_keys=False))


def _pretrained(tmp_path: Path, algo: str) -> tuple[Path, Stage]:
    from rmio.train.common import prepare_run_dir
    from rmio.train.marie_finetune import finetune_marie
    from rmio.train.marie_train import train_marie
    from rmio.train.wm_train import finetune_world_model, train_world_model

    run = tmp_path / "pretrained"
    if algo == "marie":
        cfg = _debug_config(
            "marie", "marie.preset=tiny", "marie.seq_len=6", "world_model.history_window=6"
        )
        save_config(cfg, run)
        train_marie(cfg, run, "cpu", QUIET)
        return run, lambda r, console, n: finetune_marie(r, 0.5, "cpu", console, n)
    cfg = _debug_config(algo, "world_model.train.seq_len=8")
    prepare_run_dir(cfg, run, algo)
    train_world_model(cfg, run, "cpu", QUIET)
    return run, lambda r, console, n: finetune_world_model(r, 0.5, "cpu", console, n)


@pytest.mark.parametrize("algo", ["rmiov2", "rmio-v1", "marie"])
def test_a_stage_that_stopped_early_stays_stopped_on_rerun(tmp_path: Path, algo: str) -> None:
    """Killed after its early stop's checkpoint but before its final file, a re-run makes no
    further update (it made one, and kept training if that one improved the loss)."""
    run, stage = _pretrained(tmp_path, algo)
    _stop_early(run)
    final = stage(run, QUIET, 40)
    first = torch.load(final, weights_only=False)
    assert first["summary"]["stopped_early"] and first["summary"]["updates"] == 3
    final.unlink()  # as if killed between the last checkpoint and the final file
    again = torch.load(stage(run, QUIET, 40), weights_only=False)
    assert again["summary"]["stopped_early"] and again["summary"]["updates"] == 3
    for name, value in first["model"].items():
        torch.testing.assert_close(value, again["model"][name], rtol=0, atol=0, msg=name)
