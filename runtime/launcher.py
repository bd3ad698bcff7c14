"""The embedded launcher: the whole swarm on this machine, a live status line, a report, and no
orphans.

It binds a control socket, starts the env host, one process per agent and optionally a world-model
node (each in its own session, armed to die with the launcher), learns the endpoint each child
bound (random loopback ports or socket files in a private directory), sends everyone the roster,
restarts an agent killed by fault injection so it can rejoin, and once the env host reports done,
waits for every child to exit, then terminates and finally kills whatever is left. The same
cleanup runs on Ctrl-C and on any error.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rmio.envs.loss import describe, resolve_loss
from rmio.errors import RmioError
from rmio.runtime.auth import generate_key
from rmio.runtime.curve import generate_keys, swarm_names
from rmio.runtime.node import NodeBase, local_endpoint
from rmio.runtime.proc import swarm_auth, swarm_curve
from rmio.runtime.settings import Roster, SwarmSettings, env_config_for
from rmio.runtime.transport import check_bundle_fits, make_node
from rmio.runtime.validate import verify_bundle

log = logging.getLogger(__name__)


@dataclass
class Child:
    name: str
    role: str
    proc: subprocess.Popen
    log_path: Path
    endpoint: str | None = None
    restarts: int = 0
    restart_at: float | None = None


class Interrupted(KeyboardInterrupt):
    """Ctrl-C (or SIGTERM) ended a launch; ``report`` is the partial report the env host wrote of
    what ran, or None when there was none to write (interrupted before stepping)."""

    def __init__(self, report: Path | None) -> None:
        super().__init__()
        self.report = report


def _interruptible() -> None:
    """Ctrl-C and SIGTERM must end a launch cleanly (children reaped, report written) even when the
    launcher inherited SIGINT as ignored, as every background job of a non-interactive shell does.
    Signal handlers can only be set from the main thread; elsewhere (tests) the caller owns them."""
    if threading.current_thread() is not threading.main_thread():
        return
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, signal.default_int_handler)


def sweep_stale_ipc_dirs() -> int:
    """Remove the socket directories (``rmio-PID-*`` in the temporary directory) of launchers that
    are gone: a SIGKILLed launcher cannot clean up after itself. Returns how many went."""
    gone = 0
    for path in Path(tempfile.gettempdir()).glob("rmio-*-*"):
        pid = path.name.split("-")[1]
        if not (pid.isdigit() and path.is_dir()):
            continue
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            shutil.rmtree(path, ignore_errors=True)
            gone += 1
        except PermissionError:  # alive, someone else's
            continue
    return gone


class Launcher:
    def __init__(
        self,
        settings: SwarmSettings,
        run_dir: Path,
        on_status: Any = None,
        log_level: str | None = None,
    ) -> None:
        self.settings = settings
        self.run_dir = Path(run_dir)
        self.on_status = on_status or (lambda status: None)
        # the children log as verbosely as this process does (rmio -v / -vv), into logs/NAME.log
        self.log_level = log_level or logging.getLevelName(logging.getLogger().getEffectiveLevel())
        self.children: dict[str, Child] = {}
        self.ipc_dir: str | None = None
        self.own_key = False
        """This launch wrote the swarm's key (in ``ipc_dir``, gone with it)."""
        self.own_curve = False
        """... and its CURVE keys."""
        self.ctl: NodeBase | None = None
        self.report_path: Path | None = None
        self.roster: dict[str, str] = {}
        self.stepping = False
        """Whether the env host has reported a step: an agent that exits with an error before that
        ends the launch at once (it would only fail again on restart)."""
        self.placement: Callable[[str], tuple[list[str], str]] | None = None
        """Where a process runs, for fault injection across network namespaces
        (``rmio.netfaults``): name -> (command prefix, host address it binds) instead of this
        process's loopback."""

    # -- public -------------------------------------------------------------------------

    def run(self) -> dict[str, Any]:
        """Run the swarm to completion and return its report (also written under run_dir)."""
        self.run_dir.mkdir(parents=True, exist_ok=True)
        (self.run_dir / "logs").mkdir(exist_ok=True)
        self.settings.out_dir = str(self.run_dir)
        _interruptible()
        check_bundle_fits(self.settings.transport, self.settings.bundle)
        try:
            # a private folder (0700) for the socket files and this run's key
            sweep_stale_ipc_dirs()
            self.ipc_dir = tempfile.mkdtemp(prefix=f"rmio-{os.getpid()}-")
            if not self.settings.insecure and not self.settings.key_file:
                self.settings.key_file = str(generate_key(Path(self.ipc_dir) / "swarm.key"))
                self.own_key = True
            if self.settings.curve and not self.settings.curve_dir:
                wm = self.settings.world_model == "node"
                names = swarm_names(self.settings.n_agents, wm, launcher=True)
                self.settings.curve_dir = str(generate_keys(Path(self.ipc_dir) / "curve", names))
                self.own_curve = True
            self.settings_path = self.settings.save(self.run_dir / "settings.json")
            bind = self._bind_for("ctl")
            keys = swarm_curve(self.settings, "ctl", launcher=True)
            self.ctl = make_node("ctl", bind, self.settings.known, keys)
            self.ctl.auth = swarm_auth(self.settings, "ctl")
            names = [("env", "env-host"), *((a, "agent") for a in self.settings.agent_names())]
            if self.settings.world_model == "node":
                names.append(("wm", "wm-node"))
            for name, role in names:
                self._spawn(name, role)
            self._register()
            try:
                self._supervise()
            except KeyboardInterrupt:
                raise Interrupted(self._partial_report()) from None
            self._wait_exit(10.0)
        finally:
            self.shutdown()
        if self.report_path is None or not self.report_path.is_file():
            raise RmioError(
                f"the swarm ended without a report; see the logs in {self.run_dir / 'logs'}"
            )
        return json.loads(self.report_path.read_text())

    def _partial_report(self, patience_s: float = 15.0) -> Path | None:
        """Ctrl-C while the swarm runs: the env host stops after the step under way, gathers every
        process's statistics and writes the report of what ran (``"interrupted": true``). A second
        Ctrl-C, or no report within ``patience_s``, gives up on it."""
        env = self.children.get("env")
        if self.ctl is None or env is None or env.proc.poll() is not None:
            return None
        self.ctl.send("env", "BYE", reason="interrupted")
        deadline = time.monotonic() + patience_s
        while time.monotonic() < deadline and env.proc.poll() is None:
            for msg in self.ctl.poll(100):
                if msg.type == "DONE" and msg.src == "env":
                    return Path(msg["report"])
        report = self.run_dir / "report.json"
        return report if report.is_file() else None

    def shutdown(self) -> None:
        """Stop every child (BYE, then SIGTERM, then SIGKILL) and release sockets; idempotent."""
        if self.ctl is not None:
            for child in self.children.values():
                if child.proc.poll() is None and child.endpoint:
                    self.ctl.send(child.name, "BYE", reason="launcher exit")
            self._wait_exit(1.0)
        for child in self.children.values():
            if child.proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    child.proc.terminate()
        self._wait_exit(2.0)
        for child in self.children.values():
            if child.proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    child.proc.kill()
                child.proc.wait(timeout=5)
        if self.ctl is not None:
            self.ctl.close()
            self.ctl = None
        if self.ipc_dir is not None:
            shutil.rmtree(self.ipc_dir, ignore_errors=True)
            self.ipc_dir = None
        if self.own_key:  # the settings may serve another launch: it gets a key of its own
            self.settings.key_file, self.own_key = None, False
        if self.own_curve:
            self.settings.curve_dir, self.own_curve = None, False

    def pids(self) -> list[int]:
        return [c.proc.pid for c in self.children.values()]

    # -- children -----------------------------------------------------------------------

    def _bind_for(self, name: str) -> str:
        bind = local_endpoint(self.settings.transport, name, self.ipc_dir)
        if self.placement is not None:
            bind = bind.replace("127.0.0.1", self.placement(name)[1])
        return bind

    def _spawn(self, name: str, role: str, bind: str | None = None) -> Child:
        assert self.ctl is not None
        bind = bind or self._bind_for(name)
        cmd = [
            *(self.placement(name)[0] if self.placement is not None else []),
            sys.executable,
            "-m",
            "rmio.runtime.proc",
            role,
            "--name",
            name,
            "--settings",
            str(self.settings_path),
            "--bind",
            bind,
            "--control",
            self.ctl.endpoint,
            "--parent-pid",
            str(os.getpid()),
            "--log-level",
            self.log_level,
        ]
        log_path = self.run_dir / "logs" / f"{name}.log"
        env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
        with open(log_path, "ab") as out:
            proc = subprocess.Popen(
                cmd,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
                env=env,
            )
        old = self.children.get(name)
        child = Child(name, role, proc, log_path, restarts=old.restarts + 1 if old else 0)
        self.children[name] = child
        return child

    def _register(self) -> None:
        assert self.ctl is not None
        deadline = time.monotonic() + self.settings.startup_timeout_s
        while any(c.endpoint is None for c in self.children.values()):
            if time.monotonic() > deadline:
                raise RmioError(
                    f"swarm processes did not start within {self.settings.startup_timeout_s:.0f} s"
                )
            self._check_early_exit()
            for msg in self.ctl.poll(50):
                if msg.type == "REGISTER" and msg.src in self.children:
                    self.children[msg.src].endpoint = msg["endpoint"]
        self.roster = {c.name: c.endpoint for c in self.children.values() if c.endpoint}
        for child in self.children.values():
            self._send_roster(child)

    def _send_roster(self, child: Child) -> None:
        assert self.ctl is not None and child.endpoint is not None
        self.ctl.connect(child.name, child.endpoint)
        deadline = time.monotonic() + 5.0
        while not self.ctl.send(child.name, "ROSTER", version=1, endpoints=self.roster):
            if time.monotonic() > deadline or child.proc.poll() is not None:
                raise RmioError(f"cannot reach {child.name} at {child.endpoint}")
            self.ctl.poll(10)

    def _check_early_exit(self) -> None:
        for child in self.children.values():
            if child.proc.poll() is not None:
                raise RmioError(_exit_line(child, "at startup"))

    def _supervise(self) -> None:
        """Until the env host is done: status, restarts, and a watchdog on the env host's
        silence."""
        assert self.ctl is not None
        heard = time.monotonic()
        patience = self.settings.orphan_timeout_s
        while True:
            if time.monotonic() - heard > patience:
                raise RmioError(
                    f"the env host said nothing for {patience:.0f} s; see {self.run_dir / 'logs'}"
                )
            for msg in self.ctl.poll(100):
                heard = time.monotonic() if msg.src == "env" else heard
                if msg.type == "STATUS" and msg.src == "env":
                    self.stepping = True
                    self.on_status(dict(msg["status"]))
                elif msg.type == "DONE" and msg.src == "env":
                    self.report_path = Path(msg["report"])
                    return
                elif msg.type == "REGISTER" and msg.src in self.children:
                    self._rejoined(msg.src, msg["endpoint"])
            self.ctl.link_events.clear()
            env = self.children["env"]
            if env.proc.poll() is not None:
                report = self.run_dir / "report.json"
                self.report_path = report if report.is_file() and env.proc.returncode == 0 else None
                if self.report_path is None:
                    tail = env.log_path.read_text(errors="replace")[-3000:]
                    raise RmioError(f"the env host exited with code {env.proc.returncode}:\n{tail}")
                return
            self._restart_dead(time.monotonic())

    def _restart_dead(self, now: float) -> None:
        for child in list(self.children.values()):
            if child.role != "agent" or child.proc.poll() in (None, 0):
                continue  # running, or a clean exit after the env host's BYE
            if not self.stepping and child.proc.returncode > 0:  # an error, not a fault injected
                raise RmioError(_exit_line(child, "before greeting the env host"))
            if child.restart_at is None:
                log.warning("%s exited with code %s", child.name, child.proc.returncode)
                if self.settings.rejoin_after_s < 0 or child.restarts >= 3:
                    child.restart_at = float("inf")
                    continue
                child.restart_at = now + self.settings.rejoin_after_s
            if now >= child.restart_at:
                new = self._spawn(child.name, child.role, bind=child.endpoint)
                new.endpoint = None
                log.info("restarted %s (restart %d)", child.name, new.restarts)

    def _rejoined(self, name: str, endpoint: str) -> None:
        assert self.ctl is not None
        child = self.children[name]
        moved = self.roster.get(name) != endpoint
        child.endpoint = endpoint
        self.roster[name] = endpoint
        self._send_roster(child)
        if moved:  # everyone must route to the new endpoint
            for other in self.children.values():
                if other.name != name and other.proc.poll() is None and other.endpoint:
                    self.ctl.send(other.name, "ROSTER", version=1, endpoints=self.roster)

    def _wait_exit(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        for child in self.children.values():
            left = deadline - time.monotonic()
            if left <= 0:
                return
            with contextlib.suppress(subprocess.TimeoutExpired):
                child.proc.wait(timeout=left)


def _exit_line(child: Child, when: str) -> str:
    """One line for a child that exited: its own error line (``rmio: error: ...``, else the last
    line of its log) and where the whole log is."""
    lines = (
        child.log_path.read_text(errors="replace").splitlines() if child.log_path.is_file() else []
    )
    errors = [ln for ln in lines if ln.startswith("rmio: error:")]
    last = (errors or [ln for ln in lines if ln.strip()] or ["(no output)"])[-1]
    last = last.removeprefix("rmio: error: ").strip()
    return (
        f"{child.name} exited with code {child.proc.returncode} {when}: {last} "
        f"(log: {child.log_path})"
    )


# -- command-line support (rmio swarm launch / roster) --------------------------------------


def build_settings(
    bundle: Path,
    *,
    scenario: str | None = None,
    agents: int | None = None,
    steps: int | None = None,
    p_loss: float | None = None,
    loss_model: str | Path | None = None,
    mean_burst_length: float | None = None,
    blackout_length: int | None = None,
    blackout_rate: float | None = None,
    kill_agent: tuple[str, ...] = (),
    **options: Any,
) -> SwarmSettings:
    """Settings for a run of ``bundle``, refusing a scenario or agent count the bundle was not made
    for, and a loss model (``resolve_loss``: a name with its options, or a YAML file, a schedule's
    entries checked against the agents) before any process starts."""
    man = verify_bundle(bundle)
    missing = [role for role in ("actor", "wm_step") if role not in man.files]
    if missing:
        raise RmioError(
            f"bundle '{bundle}' has no {' and no '.join(missing)} graph; the swarm needs both "
            f"(export a run that trained a policy and a world model)"
        )
    name = man.spec.name
    if scenario is not None and scenario not in (name, name.partition("/")[2]):
        raise RmioError(f"bundle '{bundle}' was trained for {name}, not {scenario}")
    if agents is not None and agents != man.spec.n_agents:
        raise RmioError(f"bundle '{bundle}' has {man.spec.n_agents} agents, not {agents}")
    loss = describe(
        resolve_loss(
            loss_model,
            p_loss=p_loss,
            n_agents=man.spec.n_agents,
            mean_burst_length=mean_burst_length,
            blackout_length=blackout_length,
            blackout_rate=blackout_rate,
        )
    )
    kills = []
    for spec in kill_agent:
        who, sep, when = spec.partition("@")
        if not sep or not who.isdigit() or not when.isdigit() or int(who) >= man.spec.n_agents:
            raise RmioError(
                f"--kill-agent wants AGENT@STEP with AGENT < {man.spec.n_agents}, got '{spec}'"
            )
        kills.append([int(who), int(when)])
    return SwarmSettings(
        bundle=str(Path(bundle).resolve()),
        n_agents=man.spec.n_agents,
        env=env_config_for(man, steps),
        loss=loss,
        kill_agents=kills,
        **{k: v for k, v in options.items() if v is not None},
    )


def write_roster(
    settings: SwarmSettings, path: Path, host: str = "127.0.0.1", base_port: int = 5550
) -> list[str]:
    """A roster for runs across machines (every role on ``host`` at consecutive ports: edit the
    hosts), and the command that starts each role."""
    names = ["env", *settings.agent_names(), *(["wm"] if settings.world_model == "node" else [])]
    if settings.transport not in ("tcp", "udp"):
        raise RmioError(
            f"a roster needs --transport tcp or udp, not {settings.transport} (ipc does not leave "
            "a machine; `rmio swarm launch` runs one machine's swarm over ipc)"
        )
    if host in ("0.0.0.0", "::", "*", ""):
        raise RmioError(
            f"--host '{host}' is a wildcard, not an address the other machines can reach: "
            "give the host's name or address (each role binds the port it is given there)"
        )
    check_bundle_fits(settings.transport, settings.bundle)
    endpoints = {
        name: f"{settings.transport}://{host}:{base_port + k}" for k, name in enumerate(names)
    }
    if not settings.insecure:
        settings.key_file = str(generate_key(Path(path).with_suffix(".key")))
    if settings.curve:
        settings.curve_dir = str(_roster_curve(Path(path), settings))
    Roster(endpoints, settings).save(path)
    cmds = [f"rmio swarm env-host --roster {path}"]
    cmds += [f"rmio swarm agent --id {i} --roster {path}" for i in range(settings.n_agents)]
    if settings.world_model == "node":
        cmds.append(f"rmio swarm wm-node --roster {path}")
    return cmds


def roster_keys(roster: str | Path, key: str | Path | None = None, curve: bool = False) -> Path:
    """A fresh key for an existing roster (``rmio swarm keys``): written next to it unless ``key``
    says where, named in its settings relative to it, and its ``insecure`` flag cleared. With
    ``curve`` (or a roster that has ``curve: true``) also a fresh CURVE keypair per role, in
    ``ROSTER.curve/``."""
    roster = Path(roster)
    spec = Roster.load(roster, need_key=False)
    path = generate_key(Path(key) if key is not None else roster.with_suffix(".key"))
    spec.settings.key_file = str(path.resolve())
    spec.settings.insecure = False
    if curve or spec.settings.curve:
        spec.settings.curve = True
        spec.settings.__post_init__()  # curve needs tcp
        spec.settings.curve_dir = str(_roster_curve(roster, spec.settings).resolve())
    spec.save(roster)
    return path


def _roster_curve(roster: Path, settings: SwarmSettings) -> Path:
    """Fresh CURVE keys for every role of a roster, in ``ROSTER.curve/`` (no launcher: no ctl)."""
    names = swarm_names(settings.n_agents, settings.world_model == "node", launcher=False)
    return generate_keys(roster.with_suffix(".curve"), names)
