"""Real network faults for the swarm: two network namespaces joined by a veth pair, with nftables
rules that drop a random share of the packets crossing the link each way, or all of them (a
partition).

The swarm's guarantees were only ever tested on one loopback, where nothing is lost. A
:class:`NetLab` puts processes on two hosts of a real (virtual) link instead: the kernel's own
stack, its own retransmissions (tcp) and its own losses (``numgen random`` drop rules, each way),
so what the fault suite and ``bench/netfaults_bench.py`` measure is what a swarm across machines
would see. Root only (network namespaces and nftables); :func:`unavailable` says why not. Nothing
leaves the namespaces this creates, and they are deleted on exit, also on errors.

``rmio swarm launch --net-loss P`` runs the embedded launcher this way: the launcher, the env
host, the world-model node and the even agents on side ``a``, the odd agents on side ``b``.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import re
import shutil
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from rmio.errors import RmioError
from rmio.runtime.launcher import Launcher
from rmio.runtime.tcp_rto import rto_warning

log = logging.getLogger(__name__)

CLONE_NEWNET = 0x40000000
SIDES = ("a", "b")
STALE = re.compile(r"rmio(\d+)[ab]\d+$")
"""A NetLab's namespace: ``rmio<pid><side><k>``."""


def unavailable() -> str | None:
    """Why a NetLab cannot be made here (None when it can)."""
    if os.geteuid() != 0:
        return "network namespaces and nftables need root"
    for tool in ("ip", "nft"):
        if shutil.which(tool) is None:
            return f"'{tool}' is not installed (apt-get install -y iproute2 nftables)"
    probe = f"rmio-probe-{os.getpid()}"
    try:
        _run("ip", "netns", "add", probe)
        try:
            _run("ip", "netns", "exec", probe, "nft", "list", "ruleset")
        finally:
            _run("ip", "netns", "del", probe, check=False)
    except (OSError, subprocess.CalledProcessError) as exc:
        return f"cannot create a network namespace with nftables here: {_why(exc)}"
    return None


def _why(exc: BaseException) -> str:
    if isinstance(exc, subprocess.CalledProcessError):
        return (exc.stderr or b"").decode(errors="replace").strip()[:200] or str(exc)
    return str(exc)


def _run(*cmd: str, check: bool = True, stdin: str | None = None) -> None:
    subprocess.run(
        cmd, check=check, capture_output=True, timeout=30, input=stdin.encode() if stdin else None
    )


def sweep_stale() -> list[str]:
    """Delete the namespaces a NetLab of a process that no longer exists left behind (one killed
    by SIGKILL could not delete its own); returns their names."""
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, timeout=30)
    gone = []
    for line in out.stdout.splitlines():
        match = STALE.match(line.split(" ", 1)[0])
        if match and not Path(f"/proc/{match.group(1)}").exists():
            _run("ip", "netns", "del", match.group(0), check=False)
            gone.append(match.group(0))
    if gone:
        log.info("deleted %d namespaces left by killed runs: %s", len(gone), ", ".join(gone))
    return gone


class NetLab:
    """Namespaces ``rmio<pid>a`` and ``rmio<pid>b``; side a is 10.231.X.1, side b 10.231.X.2."""

    def __init__(self, tag: int | None = None, rto_min_ms: float | None = None) -> None:
        """``rto_min_ms``: the minimum TCP retransmission timeout inside both namespaces (None:
        the kernel's default, 200 ms; see :mod:`rmio.runtime.tcp_rto`)."""
        k = (os.getpid() if tag is None else tag) % 250 + 1
        self.ns = {side: f"rmio{os.getpid()}{side}{k}" for side in SIDES}
        self.dev = {side: f"rmv{k}{side}" for side in SIDES}
        self.addr = {"a": f"10.231.{k}.1", "b": f"10.231.{k}.2", "env": f"10.231.{k}.3"}
        """Side a, side b, and the env host's own address on side a."""
        self.loss = {side: 0.0 for side in SIDES}
        self.cut = False
        self.spare = False
        self.blocked: set[str] = set()
        self.made: list[str] = []
        self.rto_min_ms = rto_min_ms

    def __enter__(self) -> NetLab:
        sweep_stale()
        try:
            for side in SIDES:
                _run("ip", "netns", "add", self.ns[side])
                self.made.append(self.ns[side])
            a, b = self.dev["a"], self.dev["b"]
            _run("ip", "link", "add", a, "netns", self.ns["a"], "type", "veth", "peer", "name", b,
                 "netns", self.ns["b"])  # fmt: skip
            for side in SIDES:
                ns = ("ip", "netns", "exec", self.ns[side])
                _run(*ns, "ip", "addr", "add", f"{self.addr[side]}/24", "dev", self.dev[side])
                if side == "a":
                    env = f"{self.addr['env']}/24"
                    _run(*ns, "ip", "addr", "add", env, "dev", self.dev[side])
                _run(*ns, "ip", "link", "set", self.dev[side], "up")
                _run(*ns, "ip", "link", "set", "lo", "up")
                if self.rto_min_ms is not None:
                    self._set_rto_min(side)
            self._rules()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Delete every namespace this made (the veth pair goes with them); idempotent."""
        while self.made:
            _run("ip", "netns", "del", self.made.pop(), check=False)

    def _set_rto_min(self, side: str) -> None:
        """Per namespace where the kernel has the sysctl (6.11+), else on the link's route."""
        ns = ("ip", "netns", "exec", self.ns[side])
        us = max(1, round(1000 * float(self.rto_min_ms or 0)))
        try:
            _run(*ns, "sysctl", "-qw", f"net.ipv4.tcp_rto_min_us={us}")
        except subprocess.CalledProcessError:
            net = self.addr[side].rsplit(".", 1)[0] + ".0/24"
            _run(*ns, "ip", "route", "change", net, "dev", self.dev[side], "rto_min", f"{us}us")

    def rto_min_s(self, side: str) -> float:
        """The minimum TCP retransmission timeout a process on ``side`` gets (sysctl only)."""
        out = subprocess.run(
            [*self.prefix(side), "sysctl", "-n", "net.ipv4.tcp_rto_min_us"],
            capture_output=True,
            text=True,
            timeout=30,
        )
        return int(out.stdout) / 1e6 if out.returncode == 0 else 0.2

    # -- faults -----------------------------------------------------------------------------

    def set_loss(self, a_to_b: float, b_to_a: float | None = None) -> None:
        """Drop this share of the packets leaving each side over the link (random, per packet)."""
        self.loss = {"a": float(a_to_b), "b": float(a_to_b if b_to_a is None else b_to_a)}
        self._rules()

    def partition(self, spare_env: bool = False) -> None:
        """Drop everything on the link, both ways, until :meth:`heal`. With ``spare_env`` the env
        host's own address (side a's second one) still gets through: the agents are cut from each
        other, not from their sensors (over udp, whose datagrams leave from the address a process
        bound; a tcp connection leaves from the side's first address and is cut too)."""
        self.cut = True
        self.spare = spare_env
        self._rules()

    def heal(self) -> None:
        self.cut = False
        self._rules()

    def firewall(self, side: str, on: bool = True) -> None:
        """Refuse every packet ``side`` sends over the link at its own output: unlike loss, each
        send then fails locally with EPERM, as a host firewall makes it fail."""
        self.blocked = (self.blocked | {side}) if on else (self.blocked - {side})
        self._rules()

    def _rules(self) -> None:
        """Drops happen where the packet arrives (input hook): dropped on output, a packet would
        fail its send with EPERM, which tells the sender, as real loss does not."""
        for side in SIDES:
            other = "b" if side == "a" else "a"
            share = 1.0 if self.cut else self.loss[other]
            drop = round(10_000 * min(max(share, 0.0), 1.0))
            match = f'iifname "{self.dev[side]}"'
            if self.cut and self.spare:
                env = self.addr["env"]
                match += f" ip saddr != {env} ip daddr != {env}"
            rule = (
                f"{match} drop"
                if drop >= 10_000
                else f"{match} numgen random mod 10000 < {drop} drop"
                if drop
                else ""
            )
            block = f'oifname "{self.dev[side]}" drop' if side in self.blocked else ""
            script = (
                "table inet rmio\ndelete table inet rmio\n"
                "table inet rmio {\n chain in {\n  type filter hook input priority 0;\n"
                f"  {rule}\n }}\n"
                " chain out {\n  type filter hook output priority 0;\n"
                f"  {block}\n }}\n}}\n"
            )
            _run("ip", "netns", "exec", self.ns[side], "nft", "-f", "-", stdin=script)

    # -- placing processes ------------------------------------------------------------------

    def prefix(self, side: str) -> list[str]:
        """The command prefix that runs a process on ``side``."""
        return ["ip", "netns", "exec", self.ns[side]]

    def placement(self, name: str) -> tuple[list[str], str]:
        """For the launcher: env host (on its own address), wm node, launcher and even agents on
        side a, odd agents on side b (so half the agents and their coordinator talk across the
        lossy link)."""
        side = "b" if name.startswith("a") and int(name[1:]) % 2 == 1 else "a"
        return self.prefix(side), self.addr["env" if name == "env" else side]

    @contextlib.contextmanager
    def inside(self, side: str) -> Iterator[None]:
        """Move the calling thread into a side's namespace for the duration (sockets it creates
        there, and threads it starts, such as ZeroMQ's, stay there)."""
        libc = ctypes.CDLL(None, use_errno=True)
        home = os.open(f"/proc/self/task/{threading.get_native_id()}/ns/net", os.O_RDONLY)
        there = os.open(Path("/var/run/netns") / self.ns[side], os.O_RDONLY)
        try:
            if libc.setns(there, CLONE_NEWNET) != 0:
                raise OSError(ctypes.get_errno(), "setns into the lab's namespace failed")
            try:
                yield
            finally:
                if libc.setns(home, CLONE_NEWNET) != 0:
                    raise OSError(ctypes.get_errno(), "setns back to this thread's namespace")
        finally:
            os.close(there)
            os.close(home)


def launch_lossy(
    launcher: Launcher, loss: float, rto_min_ms: float | None = None
) -> dict[str, Any]:
    """Run an embedded launch across a NetLab whose link drops ``loss`` of the packets each way:
    the launcher on side a (its ZeroMQ threads start there), processes placed by
    :meth:`NetLab.placement`; ``rto_min_ms`` as for :class:`NetLab`. Raises RmioError where
    namespaces cannot be made."""
    why = unavailable()
    if why is not None:
        raise RmioError(f"--net-loss: {why}")
    if launcher.settings.transport == "ipc":
        raise RmioError("--net-loss needs tcp or udp: unix sockets do not cross the link")
    with NetLab(rto_min_ms=rto_min_ms) as lab:
        if launcher.settings.transport == "tcp":
            warning = rto_warning(launcher.settings.deadline_s("step"), lab.rto_min_s("a"))
            if warning:
                log.warning("%s", warning)
        lab.set_loss(loss)
        return run_in_lab(launcher, lab)


def run_in_lab(launcher: Launcher, lab: NetLab) -> dict[str, Any]:
    """Run an embedded launch with its processes placed across ``lab`` (the caller sets losses
    and partitions meanwhile, from any thread)."""
    launcher.placement = lab.placement
    with lab.inside("a"):
        return launcher.run()
