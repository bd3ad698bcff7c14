"""Observation-loss models: which agents lose their observation at each step.

A loss model yields, once per environment step, an ``observed`` mask of shape ``(n_agents,)``
(True = the agent receives its observation). This is the paper's m_t (RMIOv2 Definition 1 and
Eq. for o~_t = diag(m_t) o_t): a lost agent's observation is replaced by zeros and the agent knows
that it was lost. Every model is seeded and reproducible: the same seed gives the same masks.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from rmio.envs.base import MultiAgentEnv, TimeStep
from rmio.errors import ConfigError
from rmio.yamlio import load_yaml

LossKind = Literal["none", "bernoulli", "burst", "blackout", "schedule"]
LOSS_MODELS: tuple[str, ...] = ("none", "bernoulli", "burst", "blackout", "schedule")
MODEL_KEYS: dict[str, tuple[str, ...]] = {
    "none": (),
    "bernoulli": ("p_loss",),
    "burst": ("p_loss", "mean_burst_length"),
    "blackout": ("p_loss", "blackout_length", "blackout_rate"),
    "schedule": ("schedule",),
}
"""The settings each model reads: what results files record and which options make sense."""


@dataclass
class LossConfig:
    """How observations are dropped; one section of every scenario YAML."""

    model: LossKind = "bernoulli"
    """none, bernoulli (independent per agent and step), burst (two-state Markov per agent),
    blackout (all agents at once for a while) or schedule (read from a file)."""
    p_loss: float = 0.0
    """bernoulli: probability that an agent loses its observation at a step. burst: the long-run
    fraction of lost steps. Must lie in [0, 1]."""
    mean_burst_length: float = 4.0
    """burst: mean number of consecutive lost steps (>= 1)."""
    blackout_length: int = 5
    """blackout: number of steps every agent is blind once a blackout starts."""
    blackout_rate: float = 0.02
    """blackout: probability that a blackout starts at a step when none is under way."""
    schedule: str | None = None
    """schedule: path of a YAML file of {steps, agents} entries (see ScheduleLoss)."""

    def validate(self, n_agents: int | None = None) -> None:
        """Refuse settings no model can run; with ``n_agents`` a schedule's file is read and checked
        too, so that a bad one is refused before any process or episode starts."""
        if self.model not in LOSS_MODELS:
            raise ConfigError(
                f"unknown loss.model '{self.model}' (known: {', '.join(LOSS_MODELS)})"
            )
        if not 0.0 <= self.p_loss <= 1.0:
            raise ConfigError(f"loss.p_loss must be in [0, 1], got {self.p_loss}")
        if self.mean_burst_length < 1.0:
            raise ConfigError(f"loss.mean_burst_length must be >= 1, got {self.mean_burst_length}")
        if self.model == "burst" and 0 < self.p_loss < 1:
            limit = self.mean_burst_length / (self.mean_burst_length + 1.0)
            if self.p_loss > limit:
                raise ConfigError(
                    f"loss.p_loss={self.p_loss} is unreachable with "
                    f"mean_burst_length={self.mean_burst_length}: bursts that short allow at most "
                    f"{limit:.3f}; lengthen the bursts to at least "
                    f"{self.p_loss / (1.0 - self.p_loss):.3g} (mean_burst_length, or "
                    "--mean-burst-length on the command line) or lower p_loss"
                )
        if self.blackout_length < 1:
            raise ConfigError(f"loss.blackout_length must be >= 1, got {self.blackout_length}")
        if not 0.0 <= self.blackout_rate <= 1.0:
            raise ConfigError(f"loss.blackout_rate must be in [0, 1], got {self.blackout_rate}")
        if self.model == "schedule" and not self.schedule:
            raise ConfigError("loss.model is 'schedule' but loss.schedule names no file")
        if self.model == "schedule" and n_agents is not None:
            assert self.schedule is not None
            ScheduleLoss.from_file(self.schedule, n_agents)


class LossModel(abc.ABC):
    """Per-episode generator of ``observed`` masks; call ``reset`` at every episode start."""

    def __init__(self, n_agents: int, seed: int | None = None) -> None:
        self.n_agents = n_agents
        self.rng = np.random.default_rng(seed)
        self.t = 0

    def reset(self, seed: int | None = None) -> None:
        """Start a new episode; a seed here restarts the random stream."""
        if seed is not None:
            self.rng = np.random.default_rng(seed)
        self.t = 0
        self._reset()

    def _reset(self) -> None:  # noqa: B027 - optional hook
        """Model-specific episode start."""

    def sample(self) -> np.ndarray:
        """The mask for the next step of the episode: (n_agents,) bool, True = observed."""
        mask = self._sample()
        self.t += 1
        return mask

    @abc.abstractmethod
    def _sample(self) -> np.ndarray: ...


class NoLoss(LossModel):
    def _sample(self) -> np.ndarray:
        return np.ones(self.n_agents, dtype=bool)


class BernoulliLoss(LossModel):
    """Each agent independently loses its observation with probability ``p`` (Definition 1)."""

    def __init__(self, n_agents: int, p: float, seed: int | None = None) -> None:
        super().__init__(n_agents, seed)
        self.p = p

    def _sample(self) -> np.ndarray:
        return self.rng.random(self.n_agents) >= self.p


class BurstLoss(LossModel):
    """Gilbert two-state Markov chain per agent: losses come in bursts of mean length L.

    Leaving the lost state has probability 1/L, so burst lengths are geometric with mean L; entering
    it has probability q = p/(1-p) * 1/L, which makes p the stationary fraction of lost steps.
    """

    def __init__(
        self, n_agents: int, p: float, mean_burst_length: float, seed: int | None = None
    ) -> None:
        super().__init__(n_agents, seed)
        self.p = p
        self.recover = 1.0 / mean_burst_length
        self.enter = 1.0 if p >= 1.0 else min(1.0, p / (1.0 - p) * self.recover)
        self.lost = np.zeros(n_agents, dtype=bool)

    def _reset(self) -> None:
        self.lost = self.rng.random(self.n_agents) < self.p  # start from the stationary law

    def _sample(self) -> np.ndarray:
        if self.t > 0:
            u = self.rng.random(self.n_agents)
            self.lost = np.where(self.lost, u >= self.recover, u < self.enter)
            if self.p >= 1.0:
                self.lost[:] = True
        return ~self.lost


class BlackoutLoss(LossModel):
    """Every agent is blind for ``length`` steps; a blackout starts with probability ``rate`` a
    step."""

    def __init__(self, n_agents: int, length: int, rate: float, seed: int | None = None) -> None:
        super().__init__(n_agents, seed)
        self.length = length
        self.rate = rate
        self.remaining = 0

    def _reset(self) -> None:
        self.remaining = 0

    def _sample(self) -> np.ndarray:
        if self.remaining == 0 and self.rng.random() < self.rate:
            self.remaining = self.length
        if self.remaining > 0:
            self.remaining -= 1
            return np.zeros(self.n_agents, dtype=bool)
        return np.ones(self.n_agents, dtype=bool)


class ScheduleLoss(LossModel):
    """Losses read from a YAML file, the same in every episode (steps count from 0 at reset).

    The file is a list of entries ``{steps: 12 | "10-19" | "40-", agents: [0, 2] | all}``; "40-"
    means from step 40 to the end of the episode. Ranges are inclusive.
    """

    def __init__(self, n_agents: int, entries: list[tuple[int, int | None, np.ndarray]]) -> None:
        super().__init__(n_agents, None)
        self.entries = entries

    @classmethod
    def from_file(cls, path: str | Path, n_agents: int) -> ScheduleLoss:
        path = Path(path)
        raw = load_yaml(path, "loss schedule")
        if not isinstance(raw, list):
            raise ConfigError(f"loss schedule '{path}' must be a list of {{steps, agents}} entries")
        entries = [cls._parse_entry(path, k, e, n_agents) for k, e in enumerate(raw)]
        return cls(n_agents, entries)

    @staticmethod
    def _parse_entry(
        path: Path, k: int, entry: Any, n_agents: int
    ) -> tuple[int, int | None, np.ndarray]:
        where = f"loss schedule '{path}' entry {k}"
        if not isinstance(entry, dict) or set(entry) != {"steps", "agents"}:
            raise ConfigError(
                f"{where}: expected a mapping with exactly the keys 'steps' and 'agents'"
            )
        steps, agents = entry["steps"], entry["agents"]
        try:
            if isinstance(steps, int):
                first, last = steps, steps
            else:
                a, sep, b = str(steps).partition("-")
                first = int(a)
                last = (int(b) if b.strip() else None) if sep else first
        except ValueError:
            raise ConfigError(f"{where}: steps must be N, 'A-B' or 'A-', got {steps!r}") from None
        if first < 0 or (last is not None and last < first):
            raise ConfigError(f"{where}: bad step range {steps!r}")
        lost = np.zeros(n_agents, dtype=bool)
        if agents == "all":
            lost[:] = True
        elif isinstance(agents, list) and all(
            isinstance(a, int) and 0 <= a < n_agents for a in agents
        ):
            lost[agents] = True
        else:
            raise ConfigError(
                f"{where}: agents must be 'all' or a list of agent indices in [0, {n_agents})"
            )
        return first, last, lost

    def _sample(self) -> np.ndarray:
        lost = np.zeros(self.n_agents, dtype=bool)
        for first, last, agents in self.entries:
            if first <= self.t and (last is None or self.t <= last):
                lost |= agents
        return ~lost


def make_loss_model(cfg: LossConfig, n_agents: int, seed: int | None = None) -> LossModel:
    cfg.validate()
    if cfg.model == "none" or (cfg.model in ("bernoulli", "burst") and cfg.p_loss == 0.0):
        return NoLoss(n_agents, seed)
    if cfg.model == "bernoulli":
        return BernoulliLoss(n_agents, cfg.p_loss, seed)
    if cfg.model == "burst":
        return BurstLoss(n_agents, cfg.p_loss, cfg.mean_burst_length, seed)
    if cfg.model == "blackout":
        return BlackoutLoss(n_agents, cfg.blackout_length, cfg.blackout_rate, seed)
    if cfg.model == "schedule":
        assert cfg.schedule is not None
        return ScheduleLoss.from_file(cfg.schedule, n_agents)
    raise ConfigError(
        f"unknown loss.model '{cfg.model}' (known: none, bernoulli, burst, blackout, schedule)"
    )


class LossyEnv(MultiAgentEnv):
    """Applies a loss model to an environment: lost observations become zeros.

    The returned ``TimeStep`` carries ``observed`` (the mask) and ``true_obs`` (what the agents
    would have seen), so training can use the truth as a reconstruction target and evaluation can
    score reconstructions; deployed agents only ever get ``obs`` and ``observed``.
    """

    def __init__(self, env: MultiAgentEnv, loss: LossModel) -> None:
        self.env = env
        self.loss = loss
        self.spec = env.spec

    def _apply(self, ts: TimeStep) -> TimeStep:
        observed = self.loss.sample()
        ts.true_obs = ts.obs
        ts.obs = ts.obs * observed[:, None].astype(ts.obs.dtype)
        ts.observed = observed
        return ts

    def reset(self, seed: int | None = None) -> TimeStep:
        self.loss.reset(seed=None if seed is None else seed + 7_919)
        return self._apply(self.env.reset(seed=seed))

    def step(self, actions: np.ndarray) -> TimeStep:
        return self._apply(self.env.step(actions))

    def close(self) -> None:
        self.env.close()


# -- one meaning of a loss model for every command (rmio eval robustness, swarm, demo) -----------

OPTION_KEYS = ("mean_burst_length", "blackout_length", "blackout_rate")
"""Settings a command line gives as options (--mean-burst-length, --blackout-length,
--blackout-rate) next to the model's name."""


def blackout_rate_for(lost_fraction: float, length: int) -> float:
    """The start rate r at which blackouts of ``length`` steps leave ``lost_fraction`` of the steps
    blind in the long run: a cycle is (1 - r)/r observed steps on average, then ``length`` blind
    ones, so f = L r / (1 - r + L r), hence r = f / (L (1 - f) + f)."""
    if lost_fraction <= 0.0:
        return 0.0
    return lost_fraction / (length * (1.0 - lost_fraction) + lost_fraction)


def describe(cfg: LossConfig) -> dict[str, Any]:
    """The model and only the settings it reads (what a results file records)."""
    return {"model": cfg.model, **{k: getattr(cfg, k) for k in MODEL_KEYS.get(cfg.model, ())}}


def at_lost_fraction(cfg: LossConfig, p: float) -> LossConfig:
    """``cfg`` at the long-run lost fraction ``p`` (a point of a robustness sweep): bernoulli and
    burst take it as their p_loss, blackout derives its start rate from it (blackout_rate_for);
    no loss and a schedule have no rate to sweep."""
    if cfg.model in ("none", "schedule"):
        raise ConfigError(
            f"a {cfg.model} loss model has no lost fraction to sweep over p_loss: give bernoulli, "
            "burst or blackout (a schedule runs with `rmio swarm launch --loss-model FILE`)"
        )
    out = LossConfig(**{**cfg.__dict__, "p_loss": p})
    if cfg.model == "blackout":
        out.blackout_rate = blackout_rate_for(p, cfg.blackout_length)
    return out


def _read_loss_file(path: Path) -> dict[str, Any]:
    """A YAML mapping of LossConfig keys, or a list of schedule entries (a schedule model)."""
    raw = load_yaml(path, "loss model")
    if isinstance(raw, list):
        return {"model": "schedule", "schedule": str(path.resolve())}
    if not isinstance(raw, dict):
        raise ConfigError(
            f"loss model '{path}' must be a mapping of loss settings or a list of schedule entries"
        )
    unknown = sorted(set(raw) - set(LossConfig.__dataclass_fields__))
    if unknown:
        raise ConfigError(
            f"loss model '{path}': unknown key(s) {', '.join(unknown)} (known: "
            f"{', '.join(LossConfig.__dataclass_fields__)})"
        )
    if isinstance(raw.get("schedule"), str):  # relative to the file, wherever the command runs
        raw["schedule"] = str((path.parent / raw["schedule"]).resolve())
    return raw


def resolve_loss(
    model: str | Path | None = None,
    *,
    p_loss: float | None = None,
    n_agents: int | None = None,
    swept: bool = False,
    **options: Any,
) -> LossConfig:
    """The loss model a command line names: a model (bernoulli, burst, blackout; default bernoulli)
    with ``p_loss`` (the long-run lost fraction; for blackout it sets the start rate unless
    blackout_rate is given) and the options of OPTION_KEYS, or a YAML file (a mapping of loss
    settings, or a list of schedule entries). An option the model does not read, or a setting given
    both in the file and as an option, is refused. Validated, the schedule's file included when
    ``n_agents`` is known. ``swept``: for a sweep over the lost fraction, which sets p_loss (and a
    blackout's start rate) itself, so neither may be given."""
    given = {k: v for k, v in options.items() if v is not None}
    unknown = sorted(set(given) - set(OPTION_KEYS))
    if unknown:
        raise ConfigError(f"unknown loss option(s): {', '.join(unknown)}")
    if p_loss is not None:
        given["p_loss"] = p_loss
    name = "bernoulli" if model is None else str(model)
    if name in LOSS_MODELS and name != "schedule":
        data: dict[str, Any] = {"model": name}
        source = f"loss model {name}"
    elif Path(name).is_file():
        data = _read_loss_file(Path(name))
        source = f"loss model '{name}'"
        both = sorted(set(data) & set(given))
        if both:
            raise ConfigError(
                f"{source} already sets {', '.join(both)}: give each setting once, in the file or "
                "as an option"
            )
    else:
        raise ConfigError(
            f"--loss-model wants bernoulli, burst, blackout or a YAML file (a mapping of loss "
            f"settings or a list of schedule entries), got '{name}'"
        )
    kind = data.get("model", "bernoulli")
    reads = MODEL_KEYS.get(kind, ())
    stray = sorted(k for k in given if k not in reads)
    if stray:
        flags = ", ".join("--" + k.replace("_", "-") for k in stray)
        if kind == "schedule":
            raise ConfigError(
                f"{source} is a schedule, which sets every loss: give {flags} or "
                "a schedule, not both"
            )
        raise ConfigError(
            f"{flags}: {kind} loss does not read it (it reads {', '.join(reads) or 'nothing'}; "
            "--loss-model names the model)"
        )
    merged = {**data, **given}
    fixed = sorted({"p_loss", "blackout_rate"} & set(merged)) if swept else []
    if fixed:
        raise ConfigError(
            f"{source}: a sweep over p_loss sets {' and '.join(fixed)} itself (the lost fraction "
            "at each point; a blackout's start rate follows from it): leave "
            f"{'them' if len(fixed) > 1 else 'it'} out"
        )
    if kind == "blackout" and {"p_loss", "blackout_rate"} <= set(merged):
        raise ConfigError(
            "blackout loss takes p_loss (the lost fraction, which sets the start rate) or "
            "blackout_rate, not both"
        )
    try:
        cfg = LossConfig(**merged)
    except TypeError as exc:
        raise ConfigError(f"{source}: {exc}") from None
    if kind == "blackout" and "p_loss" in merged:
        cfg = at_lost_fraction(cfg, cfg.p_loss)
    elif kind == "blackout":  # p_loss records the lost fraction the rate gives
        r, length = cfg.blackout_rate, cfg.blackout_length
        cfg.p_loss = length * r / (1.0 - r + length * r) if r > 0 else 0.0
    cfg.validate(n_agents)
    return cfg
