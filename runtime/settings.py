"""Swarm run settings and the roster: what every process of one run must agree on, as one JSON/YAML
file."""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from rmio.envs.loss import LossConfig
from rmio.envs.registry import EnvConfig
from rmio.errors import ConfigError
from rmio.runtime.bundle import Manifest
from rmio.runtime.tcp_rto import rto_warning
from rmio.runtime.vocabulary import LEGACY, STRATEGIES
from rmio.yamlio import load_yaml

WM_MODES = ("window", "incremental")
PLACEMENTS = ("on-agent", "node")
TRANSPORTS = ("ipc", "tcp", "udp")

log = logging.getLogger(__name__)


@dataclass
class SwarmSettings:
    bundle: str
    n_agents: int
    env: dict[str, Any] = field(default_factory=dict)
    """EnvConfig fields (family, scenario, episode_limit, agent_obsk, options)."""
    loss: dict[str, Any] = field(default_factory=dict)
    """LossConfig fields."""
    episodes: int = 3
    seed: int = 0
    recon: str = "world-model"
    """world-model: the world model reconstructs (the product); zero-fill / hold-last: blind agents
    fill in locally, no communication (runtime.vocabulary.STRATEGIES)."""
    wm_mode: str = "window"
    """window: replay the l-step window from zeros every round (Algorithm 2 line 31); incremental:
    keep the latent state over consecutive rounds of one coordinator while nothing was missed."""
    world_model: str = "on-agent"
    transport: str = "ipc"
    step_deadline_ms: float = 100.0
    """The env host applies the safe default action for agents that have not acted by then."""
    recon_deadline_ms: float | None = None
    """A blind agent acts on hold-last if no reconstruction arrived by then (default 0.8 x step
    deadline)."""
    gather_deadline_ms: float | None = None
    """The coordinator reconstructs with what it has by then (default 0.4 x step deadline)."""
    wm_deadline_ms: float | None = None
    """The coordinator falls back to its own world model if the node has not answered (default 0.25
    x)."""
    rate_hz: float = 0.0
    """Env steps per second; 0 steps as soon as every agent acted."""
    full_resync: bool = False
    """Ablation: the coordinator asks for whole windows every round (what incremental sync
    saves)."""
    stream_steps: int | None = None
    """After a round, the agents that observe stream their newest step to the coordinator right
    after acting (no extra wake-up) for this many env steps, so the rounds that follow need no
    GATHER round trip. Default: the bundle's history window; 0: pull only (a GATHER every round)."""
    resend_ms: float | None = None
    """Within a step, what was not answered by then is sent again (a STEP to an agent that has not
    acted, a LOST whose RECON has not come, a GATHER whose HISTORY has not come), every this many
    ms until the deadline; receivers de-duplicate by step. Default: a quarter of the step deadline
    over udp, where a datagram may be lost, and never over ZeroMQ, which loses nothing on a live
    connection (0 turns it off)."""
    late_after: int = 3
    """An agent that missed this many consecutive step deadlines while reachable is no longer
    waited for (it still gets its STEP and its actions still count) until it acts in time again."""
    heartbeat_ms: float = 100.0
    """Explicit heartbeats only to peers not otherwise written to; deaths of processes are noticed
    at once from dropped connections, so this is the backstop for hosts that vanish silently."""
    liveness: int = 3
    kill_agents: list[list[int]] = field(default_factory=list)
    """[[agent, seq], ...]: the agent SIGKILLs itself on receiving global step seq (fault
    injection)."""
    kill_coordinator_at: int | None = None
    """The coordinator of the first round at or after this global step SIGKILLs itself mid-round."""
    rejoin_after_s: float = 0.5
    """The launcher restarts a killed agent after this long (negative: never)."""
    record: bool = False
    """Write per-process step records (for tests and debugging)."""
    baselines: bool = True
    """After the run the env host evaluates the bundle in-process with wm, zero-fill and
    hold-last."""
    out_dir: str = "results"
    key_file: str | None = None
    """The swarm's secret (``runtime/auth.py``): every message carries a MAC (message
    authentication code) under it. The launcher writes a fresh one per run; a roster names its
    file relative to the roster."""
    insecure: bool = False
    """No key: messages are not authenticated, for a network where everyone who can reach a port
    is trusted (each process says so at start)."""
    curve: bool = False
    """ZeroMQ transports: CurveZMQ on every connection (``runtime/curve.py``): encrypted, and each
    peer admitted only with its role's key from ``curve_dir``. The MAC stays on."""
    curve_dir: str | None = None
    """The CURVE key folder (``public/NAME.key``, ``secret/NAME.key_secret``): the launcher writes
    one per run; a roster names it relative to the roster (``rmio swarm keys``)."""
    startup_timeout_s: float = 60.0
    orphan_timeout_s: float = 30.0
    """A process that hears nothing from the env host for this long exits."""

    def __post_init__(self) -> None:
        self.recon = LEGACY.get(self.recon, self.recon)
        for name, value, allowed in (
            ("recon", self.recon, STRATEGIES),
            ("wm_mode", self.wm_mode, WM_MODES),
            ("world_model", self.world_model, PLACEMENTS),
            ("transport", self.transport, TRANSPORTS),
        ):
            if value not in allowed:
                raise ConfigError(
                    f"swarm {name} must be one of {', '.join(allowed)}, got '{value}'"
                )
        if self.stream_steps is not None and not 0 <= self.stream_steps <= 1 << 20:
            raise ConfigError(f"swarm stream_steps must be in 0..2^20, got {self.stream_steps}")
        if (self.resend_ms is not None and self.resend_ms < 0) or self.late_after < 1:
            raise ConfigError("swarm resend_ms must be >= 0 and late_after >= 1")
        if (
            self.step_deadline_ms <= 0
            or self.heartbeat_ms <= 0
            or self.liveness < 1
            or self.episodes < 1
        ):
            raise ConfigError(
                "swarm deadlines and heartbeat interval must be > 0, liveness and episodes >= 1"
            )
        if self.curve and self.transport == "udp":
            raise ConfigError(
                "swarm curve needs a ZeroMQ transport (tcp or ipc): udp is authenticated by the "
                "swarm key's MAC only"
            )
        self.loss_config().validate()

    def deadline_s(self, which: str) -> float:
        fraction = {"recon": 0.8, "gather": 0.4, "wm": 0.25, "step": 1.0}[which]
        value = (
            getattr(self, f"{which}_deadline_ms", None)
            if which != "step"
            else self.step_deadline_ms
        )
        return (value if value is not None else fraction * self.step_deadline_ms) / 1000.0

    def resend_s(self) -> float:
        """Seconds between resends of an unanswered message within a step (0: never)."""
        if self.resend_ms is not None:
            return self.resend_ms / 1000.0
        return 0.25 * self.step_deadline_ms / 1000.0 if self.transport == "udp" else 0.0

    def env_config(self) -> EnvConfig:
        return EnvConfig(**self.env)

    def loss_config(self) -> LossConfig:
        return LossConfig(**self.loss)

    def agent_names(self) -> list[str]:
        return [f"a{i}" for i in range(self.n_agents)]

    def known(self, name: str) -> bool:
        """Names that belong to this swarm (anything else is an unknown sender)."""
        if name in ("env", "ctl", "wm"):
            return True
        return name[:1] == "a" and name[1:].isdigit() and int(name[1:]) < self.n_agents

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SwarmSettings:
        fields = dataclasses.fields(cls)
        names = {f.name for f in fields}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ConfigError(f"unknown swarm setting(s): {', '.join(unknown)}")
        required = [
            f.name
            for f in fields
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        ]
        missing = [name for name in required if name not in data]
        if missing:
            raise ConfigError(f"swarm settings lack the key(s) {', '.join(missing)}")
        try:
            return cls(**data)
        except TypeError as exc:
            raise ConfigError(f"swarm settings: {exc}") from None

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.write_text(json.dumps(self.to_dict(), indent=2))
        return path

    @classmethod
    def load(cls, path: str | Path) -> SwarmSettings:
        return cls.from_dict(json.loads(Path(path).read_text()))


def env_config_for(manifest: Manifest, episode_limit: int | None = None) -> dict[str, Any]:
    """The env the bundle was trained on: its spec name, plus what shapes observations in the
    training config's env section (the episode length is the run's choice, not the training
    run's)."""
    family, _, scenario = manifest.spec.name.partition("/")
    cfg: dict[str, Any] = {"family": family, "scenario": scenario}
    trained = manifest.config.get("env") if isinstance(manifest.config, dict) else None
    if isinstance(trained, dict):
        for key in ("agent_obsk", "options"):
            if key in trained:
                cfg[key] = trained[key]
    if episode_limit is not None:
        cfg["episode_limit"] = episode_limit
    return cfg


@dataclass
class Roster:
    """Every process's inbox endpoint by name (env, a0..a{n-1}, optionally wm), plus the shared
    settings.

    For runs across machines a user writes it once (``rmio swarm roster``) and starts each role with
    it; the embedded launcher builds it from what its children report.
    """

    endpoints: dict[str, str]
    settings: SwarmSettings
    version: int = 1

    binds: dict[str, str] = field(default_factory=dict)
    """Where a role binds when that differs from the endpoint the others reach it at (behind NAT,
    in a container: ``tcp://0.0.0.0:5550`` bound, ``tcp://robot3.lab:5550`` advertised)."""

    def save(self, path: str | Path) -> Path:
        """Write the roster; the bundle and key file paths are written relative to the roster's
        folder when they are under it, so a folder holding all three can be copied anywhere."""
        path = Path(path)
        settings = self.settings.to_dict()
        for key in ("bundle", "key_file", "curve_dir"):
            if settings.get(key):
                settings[key] = _portable(settings[key], path.parent)
        data: dict[str, Any] = {"version": self.version, "endpoints": self.endpoints}
        if self.binds:
            data["bind"] = self.binds
        data["settings"] = settings
        path.write_text(yaml.safe_dump(data, sort_keys=False))
        return path

    def bind_for(self, name: str) -> str:
        """The endpoint ``name`` binds: its ``bind`` entry, else the endpoint it advertises."""
        return self.binds.get(name) or self.endpoints[name]

    @classmethod
    def load(cls, path: str | Path, need_key: bool = True) -> Roster:
        """Read and check a roster; without ``need_key`` (to give it a key) it may lack one."""
        path = Path(path)
        data = load_yaml(path, "roster")
        if not isinstance(data, dict) or not isinstance(data.get("endpoints"), dict):
            raise ConfigError(f"roster '{path}' must be a mapping with 'endpoints' and 'settings'")
        if not isinstance(data.get("settings"), dict):
            raise ConfigError(f"roster '{path}': 'settings' must be a mapping of swarm settings")
        try:
            settings = SwarmSettings.from_dict(data["settings"])
        except ConfigError as exc:
            raise ConfigError(f"roster '{path}': {exc}") from None
        base = path.parent
        for key in ("bundle", "key_file", "curve_dir"):
            value = settings.__dict__.get(key)
            if value and not Path(value).is_absolute():
                setattr(settings, key, str(base / value))
        if need_key and settings.key_file is None and not settings.insecure:
            raise ConfigError(
                f"roster '{path}' names no key_file: run `rmio swarm keys {path}` to create one "
                "(copy it with the roster, readable by its owner only), or set 'insecure: true' "
                "in its settings for a network where everyone who can reach a port is trusted"
            )
        if need_key and settings.curve and settings.curve_dir is None:
            raise ConfigError(
                f"roster '{path}' asks for curve but names no curve_dir: run `rmio swarm keys "
                f"{path}` to create the keys"
            )
        endpoints = {str(k): str(v) for k, v in data["endpoints"].items()}
        binds = data.get("bind") or {}
        if not isinstance(binds, dict) or not set(map(str, binds)) <= set(endpoints):
            raise ConfigError(f"roster '{path}': 'bind' maps names of 'endpoints' to endpoints")
        binds = {str(k): str(v) for k, v in binds.items()}
        for name, endpoint in [*endpoints.items(), *binds.items()]:
            scheme, sep, where = endpoint.partition("://")
            host, colon, port = where.rpartition(":")
            if (
                scheme not in ("tcp", "udp")
                or not sep
                or not colon
                or not host
                or not port.isdigit()
            ):
                raise ConfigError(
                    f"roster '{path}': endpoint '{name}' is '{endpoint}', not tcp://HOST:PORT or "
                    "udp://HOST:PORT (ipc does not leave a machine)"
                )
        missing = [n for n in ["env", *settings.agent_names()] if n not in endpoints]
        if missing:
            raise ConfigError(f"roster '{path}' names no endpoint for {', '.join(missing)}")
        if settings.world_model == "node" and "wm" not in endpoints:
            raise ConfigError(
                f"roster '{path}': world_model is 'node' but no 'wm' endpoint is named"
            )
        # this host's kernel, checked where it runs; loopback loses nothing
        if need_key and settings.transport == "tcp" and not _all_loopback(endpoints.values()):
            warning = rto_warning(settings.deadline_s("step"))
            if warning:
                log.warning("roster '%s': %s", path, warning)
        return cls(endpoints, settings, int(data.get("version", 1)), binds)


def _all_loopback(endpoints: Iterable[str]) -> bool:
    """Whether every ``scheme://HOST:PORT`` names this machine's loopback."""
    hosts = [e.partition("://")[2].rpartition(":")[0].strip("[]") for e in endpoints]
    return all(h == "localhost" or h == "::1" or h.startswith("127.") for h in hosts)


def _portable(value: str, base: Path) -> str:
    """``value`` relative to ``base`` when it lies under it, else as given."""
    try:
        return str(Path(value).resolve().relative_to(base.resolve()))
    except ValueError:
        return value
