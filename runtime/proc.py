"""Starting one swarm role as its own OS process: sockets, roster, signals, and never outliving the
launcher.

``python -m rmio.runtime.proc ROLE ...`` is what the launcher spawns (lighter than the click CLI);
``rmio swarm env-host|agent|wm-node --roster FILE`` reaches the same :func:`run_role`.
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import logging
import os
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path

from rmio.errors import RmioError
from rmio.runtime import timeline
from rmio.runtime.auth import Auth, load_key
from rmio.runtime.curve import CurveKeys, swarm_names
from rmio.runtime.node import NodeBase
from rmio.runtime.settings import Roster, SwarmSettings
from rmio.runtime.stop import Stop
from rmio.runtime.transport import check_bundle_fits, make_node
from rmio.runtime.wire import MAX_INC

log = logging.getLogger(__name__)
PR_SET_PDEATHSIG = 1


def die_with_parent(parent_pid: int) -> None:
    """Linux: SIGKILL this process when the launcher dies, however it dies (no orphans, even on a
    crash)."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):  # not Linux: the orphan timeout still ends us
        log.debug("prctl(PR_SET_PDEATHSIG) unavailable")
    if os.getppid() != parent_pid:  # the launcher died before we armed the signal
        os._exit(1)


def install_signal_handlers() -> None:
    def handler(signum: int, _frame: object) -> None:
        raise Stop(signal.Signals(signum).name)

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)


def join_swarm(
    name: str,
    settings: SwarmSettings,
    bind: str,
    *,
    control: str | None = None,
    endpoints: dict[str, str] | None = None,
    role: str = "agent",
    inc: int = 0,
) -> NodeBase:
    """Bind, then learn everyone's endpoint (from the launcher's ROSTER or a roster file) and
    connect. Without a launcher (``control``) the name ``ctl`` belongs to nobody: a message
    claiming it is an unknown sender's."""
    known = settings.known if control is not None else _without_launcher(settings.known)
    node = make_node(name, bind, known, swarm_curve(settings, name, launcher=control is not None))
    node.inc = inc
    node.auth = swarm_auth(settings, name)
    try:
        if control is not None:
            node.connect("ctl", control)
            endpoints = _register(node, settings, role, inc)
        assert endpoints is not None
        for peer, endpoint in endpoints.items():
            if peer != name:
                node.connect(peer, endpoint)
    except BaseException:
        node.close()
        raise
    return node


def _without_launcher(known: Callable[[str], bool]) -> Callable[[str], bool]:
    return lambda peer: peer != "ctl" and known(peer)


def swarm_auth(settings: SwarmSettings, name: str) -> Auth | None:
    """The process's message authentication under the swarm's key; None, said loudly, for an
    insecure swarm."""
    if settings.key_file:
        return Auth(load_key(settings.key_file))
    if not settings.insecure:
        raise RmioError(
            f"{name}: the swarm has no key_file and is not marked insecure: refusing to run "
            "unauthenticated (`rmio swarm keys ROSTER`, or 'insecure: true' for a trusted lab)"
        )
    log.warning(
        "%s: INSECURE swarm: messages are not authenticated; anyone who can reach this %s "
        "endpoint can inject them (trusted networks only)",
        name,
        settings.transport,
    )
    return None


def swarm_curve(settings: SwarmSettings, name: str, launcher: bool) -> CurveKeys | None:
    """The process's CURVE keypair and its peers' public keys, when the swarm runs CURVE."""
    if not settings.curve:
        return None
    if not settings.curve_dir:
        raise RmioError(f"{name}: the swarm asks for curve but names no curve_dir")
    wm = settings.world_model == "node"
    return CurveKeys.load(settings.curve_dir, name, swarm_names(settings.n_agents, wm, launcher))


def _register(node: NodeBase, settings: SwarmSettings, role: str, inc: int) -> dict[str, str]:
    deadline = time.monotonic() + settings.startup_timeout_s
    registered, again = False, 0.0
    while time.monotonic() < deadline:
        # over datagrams a sent REGISTER proves nothing: it goes again until the ROSTER comes
        if not registered or (not node.confirms_delivery and time.monotonic() >= again):
            registered = node.send(
                "ctl", "REGISTER", role=role, endpoint=node.endpoint, pid=os.getpid()
            )
            again = time.monotonic() + 0.2
        for msg in node.poll(10 if not registered else 100):
            if msg.src == "ctl" and msg.type == "ROSTER":
                return {str(k): str(v) for k, v in msg["endpoints"].items()}
            if msg.src == "ctl" and msg.type == "BYE":
                raise Stop("launcher said bye")
    raise RmioError(
        f"{node.name}: no roster from the launcher within {settings.startup_timeout_s:.0f} s"
    )


def new_incarnation() -> int:
    """This process's incarnation: microseconds since the epoch, so a restarted process outranks
    its predecessor (whose messages, still in flight, are then dropped as ``stale_incarnation``)."""
    return min(time.time_ns() // 1000, MAX_INC)


def _freeze_startup_objects() -> None:
    """Keep the cyclic garbage collector off everything the role built before its loop (models,
    modules).

    A full collection walks every tracked object: in a loaded agent or env host that took 22-29 ms
    on the 2-core VM, a whole step's deadline, and it struck mid-run. The loop itself makes next to
    no cyclic garbage (36 objects collected over 3000 steps), so what it allocates stays
    collectable.
    """
    gc.collect()
    gc.freeze()


def run_role(
    role: str,
    settings: SwarmSettings,
    name: str,
    bind: str,
    *,
    control: str | None = None,
    endpoints: dict[str, str] | None = None,
) -> int:
    """Run one role to completion; returns the process exit code."""
    inc = new_incarnation()
    if timeline.ENABLED:
        timeline.watch_gc()
    check_bundle_fits(bind.partition("://")[0], settings.bundle)
    try:
        node = join_swarm(
            name,
            settings,
            bind,
            control=control,
            endpoints=endpoints,
            role={"env-host": "env", "wm-node": "wm"}.get(role, "agent"),
            inc=inc,
        )
    except Stop:
        return 0
    try:
        if role == "env-host":
            from rmio.runtime.envhost import EnvHost

            process = EnvHost(settings, node)
        elif role == "agent":
            from rmio.agents.agent import Agent

            process = Agent(int(name[1:]), settings, node, inc)
        elif role == "wm-node":
            from rmio.coordinator.wmnode import WorldModelNode

            process = WorldModelNode(settings, node, inc)
        else:
            raise RmioError(f"unknown role '{role}'")
        _freeze_startup_objects()
        if timeline.ENABLED:
            timeline.sched_snapshot()
        process.run()
        if timeline.ENABLED:
            timeline.sched_snapshot()
    except Stop as why:
        log.info("%s stopping: %s", name, why)
    finally:
        node.close()
        timeline.dump(name)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m rmio.runtime.proc")
    parser.add_argument("role", choices=("env-host", "agent", "wm-node"))
    parser.add_argument("--name", required=True)
    parser.add_argument("--settings", type=Path, help="settings JSON (embedded launcher)")
    parser.add_argument("--roster", type=Path, help="roster file (multi-host)")
    parser.add_argument("--bind", default=None)
    parser.add_argument("--control", default=None)
    parser.add_argument("--parent-pid", type=int, default=None)
    parser.add_argument("--log-level", default="WARNING")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=args.log_level, format=f"%(asctime)s {args.name} %(levelname)s %(name)s: %(message)s"
    )
    if args.parent_pid is not None:
        die_with_parent(args.parent_pid)
    install_signal_handlers()
    try:
        if args.roster is not None:
            roster = Roster.load(args.roster)
            settings, endpoints = roster.settings, roster.endpoints
            bind = args.bind or roster.bind_for(args.name)
        else:
            if args.settings is None or args.bind is None:
                parser.error("--settings and --bind are needed without --roster")
            settings, endpoints, bind = SwarmSettings.load(args.settings), None, args.bind
        return run_role(
            args.role, settings, args.name, bind, control=args.control, endpoints=endpoints
        )
    except Stop:
        return 0
    except RmioError as exc:
        log.error("%s", exc)
        print(f"rmio: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
