"""Scenario configs: YAML files validated against typed dataclasses.

A config file has one mapping per section (``env``, ``loss``, ``run``, ...). The ``debug`` preset
(tiny CI-sized runs, ``--debug``) is defined once per task family, in
``configs/debug/<family>.yaml`` with the same shape, and merged over the config; a config may add an
optional ``debug`` mapping of its own exceptions, merged last. Single keys can be overridden from
the command line (``--set loss.p_loss=0.3``). Unknown keys and wrong types are errors that name the
file and the dotted key (rmio/config_schema.py builds the typed sections). The resolved config is
saved next to a run's outputs together with a hash, so any result can be traced back to exactly
what produced it.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import re
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import yaml

from rmio.config_schema import build_dataclass, flatten, refuse_retired
from rmio.envs.loss import LossConfig
from rmio.envs.registry import FAMILIES, EnvConfig
from rmio.errors import ConfigError
from rmio.train.marie_config import MarieConfig, validate_marie
from rmio.train.mmsa_config import MMSAConfig, validate_mmsa
from rmio.train.ppo_config import (
    PolicySection,
    apply_recipe,
    validate_imagination,
    validate_ppo,
)
from rmio.train.qmix_config import QMIXConfig, validate_qmix
from rmio.train.wm_config import WorldModelSection
from rmio.yamlio import load_yaml

PRESETS = ("debug",)

# Named method variants that apply to any scenario (paper Table 1 ablations, and GAWM, which is the
# same architecture without masked fine-tuning and with fixed-window reward smoothing), and the
# baselines of the paper's Fig. 8: MAMBA (no observation fusion, three attention layers of action
# fusion, no reward smoothing, a lost agent's latent from the prior) and RMIO v1 (the same prior
# prediction, then a correction block trained on the frozen world model: rmio.train.correction).
# Every variant deploys rmio's observation-based actor; MAMBA's original actor acts on latents.
_MAMBA_MODEL = {"obs_fusion": False, "action_fusion_layers": 3, "lost_latent": "prior"}
ALGORITHMS: dict[str, dict[str, Any]] = {
    "rmiov2": {},
    "rmiov2-no-obs-fusion": {"world_model": {"model": {"obs_fusion": False}}},
    "rmiov2-no-action-fusion": {"world_model": {"model": {"action_fusion": False}}},
    "rmiov2-no-fusion": {"world_model": {"model": {"obs_fusion": False, "action_fusion": False}}},
    "gawm": {"world_model": {"smoothing": {"mode": "fixed"}, "finetune": {"p_mask": 0.0}}},
    "mamba": {"world_model": {"model": _MAMBA_MODEL, "smoothing": {"mode": "off"}}},
    "rmio-v1": {
        "world_model": {
            "model": {**_MAMBA_MODEL, "correction": True},
            "smoothing": {"mode": "fixed"},
        }
    },
    # MARIE's world model (train/marie_*.py; the size preset is marie.preset).
    "marie": {"marie": {"enabled": True}},
}
_EXPONENT_NUMBER = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)[eE][+-]?\d+")

_RECORDED_HEADER = "# resolved rmio config"


@dataclass
class RunConfig:
    """Settings shared by every command that runs something."""

    seed: int = 0
    """Base seed; every random stream of a run derives from it."""
    num_envs: int = 4
    """Environment copies stepped together (one vmapped call for SMAX)."""
    vector_mode: Literal["auto", "sync", "subproc"] = "auto"
    """How MuJoCo/LBF copies are stepped: in this process (sync), one subprocess each (subproc), or
    auto: subprocesses only on machines with more than 2 cores (on 2 cores the pipes cost more)."""
    collect_steps: int = 10_000
    """Real environment steps that `rmio collect` gathers."""
    eval_episodes: int = 5
    """Episodes per evaluation."""
    runs_dir: str = "runs"
    """Where run directories are created (scenario/algo/seed/time below it)."""
    data_policy: str | None = None
    """A trained policy.pt whose (sampling) actor collects `rmio train world-model`'s data instead
    of a random policy, so the world model learns the states that policy visits at deployment."""


@dataclass
class Config:
    env: EnvConfig = field(default_factory=EnvConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    run: RunConfig = field(default_factory=RunConfig)
    world_model: WorldModelSection = field(default_factory=WorldModelSection)
    policy: PolicySection = field(default_factory=PolicySection)
    qmix: QMIXConfig = field(default_factory=QMIXConfig)
    """`rmio train qmix` (train/qmix_config.py)."""
    mmsa: MMSAConfig = field(default_factory=MMSAConfig)
    """`rmio train mmsa`: what MMSA adds to the qmix: section (train/mmsa_config.py)."""
    marie: MarieConfig = field(default_factory=MarieConfig)
    """MARIE's world model, `--algo marie` (train/marie_config.py)."""

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def digest(self) -> str:
        """Short stable hash of the resolved config (written into run directories and bundles)."""
        blob = json.dumps(self.to_dict(), sort_keys=True, default=str).encode()
        return hashlib.sha256(blob).hexdigest()[:16]

    def changes_from(self, other: Config) -> list[tuple[str, Any, Any]]:
        """The dotted keys whose values differ: (key, other's value, this one's)."""
        mine, theirs = flatten(self.to_dict()), flatten(other.to_dict())
        return [
            (k, theirs.get(k), mine.get(k))
            for k in sorted(mine.keys() | theirs.keys())
            if mine.get(k) != theirs.get(k)
        ]


# --------------------------------------------------------------------------------------------
# Locating and reading files


def builtin_config_names() -> list[str]:
    return sorted(
        p.name[:-5] for p in resources.files("rmio.configs").iterdir() if p.name.endswith(".yaml")
    )


def resolve_config_path(name_or_path: str | Path) -> Path:
    """A path to a YAML file, or the name of a built-in config (``halfcheetah_6x1``)."""
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml") or path.exists():
        if not path.is_file():
            if path.name == "config.yaml" and path.parent.is_dir():  # a run directory was meant
                raise ConfigError(
                    f"'{path}' does not exist: '{path.parent}' is not a run directory"
                )
            raise ConfigError(f"config file '{path}' does not exist")
        return path
    candidate = resources.files("rmio.configs") / f"{name_or_path}.yaml"
    if candidate.is_file():
        return Path(str(candidate))
    known = ", ".join(builtin_config_names())
    raise ConfigError(
        f"unknown scenario config '{name_or_path}': give a YAML path or one of: {known}"
    )


def read_yaml(path: Path) -> dict[str, Any]:
    raw = load_yaml(path, "config file")
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ConfigError(
            f"{path}: the top level must be a mapping of sections, got {type(raw).__name__}"
        )
    return raw


# --------------------------------------------------------------------------------------------
# Merging and overrides


def deep_merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict) and key != "options":
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def apply_override(raw: dict[str, Any], assignment: str, source: str = "--set") -> None:
    """``section.key=value``; the value is parsed as YAML, so 3e-4, true and [1, 2] keep their
    types."""
    key, sep, text = assignment.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"{source}: '{assignment}' is not of the form section.key=value")
    try:
        value = yaml.safe_load(text) if text.strip() else None
    except yaml.YAMLError:
        value = text
    if isinstance(value, str) and _EXPONENT_NUMBER.fullmatch(value):
        value = float(value)  # YAML 1.1 reads 3e-4 as a string; users mean a number
    parts = key.strip().split(".")
    node = raw
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"{source}: '{key}' goes through '{part}', which is not a section")
    node[parts[-1]] = value


def _validate_masks(fm: Any, src: str) -> None:
    """The fine-tuning and evaluation mask settings (train/masks.py)."""
    known = ("bernoulli", "burst", "blackout")
    ft, ev = fm.finetune, fm.eval
    for key, names in (
        ("finetune.mask_models", ft.mask_models),
        ("eval.loss_model", [ev.loss_model]),
    ):
        bad = [m for m in names if m not in known]
        if bad or not names:
            raise ConfigError(
                f"{src}: world_model.{key} must name loss models among {', '.join(known)}, "
                f"got {names}"
            )
    r = ft.p_mask_range
    if r is not None and (len(r) != 2 or not 0.0 <= r[0] <= r[1] <= 1.0):
        raise ConfigError(
            f"{src}: world_model.finetune.p_mask_range must be [low, high] with "
            f"0 <= low <= high <= 1, got {r}"
        )
    if ft.policy_weight < 0:
        raise ConfigError(
            f"{src}: world_model.finetune.policy_weight must be >= 0, got {ft.policy_weight}"
        )
    for key, v in (("finetune", ft.mean_burst_length), ("eval", ev.mean_burst_length)):
        if v < 1.0:
            raise ConfigError(f"{src}: world_model.{key}.mean_burst_length must be >= 1, got {v}")


def validate(cfg: Config, src: str) -> None:
    """Checks that need more than types: ranges and names."""
    if cfg.env.family not in FAMILIES:
        raise ConfigError(
            f"{src}: unknown env.family '{cfg.env.family}' (known: {', '.join(FAMILIES)})"
        )
    try:
        cfg.loss.validate()
    except ConfigError as exc:
        raise ConfigError(f"{src}: {exc}") from None
    for key, value, low in (
        ("run.num_envs", cfg.run.num_envs, 1),
        ("run.eval_episodes", cfg.run.eval_episodes, 1),
        ("run.collect_steps", cfg.run.collect_steps, 1),
        ("env.agent_obsk", cfg.env.agent_obsk, 0),
    ):
        if value < low:
            raise ConfigError(f"{src}: {key} must be >= {low}, got {value}")
    if not 0 <= cfg.run.seed < 2**31:  # derived streams add offsets; numpy takes < 2**32
        raise ConfigError(f"{src}: run.seed must be in [0, 2**31), got {cfg.run.seed}")
    fm = cfg.world_model
    if not 0.0 <= fm.finetune.p_mask <= 1.0:
        raise ConfigError(
            f"{src}: world_model.finetune.p_mask must be in [0, 1], got {fm.finetune.p_mask}"
        )
    _validate_masks(fm, src)
    if fm.model.action_fusion_layers is not None and fm.model.action_fusion_layers < 1:
        raise ConfigError(
            f"{src}: world_model.model.action_fusion_layers must be >= 1, got "
            f"{fm.model.action_fusion_layers}"
        )
    if fm.model.fusion_dim % fm.model.fusion_heads:
        raise ConfigError(
            f"{src}: world_model.model.fusion_dim ({fm.model.fusion_dim}) must be divisible by "
            f"fusion_heads ({fm.model.fusion_heads})"
        )
    for key, value in (
        ("world_model.train.updates", fm.train.updates),
        ("world_model.train.batch_size", fm.train.batch_size),
        ("world_model.train.seq_len", fm.train.seq_len),
        ("world_model.history_window", fm.history_window),
        ("world_model.eval.window_stride", fm.eval.window_stride),
    ):
        if value < 1:
            raise ConfigError(f"{src}: {key} must be >= 1, got {value}")
    validate_imagination(cfg.policy.imagination, src)
    validate_ppo(cfg.policy.ppo, cfg.policy.mappo, src)
    if cfg.env.episode_limit is not None and cfg.env.episode_limit < 1:
        raise ConfigError(f"{src}: env.episode_limit must be >= 1, got {cfg.env.episode_limit}")
    validate_qmix(cfg.qmix, src)
    validate_mmsa(cfg.mmsa, src)
    validate_marie(cfg.marie, fm.history_window, src)


def family_preset_path(preset: str, family: str) -> Path | None:
    """``configs/<preset>/<family>.yaml``: the preset every config of that task family shares, if
    any."""
    candidate = resources.files("rmio.configs") / preset / f"{family}.yaml"
    return Path(str(candidate)) if candidate.is_file() else None


def _preset_layers(preset: str, raw: dict[str, Any], own: Any, path: Path) -> list[dict[str, Any]]:
    """What ``preset`` merges over a config, in order: its task family's preset, then the config's
    own ``<preset>:`` block (the scenario's exceptions, if it has any)."""
    if preset not in PRESETS:
        raise ConfigError(f"unknown preset '{preset}' (known: {', '.join(PRESETS)})")
    env = raw.get("env")
    family = env.get("family", EnvConfig.family) if isinstance(env, dict) else EnvConfig.family
    if not isinstance(family, str) or family not in FAMILIES:
        return []  # validation names the bad env.family
    layers = []
    shared = family_preset_path(preset, family)
    if shared is not None:
        body = read_yaml(shared)
        refuse_retired(body, str(shared))
        build_dataclass(
            Config, body, str(shared)
        )  # unknown keys and wrong types name the preset's file
        layers.append(body)
    if own is not None:
        if not isinstance(own, dict):
            raise ConfigError(f"{path}: preset '{preset}' must be a mapping of sections")
        layers.append(own)
    if not layers:
        raise ConfigError(
            f"{path}: has no '{preset}' preset, and task family '{family}' has none either"
        )
    return layers


def preset_values(name_or_path: str | Path, preset: str) -> dict[str, Any]:
    """The dotted keys (``section.key``) that ``preset`` sets on a config, with their values, so
    that a caller which also has overrides (an ablation's ``set:`` lines) can let the preset win
    where it must."""
    path = resolve_config_path(name_or_path)
    raw = read_yaml(path)
    own = {name: raw.pop(name) for name in PRESETS if name in raw}
    values: dict[str, Any] = {}

    def walk(node: dict[str, Any], prefix: str) -> None:
        for key, value in node.items():
            if isinstance(value, dict) and value:
                walk(value, f"{prefix}{key}.")
            else:
                values[f"{prefix}{key}"] = value

    for layer in _preset_layers(preset, raw, own.get(preset), path):
        walk(layer, "")
    return values


def _is_recorded(path: Path) -> bool:
    """A resolved config that :func:`save_config` wrote into a run directory (not one a user
    edits)."""
    with path.open(encoding="utf-8", errors="replace") as f:
        return f.readline().startswith(_RECORDED_HEADER)


def load_config(
    name_or_path: str | Path,
    *,
    preset: str | None = None,
    overrides: tuple[str, ...] | list[str] = (),
    schema: type = Config,
    algo: str | None = None,
) -> Config:
    """Read, merge the preset, the algorithm variant and the overrides (in that order), validate.

    Every failure is one clear ConfigError.
    """
    path = resolve_config_path(name_or_path)
    raw = read_yaml(path)
    own = {name: raw.pop(name) for name in PRESETS if name in raw}
    if not _is_recorded(path):
        for section in (raw, *(v for v in own.values() if isinstance(v, dict))):
            refuse_retired(section, str(path))
    if preset is not None:
        for layer in _preset_layers(preset, raw, own.get(preset), path):
            raw = deep_merge(raw, layer)
    if algo is not None:
        if algo not in ALGORITHMS:
            raise ConfigError(f"unknown algorithm '{algo}' (known: {', '.join(ALGORITHMS)})")
        raw = deep_merge(raw, ALGORITHMS[algo])
    given: dict[str, Any] = {}
    for assignment in overrides:
        apply_override(raw, assignment)
        apply_override(given, assignment)
    refuse_retired(given, "--set")
    src = (
        str(path)
        + (f" (preset {preset})" if preset else "")
        + (f" (algo {algo})" if algo else "")
        + (" with --set overrides" if overrides else "")
    )
    if schema is Config:
        raw = apply_recipe(raw, src)
    cfg = build_dataclass(schema, raw, src)
    validate(cfg, src)
    return cfg


def algorithm_of(config: dict[str, Any]) -> str:
    """The ALGORITHMS variant a resolved config (``Config.to_dict()``) was made with: the most
    specific preset whose every key it holds, so manifests and model cards can name it."""

    def holds(node: Any, delta: Any) -> bool:
        if isinstance(delta, dict):
            return isinstance(node, dict) and all(
                k in node and holds(node[k], v) for k, v in delta.items()
            )
        return node == delta

    def size(delta: Any) -> int:
        return sum(size(v) for v in delta.values()) if isinstance(delta, dict) else 1

    matches = [name for name, delta in ALGORITHMS.items() if holds(config, delta)]
    return max(matches, key=lambda name: size(ALGORITHMS[name]), default="rmiov2")


def save_config(cfg: Config, run_dir: str | Path) -> Path:
    """Write ``config.yaml`` (resolved, with its hash) into a run directory."""
    out = Path(run_dir) / "config.yaml"
    out.parent.mkdir(parents=True, exist_ok=True)
    body = yaml.safe_dump(cfg.to_dict(), sort_keys=False)
    out.write_text(f"{_RECORDED_HEADER}, hash {cfg.digest()}\n{body}")
    return out
