"""Helpers shared by the swarm tests: message templates, and (from rmio.testing) settings for a tiny
run and running it."""

from __future__ import annotations

from typing import Any

import numpy as np

from rmio.runtime.wire import encode
from rmio.testing import run_swarm, swarm_settings

KNOWN = {"env", "ctl", "wm", "a0", "a1", "a2"}.__contains__
OBS = np.arange(9, dtype=np.float32)

TEMPLATES: dict[str, tuple[dict[str, Any], dict[str, np.ndarray]]] = {
    "HELLO": ({"role": "agent", "epoch": 2, "leader": 1}, {}),
    "HB": ({"epoch": 2, "leader": -1}, {}),
    "BYE": ({"reason": "done"}, {}),
    "STEP": (
        {"ep": 0, "step": 3, "seq": 3, "seen": True, "dflt": False},
        {"obs": OBS, "avail": np.array([True, False, True, True])},
    ),
    "ACTION": (
        {"ep": 0, "step": 3, "kind": "obs", "epoch": 1, "leader": 0, "tx": 5},
        {"action": np.zeros(1, np.float32)},
    ),
    "LOST": ({"ep": 0, "step": 3, "epoch": 1, "leader": 0, "bcast": False, "retry": False}, {}),
    "COORD": ({"epoch": 3, "leader": 2}, {}),
    "GATHER": ({"ep": 0, "step": 3, "epoch": 1, "obs_from": 1, "act_from": 0, "stream": 23}, {}),
    "STREAM": ({"epoch": 1, "until": 40}, {}),
    "HISTORY": (
        {
            "ep": 0,
            "step": 3,
            "epoch": 1,
            "obs_from": 1,
            "act_from": 0,
            "seen": [True, False, True],
            "known": [True, True, True],
            "push": False,
        },
        {"obs": np.zeros((2, 9), np.float32), "act": np.zeros((3, 1), np.float32)},
    ),
    "RECON": ({"ep": 0, "step": 3, "epoch": 1, "start": 0}, {"obs": OBS}),
    "WM_REQ": (
        {"ep": 0, "step": 3, "rid": 1, "cont": True},
        {
            "obs": np.zeros((4, 6, 9), np.float32),
            "act": np.zeros((4, 6, 1), np.float32),
            "mask": np.ones((4, 6), np.float32),
            "h": np.ones((6, 16), np.float32),
            "z": np.zeros((6, 16), np.float32),
        },
    ),
    "WM_REP": (
        {"rid": 1, "ok": True, "us": 120},
        {
            "obs": np.zeros((6, 9), np.float32),
            "h": np.zeros((6, 16), np.float32),
            "z": np.zeros((6, 16), np.float32),
        },
    ),
    "STATS_REQ": ({}, {}),
    "STATS": (
        {"counts": {"tx_msgs.HB": 3, "x": 1.5}, "names": ["gather_us", "round_us"]},
        {"s0": np.ones(4, np.float32), "s1": np.arange(3, dtype=np.float32)},
    ),
    "REGISTER": ({"role": "agent", "endpoint": "ipc:///run/x/a0.sock", "pid": 12}, {}),
    "ROSTER": ({"version": 1, "endpoints": {"env": "tcp://127.0.0.1:5000"}}, {}),
    "STATUS": ({"status": {"episode": 0, "return": 1.5}}, {}),
    "DONE": ({"report": "results/r.json", "ok": True}, {}),
}


def frames_of(msg_type: str, src: str = "a1") -> list[bytes]:
    fields, arrays = TEMPLATES[msg_type]
    return [bytes(f) for f in encode(msg_type, src, arrays, inc=7, **fields)]


__all__ = ["KNOWN", "OBS", "TEMPLATES", "frames_of", "run_swarm", "swarm_settings"]
