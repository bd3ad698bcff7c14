"""The exact-resume state every world-model trainer checkpoints (RMIOv2's pre-training and
fine-tuning, RMIO v1's correction block, MARIE's and MMSA's masked fine-tuning): one place that
packs and restores the same keys, so that the trainers cannot drift apart and every checkpoint
already on disk still resumes."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from rmio.train.plateau import Plateau
from rmio.train.runlog import restore_rng, rng_state


@dataclass
class Resumable:
    """What a re-run needs to continue bit for bit: the trained network's weights (under
    ``net_key``: "model", or "block" for the correction block alone), the optimiser, the update
    count, the early-stopping state and every random stream (batch sampling, masks, torch's)."""

    net: torch.nn.Module
    opt: torch.optim.Optimizer
    plateau: Plateau
    rng: np.random.Generator
    mask_gen: torch.Generator
    net_key: str = "model"

    def state(self, step: int) -> dict[str, Any]:
        """The checkpoint keys at update ``step``; the trainer adds its own beside them."""
        return {
            self.net_key: self.net.state_dict(),
            "optim": self.opt.state_dict(),
            "step": step,
            **self.plateau.state(),
            "np_rng": self.rng.bit_generator.state,
            "mask_rng": self.mask_gen.get_state(),
            "torch_rng": rng_state(),
        }

    def restore(self, ckpt: dict[str, Any]) -> int:
        """Load what :meth:`state` wrote (the random streams whatever device ``ckpt`` was mapped
        to) and return the update count to continue from."""
        self.net.load_state_dict(ckpt[self.net_key])
        self.opt.load_state_dict(ckpt["optim"])
        self.plateau.restore(ckpt)
        self.rng.bit_generator.state = ckpt["np_rng"]
        self.mask_gen.set_state(ckpt["mask_rng"].cpu())
        restore_rng(ckpt["torch_rng"])
        return ckpt["step"]
