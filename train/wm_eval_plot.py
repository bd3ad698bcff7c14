"""The reconstruction evaluation's PNG (`rmio eval reconstruction`): L_rec of lost agents (and
the actor's disagreement on them) against test-time p_mask, one line per strategy."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rmio.train.policy_metrics import POLICY_METRICS


def plot_reconstruction(results: dict[str, Any], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    first = next(iter(results["strategies"].values()))
    panels = [("lrec_masked", "L_rec on lost agents (SmoothL1, normalised)")] + [
        (k, f"{k} of the actor on lost agents") for k in POLICY_METRICS if k in first
    ]
    fig, axes = plt.subplots(1, len(panels), figsize=(6.5 * len(panels), 4), squeeze=False)
    for ax, (key, label) in zip(axes[0], panels, strict=True):
        for name, row in results["strategies"].items():
            pts = [
                (p, v)
                for p, v in zip(results["p_masks"], row.get(key, []), strict=False)
                if v is not None
            ]
            if pts:
                ax.plot(*zip(*pts, strict=True), marker="o", label=name)
        ax.set_xlabel("test-time p_mask")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    axes[0][0].set_title(f"{title}: reconstruction of lost observations")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
