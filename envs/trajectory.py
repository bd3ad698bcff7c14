"""The real-trajectory buffer: what was observed, done and received, episode by episode.

One row per observation, as in DreamerV3's replay: row t holds the observation o_t, the reward
r_t and termination that came with it, and the action a_t taken at it (zeros on an episode's last
row, where no action was taken). This is exactly what an RSSM consumes (h_t from a_{t-1}, then
o_t, r_t and the end flag are predicted from the state at t). ``observed`` keeps the loss mask of
every step, ``obs`` always keeps the true observation, so a masked model can be trained against
the truth and an evaluation can score what the agents really saw.

Files are compressed ``.npz`` with a JSON header (format version, env spec, free metadata); they
are written atomically and validated on load.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from rmio.envs.base import EnvSpec
from rmio.errors import RmioError

FORMAT_VERSION = 1
FIELDS = (
    "obs",
    "state",
    "observed",
    "action",
    "avail_actions",
    "reward",
    "is_first",
    "is_last",
    "is_terminal",
)


def _empty_fields(spec: EnvSpec, n: int) -> dict[str, np.ndarray]:
    a = spec.n_agents
    return {
        "obs": np.zeros((n, a, spec.obs_dim), np.float32),
        "state": np.zeros((n, spec.state_dim), np.float32),
        "observed": np.ones((n, a), bool),
        "action": np.zeros((n, a), np.int64)
        if spec.discrete
        else np.zeros((n, a, spec.action_dim), np.float32),
        "avail_actions": np.ones((n, a, spec.action_dim if spec.discrete else 0), bool),
        "reward": np.zeros((n,), np.float32),
        "is_first": np.zeros((n,), bool),
        "is_last": np.zeros((n,), bool),
        "is_terminal": np.zeros((n,), bool),
    }


@dataclass
class EpisodeBuilder:
    """Accumulates one episode's rows as they happen."""

    spec: EnvSpec
    rows: list[dict[str, Any]] = field(default_factory=list)

    def start(
        self,
        obs: np.ndarray,
        state: np.ndarray,
        observed: np.ndarray | None = None,
        avail: np.ndarray | None = None,
    ) -> None:
        self.rows = [self._row(obs, state, observed, avail, reward=0.0)]
        self.rows[0]["is_first"] = True

    def _row(
        self,
        obs: np.ndarray,
        state: np.ndarray,
        observed: np.ndarray | None,
        avail: np.ndarray | None,
        reward: float,
    ) -> dict[str, Any]:
        return {
            "obs": obs,
            "state": state,
            "observed": observed,
            "avail_actions": avail,
            "reward": reward,
            "action": None,
            "is_first": False,
            "is_last": False,
            "is_terminal": False,
        }

    def add(
        self,
        action: np.ndarray,
        obs: np.ndarray,
        state: np.ndarray,
        reward: float,
        terminated: bool,
        truncated: bool,
        observed: np.ndarray | None = None,
        avail: np.ndarray | None = None,
    ) -> bool:
        """Record the action taken at the last row and the step's outcome; True when the episode
        ended."""
        if not self.rows:
            raise RuntimeError("EpisodeBuilder.add before start")
        self.rows[-1]["action"] = action
        row = self._row(obs, state, observed, avail, reward)
        row["is_terminal"] = bool(terminated)
        row["is_last"] = bool(terminated or truncated)
        self.rows.append(row)
        return row["is_last"]

    def finish(self) -> dict[str, np.ndarray]:
        """The episode as arrays (the last row is marked last even when it was cut short)."""
        out = _empty_fields(self.spec, len(self.rows))
        for t, row in enumerate(self.rows):
            out["obs"][t] = row["obs"]
            out["state"][t] = row["state"]
            if row["observed"] is not None:
                out["observed"][t] = row["observed"]
            if row["avail_actions"] is not None and self.spec.discrete:
                out["avail_actions"][t] = row["avail_actions"]
            if row["action"] is not None:
                out["action"][t] = row["action"]
            out["reward"][t] = row["reward"]
            out["is_first"][t] = row["is_first"]
            out["is_terminal"][t] = row["is_terminal"]
        out["is_last"][-1] = True
        self.rows = []
        return out


class TrajectoryBuffer:
    """Episodes stored back to back; ``is_first`` marks where each one starts."""

    def __init__(
        self,
        spec: EnvSpec,
        data: dict[str, np.ndarray] | None = None,
        meta: dict[str, Any] | None = None,
    ) -> None:
        self.spec = spec
        self.data = data if data is not None else _empty_fields(spec, 0)
        self.meta = meta or {}
        self._validate_shapes("in memory")

    def __len__(self) -> int:
        return int(self.data["reward"].shape[0])

    @property
    def num_episodes(self) -> int:
        return int(self.data["is_first"].sum())

    def episode_bounds(self) -> list[tuple[int, int]]:
        """(start, stop) row indices of each episode."""
        starts = np.flatnonzero(self.data["is_first"]).tolist()
        return list(zip(starts, [*starts[1:], len(self)], strict=True))

    def episode(self, k: int) -> dict[str, np.ndarray]:
        start, stop = self.episode_bounds()[k]
        return {name: arr[start:stop] for name, arr in self.data.items()}

    def episode_returns(self) -> np.ndarray:
        return np.array(
            [self.data["reward"][a:b].sum() for a, b in self.episode_bounds()], dtype=np.float64
        )

    def add_episode(self, episode: dict[str, np.ndarray]) -> None:
        if not episode["is_first"][0]:
            raise ValueError("an episode must start with an is_first row")
        self.data = {name: np.concatenate([self.data[name], episode[name]]) for name in FIELDS}

    def extend(self, other: TrajectoryBuffer) -> None:
        if other.spec != self.spec:
            raise RmioError(
                f"cannot merge trajectories of {other.spec.name} into a buffer of {self.spec.name}"
            )
        self.data = {name: np.concatenate([self.data[name], other.data[name]]) for name in FIELDS}

    def _validate_shapes(self, where: str) -> None:
        ref = _empty_fields(self.spec, 0)
        missing = [f for f in FIELDS if f not in self.data]
        if missing:
            raise RmioError(
                f"trajectory file {where} lacks the fields {missing}; it is not an rmio buffer"
            )
        n = len(self.data["reward"])
        for name in FIELDS:
            arr = self.data[name]
            if arr.shape[1:] != ref[name].shape[1:] or arr.shape[0] != n:
                raise RmioError(
                    f"trajectory file {where}: field '{name}' has shape {arr.shape}, expected "
                    f"({n}, {', '.join(map(str, ref[name].shape[1:]))}) for {self.spec.name}"
                )
        if n and not self.data["is_first"][0]:
            raise RmioError(f"trajectory file {where}: the first row does not start an episode")

    def check_finite(self, where: str = "in memory") -> None:
        for name in ("obs", "state", "action", "reward"):
            arr = self.data[name]
            if np.issubdtype(arr.dtype, np.floating) and not np.isfinite(arr).all():
                bad = int((~np.isfinite(arr)).reshape(arr.shape[0], -1).any(axis=1).sum())
                raise RmioError(f"trajectory {where}: field '{name}' has NaN or inf in {bad} rows")

    def save(self, path: str | Path) -> Path:
        """Write atomically (temporary file, then rename) so an interrupted save loses nothing
        old."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        header = {"format_version": FORMAT_VERSION, "spec": self.spec.to_dict(), "meta": self.meta}
        tmp = path.with_name(path.name + ".tmp")
        with open(tmp, "wb") as fh:
            np.savez_compressed(fh, header=np.array(json.dumps(header)), **self.data)
        os.replace(tmp, path)
        return path

    @classmethod
    def load(cls, path: str | Path) -> TrajectoryBuffer:
        path = Path(path)
        if not path.is_file():
            raise RmioError(f"trajectory file '{path}' does not exist")
        try:
            with np.load(path, allow_pickle=False) as npz:
                header = json.loads(str(npz["header"]))
                data = {name: npz[name] for name in FIELDS if name in npz.files}
        except (OSError, ValueError, KeyError, json.JSONDecodeError) as exc:
            raise RmioError(f"trajectory file '{path}' is unreadable or corrupt: {exc}") from None
        version = header.get("format_version")
        if version != FORMAT_VERSION:
            raise RmioError(
                f"trajectory file '{path}' has format version {version}, this rmio reads "
                f"{FORMAT_VERSION}"
            )
        buf = cls.__new__(cls)
        buf.spec = EnvSpec.from_dict(header["spec"])
        buf.data = data
        buf.meta = header.get("meta", {})
        buf._validate_shapes(f"'{path}'")
        buf.check_finite(f"'{path}'")
        return buf
