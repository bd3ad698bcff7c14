"""An ablation sweep's YAML (`rmio ablate SWEEP.yaml`, ``configs/ablations/``): its schema and the
checks that refuse a bad sweep before any training starts. Torch-free, so a sweep can be read and
checked without the trainers; train/ablation.py runs it."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from rmio.config import ALGORITHMS
from rmio.config_schema import build_dataclass
from rmio.defaults import DEFAULT_P_LOSS
from rmio.errors import ConfigError, RmioError
from rmio.models import find_bundle
from rmio.yamlio import load_yaml


@dataclass
class SweepRobustness:
    """The robustness sweep each variant's bundle gets (world-model strategy)."""

    p_loss: list[float] = field(default_factory=lambda: list(DEFAULT_P_LOSS))
    seeds: int = 3
    episodes: int = 5
    steps: int | None = None
    """Episode length (default: the environment's)."""
    loss_models: list[str] = field(default_factory=lambda: ["bernoulli"])
    """Loss models each bundle is swept under (bernoulli, burst, blackout); the first one gives
    the table's curve, every one an AUC column."""
    mean_burst_length: float = 4.0
    """Mean run of lost steps of the burst sweeps."""
    baselines: bool = False
    """Also rows for hold-last and zero-fill (the policy without a world model)."""


@dataclass
class PaperNumbers:
    """The paper's own numbers for the table a sweep reproduces, printed beside rmio's (they enter
    no computation)."""

    source: str
    """Where they come from: the paper's table, task and budget."""
    auc: list[float | None] = field(default_factory=list)
    """AUC per variant, in the order of ``variants`` (null where the paper has none)."""
    lrec: list[float | None] = field(default_factory=list)
    """L_rec per variant, in the order of ``variants``."""


@dataclass
class AblationConfig:
    """One table: a scenario, the thing varied, its values, and the policy that plays the robustness
    sweep."""

    name: str
    scenario: str
    """A built-in config name or a YAML path."""
    vary: Literal["algo", "p_mask", "recipe"]
    variants: list[Any]
    """Method names (vary: algo), fine-tuning mask rates (vary: p_mask) or fine-tuning recipes
    (vary: recipe: ``{name: ..., finetune: {world_model.finetune keys}}`` mappings, all on one
    pre-trained model)."""
    policy: str
    """The actor every variant is deployed with: a policy.pt or a bundle directory (its
    actor.onnx)."""
    p_mask: float = 0.5
    """Fine-tuning mask rate of the algo variants; also the test-time p_mask at which L_rec is
    reported."""
    finetune_updates: int | None = None
    """Upper bound on fine-tuning updates (default: the scenario config's)."""
    set: list[str] = field(default_factory=list)
    """Config overrides (key=value) applied to every variant."""
    robustness: SweepRobustness = field(default_factory=SweepRobustness)
    seeds: list[int] = field(default_factory=lambda: [0])
    """Training seeds (``run.seed``): every variant is trained once per seed, and the table reports
    the mean and spread over them. Each seed's runs live in ``OUT/seed<S>/``."""
    paper: PaperNumbers | None = None
    """The paper's numbers for these variants, shown in the table beside the measured ones."""


def resolve_sweep(name_or_path: str | Path) -> Path:
    """A YAML path, or the name of a sweep shipped in ``configs/ablations``."""
    path = Path(name_or_path)
    if path.is_file():
        return path
    from importlib import resources

    folder = Path(str(resources.files("rmio.configs"))) / "ablations"
    shipped = folder / f"{path.stem}.yaml"
    if shipped.is_file():
        return shipped
    names = ", ".join(sorted(p.stem for p in folder.glob("*.yaml")))
    raise ConfigError(
        f"ablation sweep '{name_or_path}' is neither a file nor one of the shipped sweeps ({names})"
    )


def load_ablation(path: Path) -> AblationConfig:
    """Read and check a sweep (a path or a shipped name): every error is one ConfigError now, not
    after hours of training."""
    path = resolve_sweep(path)
    cfg = build_dataclass(AblationConfig, load_yaml(path, "ablation sweep"), str(path))
    if cfg.vary == "algo":
        unknown = [v for v in cfg.variants if v not in ALGORITHMS]
        if unknown:
            raise ConfigError(
                f"{path}: unknown method(s) {unknown} (known: {', '.join(ALGORITHMS)})"
            )
    elif cfg.vary == "recipe":
        _check_recipes(cfg.variants, path)
    elif not all(isinstance(v, int | float) and 0.0 <= v <= 1.0 for v in cfg.variants):
        raise ConfigError(f"{path}: p_mask variants must be numbers in [0, 1], got {cfg.variants}")
    known = ("bernoulli", "burst", "blackout")
    if not cfg.robustness.loss_models or not set(cfg.robustness.loss_models) <= set(known):
        raise ConfigError(
            f"{path}: robustness.loss_models must name loss models among {', '.join(known)}, got "
            f"{cfg.robustness.loss_models}"
        )
    if not cfg.variants:
        raise ConfigError(f"{path}: no variants")
    if (
        not cfg.seeds
        or len(set(cfg.seeds)) != len(cfg.seeds)
        or not all(type(s) is int and s >= 0 for s in cfg.seeds)
    ):
        raise ConfigError(f"{path}: seeds must be distinct non-negative integers, got {cfg.seeds}")
    paper = cfg.paper
    if paper and any(len(v) not in (0, len(cfg.variants)) for v in (paper.auc, paper.lrec)):
        raise ConfigError(
            f"{path}: paper.auc and paper.lrec need one entry per variant ({len(cfg.variants)}), "
            f"got {len(paper.auc)} and {len(paper.lrec)}"
        )
    policy_path(cfg, path)  # refused now, not after hours of training
    return cfg


def _check_recipes(variants: list[Any], path: Path) -> None:
    from rmio.train.wm_config import FinetuneConfig

    fields = set(FinetuneConfig.__dataclass_fields__)
    names = [v.get("name") if isinstance(v, dict) else None for v in variants]
    if not all(isinstance(n, str) and n for n in names) or len(set(names)) != len(names):
        raise ConfigError(f"{path}: recipe variants need distinct names, got {variants}")
    for v in variants:
        extra = set(v) - {"name", "finetune"}
        unknown = set(v.get("finetune") or {}) - fields
        if extra or unknown:
            raise ConfigError(
                f"{path}: recipe '{v['name']}': unknown key(s) {sorted(extra | unknown)} (a recipe "
                f"has name and finetune, whose keys are world_model.finetune's: "
                f"{', '.join(sorted(fields))})"
            )


def policy_path(ab: AblationConfig, sweep: Path | str = "the sweep") -> Path:
    """The sweep's policy: a policy.pt or bundle directory, or a shipped bundle's name."""
    path = Path(ab.policy)
    if path.exists():
        return path
    try:
        return find_bundle(ab.policy)
    except RmioError:
        raise ConfigError(
            f"{sweep}: policy '{ab.policy}' is neither a policy.pt, a bundle directory, nor a "
            "shipped bundle (`rmio models` lists them)"
        ) from None
