"""`rmio train finetune MMSA_RUN` (rmio's extension, issue 22) resumes like every other world-model
trainer: an interrupted run re-run with the same command ends on the weights of an uninterrupted
one, without redoing what its checkpoint holds; masked fine-tuning stops early by
world_model.finetune's patience and min_delta, and records the updates it really made."""

from __future__ import annotations

import io
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from rich.console import Console

from rmio.config import load_config, save_config
from rmio.train.mmsa import train_mmsa
from rmio.train.mmsa_finetune import CKPT, FINAL, LOG, PRETRAINED, finetune_mmsa
from rmio.train.runlog import load_checkpoint

pytest.importorskip("lbforaging")
pytestmark = pytest.mark.slow

P_MASK = 0.3
DECODER_UPDATES = 150
"""The debug preset's mmsa.recon_updates; its fine-tuning budget is 40 updates, its
world_model.train.checkpoint_every 25."""


class CtrlC(io.StringIO):
    """A console's output that raises KeyboardInterrupt (what Ctrl-C raises) once ``marker`` is
    printed: the run stops right after that line, wherever the code printing it stands."""

    def __init__(self, marker: str) -> None:
        super().__init__()
        self.marker, self.fired = marker, False

    def write(self, text: str) -> int:
        n = super().write(text)
        if not self.fired and self.marker in self.getvalue():
            self.fired = True
            raise KeyboardInterrupt
        return n


def _console() -> Console:
    return Console(file=io.StringIO(), width=250)


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def _weights(run: Path) -> dict[str, torch.Tensor]:
    return load_checkpoint(run / FINAL)["model"]


def _assert_same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    compared = 0
    for key in a:
        assert torch.equal(a[key], b[key]), f"{key} differs"
        compared += a[key].numel()
    assert compared > 1000


def _logged_steps(run: Path) -> list[int]:
    return [json.loads(line)["step"] for line in (run / f"{LOG}.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A debug MMSA run on LBF (600 env steps), not yet fine-tuned."""
    run = tmp_path_factory.mktemp("mmsa_resume") / "trained"
    cfg = load_config("lbf_8x8_2p_2f_coop", preset="debug")
    save_config(cfg, run)
    train_mmsa(cfg, run, "cpu", _console())
    return run


@pytest.fixture(scope="module")
def uninterrupted(trained: Path) -> Path:
    run = _copy(trained, trained.parent / "uninterrupted")
    finetune_mmsa(run, P_MASK, "cpu", _console())
    return run


def test_an_interruption_after_the_decoder_stage_resumes_at_fine_tuning(
    trained: Path, uninterrupted: Path
) -> None:
    """Ctrl-C as the decoder stage's result is printed, then the same command again (the CLI):
    fine-tuning starts from the saved decoder, the decoder stage is not trained again, and the
    final weights and held-out errors are the uninterrupted run's, bit for bit."""
    run = _copy(trained, trained.parent / "after_decoder")
    out = CtrlC("MMSA decoder:")
    with pytest.raises(KeyboardInterrupt):
        finetune_mmsa(run, P_MASK, "cpu", Console(file=out, width=250))
    assert out.fired and (run / PRETRAINED).exists() and not (run / FINAL).exists()
    assert load_checkpoint(run / CKPT)["step"] == DECODER_UPDATES
    logged = _logged_steps(run)
    assert max(logged) == DECODER_UPDATES
    cmd = [sys.executable, "-m", "rmio", "train", "finetune", str(run), "--p-mask", str(P_MASK)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=280)
    assert proc.returncode == 0, proc.stderr[-2000:]
    text = " ".join(proc.stdout.split())
    assert f"resuming the MMSA decoder stage from update {DECODER_UPDATES}" in text, text
    assert "collected" not in text  # the data of the first attempt, not new episodes
    # the decoder stage made no update again: its log rows are the first attempt's alone
    again = _logged_steps(run)[len(logged) :]
    assert again and min(again) > DECODER_UPDATES
    _assert_same_weights(_weights(run), _weights(uninterrupted))
    assert (
        load_checkpoint(run / FINAL)["holdout"] == load_checkpoint(uninterrupted / FINAL)["holdout"]
    )


def test_an_interruption_mid_fine_tuning_resumes_from_its_last_checkpoint(
    trained: Path, uninterrupted: Path
) -> None:
    """A run whose last checkpoint is fine-tuning's update 25 (what a run killed between updates
    25 and 49 leaves, as the debug preset checkpoints every 25: here a budget of 25, its final
    file deleted), re-run with the whole budget: it goes on from update 25 and ends on the
    uninterrupted run's weights. A finished run is then left alone."""
    run = _copy(trained, trained.parent / "mid_finetune")
    finetune_mmsa(run, P_MASK, "cpu", _console(), updates=25)
    ck = load_checkpoint(run / CKPT)
    assert (ck["stage"], ck["step"]) == ("finetune", 25)
    (run / FINAL).unlink()
    logged = _logged_steps(run)
    console = _console()
    finetune_mmsa(run, P_MASK, "cpu", console)
    text = " ".join(console.file.getvalue().split())
    assert "resuming the MMSA masked fine-tuning from update 25 (the decoder stage is done)" in text
    assert "MMSA decoder:" not in text and "40 updates, the whole budget" in text
    again = _logged_steps(run)[len(logged) :]
    assert again and min(again) > DECODER_UPDATES + 25
    _assert_same_weights(_weights(run), _weights(uninterrupted))
    final = load_checkpoint(run / FINAL)
    assert final["updates"] == 40 and not final["stopped_early"]
    assert final["holdout"] == load_checkpoint(uninterrupted / FINAL)["holdout"]
    stamp = (run / FINAL).stat().st_mtime_ns
    console = _console()
    assert finetune_mmsa(run, P_MASK, "cpu", console) == run / FINAL
    assert "fine-tuning already finished" in console.file.getvalue()
    assert (run / FINAL).stat().st_mtime_ns == stamp


def test_a_resume_with_other_masks_is_refused(trained: Path) -> None:
    from rmio.errors import RmioError

    run = _copy(trained, trained.parent / "other_masks")
    finetune_mmsa(run, P_MASK, "cpu", _console(), updates=5)
    (run / FINAL).unlink()
    with pytest.raises(RmioError, match=re.escape("drew its masks as p_mask 0.3, not p_mask 0.5")):
        finetune_mmsa(run, 0.5, "cpu", _console())


def test_fine_tuning_stops_early_and_records_the_updates_it_made(trained: Path) -> None:
    """With patience 5 and min_delta 0.05 the smoothed loss stalls long before the 40-update
    budget. The recorded count is the real one: the optimiser made exactly that many steps, the
    rule's counter stands at the patience, and a run given that count as its budget and no
    early stopping ends on the same weights. Stopped, then interrupted before its final file, a
    re-run makes no further update."""
    run = _copy(trained, trained.parent / "early")
    cfg = load_config(run / "config.yaml")
    cfg.world_model.finetune.patience, cfg.world_model.finetune.min_delta = 5, 0.05
    save_config(cfg, run)
    console = _console()
    finetune_mmsa(run, P_MASK, "cpu", console)
    final = load_checkpoint(run / FINAL)
    made = final["updates"]
    assert final["stopped_early"] and 5 <= made < 40, made
    summary = final["summary"]["finetune"]
    assert (summary["updates"], summary["budget"], summary["since_best"]) == (made, 40, 5)
    assert not final["summary"]["decoder"]["stopped_early"]  # the decoder stage runs its budget
    assert final["summary"]["decoder"]["updates"] == DECODER_UPDATES
    text = " ".join(console.file.getvalue().split())
    assert f"{made} updates, stopped early" in text and "of a budget of 40" in text
    optim = load_checkpoint(run / CKPT)["optim"]["state"]
    assert optim and {int(s["step"]) for s in optim.values()} == {made}
    assert max(_logged_steps(run)) == DECODER_UPDATES + made
    fixed = _copy(trained, trained.parent / "fixed_budget")
    finetune_mmsa(fixed, P_MASK, "cpu", _console(), updates=made)
    assert not load_checkpoint(fixed / FINAL)["stopped_early"]
    _assert_same_weights(_weights(run), _weights(fixed))
    # stopped, then interrupted before mmsa_wm.pt was written: re-run, it stays stopped
    (run / FINAL).unlink()
    finetune_mmsa(run, P_MASK, "cpu", _console())
    again = load_checkpoint(run / FINAL)
    assert again["stopped_early"] and again["updates"] == made
    _assert_same_weights(again["model"], _weights(fixed))


def test_a_retrained_agent_starts_over_instead_of_resuming(
    trained: Path, uninterrupted: Path
) -> None:
    """mmsa.pt retrained after an interrupted fine-tuning: its episodes are collected again and
    fine-tuning starts from the new agent, not from the old agent's checkpoint; the same mmsa.pt
    re-run resumes as before."""
    run = _copy(trained, trained.parent / "retrained")
    finetune_mmsa(run, P_MASK, "cpu", _console(), updates=25)
    (run / FINAL).unlink()
    ckpt = load_checkpoint(run / "mmsa.pt")
    weights = ckpt["learner"]["agent"]
    name = next(k for k, v in weights.items() if v.is_floating_point())
    weights[name] = weights[name] + 0.01  # a retrained agent: other bytes, other behaviour
    torch.save(ckpt, run / "mmsa.pt")
    console = _console()
    finetune_mmsa(run, P_MASK, "cpu", console)
    text = " ".join(console.file.getvalue().split())
    assert "came from an earlier mmsa.pt: collecting its episodes again" in text
    assert "came from an earlier mmsa.pt: fine-tuning from the start" in text
    assert "resuming" not in text and "MMSA decoder:" in text
    assert load_checkpoint(run / FINAL)["updates"] == 40
    assert any(not torch.equal(v, _weights(uninterrupted)[k]) for k, v in _weights(run).items())
