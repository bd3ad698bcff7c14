"""The claim journal: every coordinator claim of a run, written by the claimant as it claims.

A process's counters die with it, so a report built from the survivors' counters undercounts the
elections of a run with SIGKILLs (the issue that motivated this: 11 reported, 56 made). Each claim
is therefore appended, one line, to ``OUT_DIR/claims/NAME-INC.log`` before the claimant announces
it; the env host reads them all into the report (elections, epochs claimed twice, epochs with two
claimants). Across machines each machine's ``out_dir`` holds its own agents' claims.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections import Counter
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


def journal_claim(out_dir: str | Path, name: str, inc: int, epoch: int) -> None:
    """Append one claim; a journal that cannot be written costs the record, never the claim."""
    try:
        folder = Path(out_dir) / "claims"
        folder.mkdir(parents=True, exist_ok=True)
        line = f"{epoch} {name} {inc} {time.time():.6f}\n".encode()
        fd = os.open(folder / f"{name}-{inc}.log", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        try:
            os.write(fd, line)
        finally:
            os.close(fd)
    except OSError as exc:
        log.debug("claim journal: %s", exc)


def read_claims(out_dir: str | Path) -> list[tuple[int, str, int, float]]:
    """Every journaled claim of a run: (epoch, claimant, incarnation, wall time), by time."""
    claims = []
    for path in sorted((Path(out_dir) / "claims").glob("*.log")):
        with contextlib.suppress(OSError):
            for line in path.read_text().splitlines():
                parts = line.split()
                if len(parts) == 4 and parts[0].isdigit() and parts[2].isdigit():
                    claims.append((int(parts[0]), parts[1], int(parts[2]), float(parts[3])))
    return sorted(claims, key=lambda c: c[3])


def claim_summary(out_dir: str | Path) -> dict[str, Any]:
    """Elections of the whole run (dead processes included), epochs claimed more than once, and
    epochs claimed by two different agents (each must be 0)."""
    claims = read_claims(out_dir)
    per_epoch = Counter(epoch for epoch, *_ in claims)
    claimants: dict[int, set[str]] = {}
    for epoch, name, _inc, _t in claims:
        claimants.setdefault(epoch, set()).add(name)
    return {
        "elections": len(claims),
        "reused_epochs": sum(1 for c in per_epoch.values() if c > 1),
        "two_coordinator_epochs": sum(1 for names in claimants.values() if len(names) > 1),
    }
