"""Run bookkeeping shared by every trainer: metric logs (TensorBoard, JSONL, CSV) and
checkpoints."""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path
from typing import Any

import torch

from rmio.config_schema import flatten
from rmio.errors import RmioError

CHECKPOINT_FORMAT = 1


class MetricLog:
    """Writes each logged row to TensorBoard, ``<name>.jsonl`` and ``<name>.csv`` in the run
    directory.

    Appends on resume, so a resumed run keeps one continuous history.
    """

    def __init__(self, run_dir: Path, name: str, config: dict[str, Any] | None = None) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.run_dir = Path(run_dir)
        self.jsonl = self.run_dir / f"{name}.jsonl"
        self.csv = self.run_dir / f"{name}.csv"
        self.name = name
        self.writer = SummaryWriter(str(self.run_dir / "tb"))
        if config is not None:
            self._write_config(config)

    def _write_config(self, config: dict[str, Any]) -> None:
        """The run's config in TensorBoard: whole as text, and flattened as hparams (HPARAMS tab),
        against the evaluation return, so runs can be compared by what they were trained with."""
        import yaml
        from torch.utils.tensorboard.summary import hparams

        text = yaml.safe_dump(config, sort_keys=False)
        self.writer.add_text("config", "\n".join("    " + line for line in text.splitlines()))
        flat = {
            k: v if isinstance(v, (bool, int, float, str)) else json.dumps(v)
            for k, v in flatten(config).items()
        }
        exp, ssi, sei = hparams(flat, {"eval/return_mean": float("nan")})
        writer = self.writer._get_file_writer()
        for summary in (exp, ssi, sei):
            writer.add_summary(summary)

    def log_eval(self, step: int, result: dict[str, Any]) -> None:
        """Evaluation results (return mean and std, win rate...) as ``eval/<key>`` scalars."""
        for key, value in result.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                self.writer.add_scalar(f"eval/{key}", float(value), step)
        self.writer.flush()

    def log(self, step: int, metrics: dict[str, float]) -> None:
        row = {"step": step, **{k: float(v) for k, v in metrics.items()}}
        with open(self.jsonl, "a") as fh:
            fh.write(json.dumps(row) + "\n")
        new = not self.csv.exists()
        fields = list(row)
        if not new:
            with open(self.csv) as fh:
                header = fh.readline().strip().split(",")
            if header != fields:  # a new metric appeared: rewrite with the union of columns
                with open(self.csv) as fh:
                    rows = list(csv.DictReader(fh))
                fields = header + [f for f in fields if f not in header]
                with open(self.csv, "w", newline="") as fh:
                    w = csv.DictWriter(fh, fieldnames=fields)
                    w.writeheader()
                    w.writerows(rows)
        with open(self.csv, "a", newline="") as fh:
            w = csv.DictWriter(fh, fieldnames=fields)
            if new:
                w.writeheader()
            w.writerow(row)
        for key, value in metrics.items():
            self.writer.add_scalar(f"{self.name}/{key}", value, step)

    def close(self) -> None:
        self.writer.close()


def rng_state() -> dict[str, Any]:
    """torch's global random streams (CPU, and every CUDA device when there is one)."""
    out: dict[str, Any] = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        out["cuda"] = torch.cuda.get_rng_state_all()
    return out


def restore_rng(state: dict[str, Any] | torch.Tensor) -> None:
    """Inverse of rng_state; states must be CPU byte tensors whatever map_location loaded them
    to."""
    if isinstance(state, torch.Tensor):  # older checkpoints stored the CPU state alone
        state = {"cpu": state}
    torch.set_rng_state(state["cpu"].cpu())
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])


def save_checkpoint(path: Path, payload: dict[str, Any]) -> None:
    """Atomic: write to a temporary file, then rename, so an interrupted save never corrupts the
    last one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save({"format": CHECKPOINT_FORMAT, **payload}, tmp)
    os.replace(tmp, path)


def load_checkpoint(path: Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    if not path.is_file():
        raise RmioError(f"checkpoint '{path}' does not exist")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=False)
    except Exception as exc:  # torch raises many kinds for a truncated or foreign file
        raise RmioError(
            f"checkpoint '{path}' is corrupt or not an rmio checkpoint ({type(exc).__name__}: "
            f"{str(exc).splitlines()[0][:120]}); delete it to restart from the previous one"
        ) from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        raise RmioError(
            f"checkpoint '{path}' is not an rmio checkpoint of format {CHECKPOINT_FORMAT}"
        )
    return ckpt
