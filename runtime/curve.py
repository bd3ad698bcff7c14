"""CurveZMQ for the ZeroMQ transports: a keypair per role, a ZAP handler that admits only the
roster's public keys, and the name each connection's key is bound to.

Layout of a key folder (``rmio swarm keys``, or the launcher's private folder for one run)::

    KEYS/public/NAME.key          the role's public key (Z85, 40 characters): every machine
    KEYS/secret/NAME.key_secret   its secret key (Z85), mode 600: only the machine running NAME

so a deployment copies ``public/`` everywhere and each role's secret to its own machine only.

Design (after pyzmq's ``zmq.auth``, written for this protocol): every inbox is a CURVE server and
every outbox connects as a CURVE client that knows the peer's public key (so the client also knows
it reached the real peer). libzmq asks the ZAP handler of the socket's context about each
handshake; the handler answers 200 with the *user id* = the role whose public key it is, or 400
(the connection is closed before any message passes). The receiving inbox reads that user id from
each message's metadata and drops a message whose routing id or ``src`` names another role
(``wrong_key``), so a member holding its own keys still cannot speak as another member.

Why a handler thread rather than the role's event loop: libzmq holds a handshake until the ZAP
reply, and a role's loop can be busy for a second (loading its ONNX models, a simulator step); the
thread answers at once and costs nothing between handshakes (it waits in ``poll`` with the GIL
released). Why not ``zmq.auth.ThreadAuthenticator``: it reads its own certificate format, knows
keys but not names, and logs each handshake; here the name is what matters.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import zmq
import zmq.utils.z85

from rmio.errors import ConfigError

log = logging.getLogger(__name__)

ZAP_ENDPOINT = "inproc://zeromq.zap.01"
DOMAIN = b"rmio"


def generate_keys(folder: str | Path, names: Iterable[str]) -> Path:
    """A fresh keypair for each of ``names`` under ``folder`` (``public/``, ``secret/`` 0700 with
    files 0600); returns the folder."""
    folder = Path(folder)
    (folder / "public").mkdir(parents=True, exist_ok=True)
    (folder / "secret").mkdir(parents=True, exist_ok=True)
    os.chmod(folder / "secret", 0o700)
    for name in names:
        public, secret = zmq.curve_keypair()
        (folder / "public" / f"{name}.key").write_text(public.decode() + "\n")
        path = folder / "secret" / f"{name}.key_secret"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as out:
            out.write(secret.decode() + "\n")
        os.chmod(path, 0o600)
    return folder


def _read_z85(path: Path, what: str) -> bytes:
    try:
        text = path.read_text().strip().encode()
    except OSError as exc:
        raise ConfigError(f"cannot read the CURVE {what} '{path}': {exc}") from None
    if len(text) != 40:
        raise ConfigError(f"the CURVE {what} '{path}' is not a Z85 key of 40 characters")
    return text


@dataclass
class CurveKeys:
    """One process's keypair and the public key of every role it may talk to."""

    name: str
    public: bytes
    secret: bytes
    peers: dict[str, bytes]
    """Role name -> its public key (Z85)."""

    @classmethod
    def load(cls, folder: str | Path, name: str, names: Iterable[str]) -> CurveKeys:
        """``name``'s secret key and the public keys of ``names`` from a key folder."""
        folder = Path(folder)
        secret = _read_z85(folder / "secret" / f"{name}.key_secret", f"secret key of {name}")
        try:
            public = zmq.curve_public(secret)
        except zmq.ZMQError as exc:
            raise ConfigError(f"the CURVE secret key of {name} is not valid: {exc}") from None
        peers = {
            peer: _read_z85(folder / "public" / f"{peer}.key", f"public key of {peer}")
            for peer in names
        }
        if peers.get(name, public) != public:
            raise ConfigError(
                f"the CURVE keys of {name} in '{folder}' do not match: its public key is not the "
                "one its secret key makes (`rmio swarm keys ROSTER` writes both)"
            )
        return cls(name, public, secret, peers)


class ZapHandler:
    """The ZAP handler of one ZeroMQ context: admits a CURVE client whose public key is one of
    the swarm's, under that role's name, and refuses every other (counted in ``refused``)."""

    def __init__(self, ctx: zmq.Context, keys: CurveKeys) -> None:
        self.names = {zmq.utils.z85.decode(pub): name for name, pub in keys.peers.items()}
        self.refused = 0
        self.sock = ctx.socket(zmq.REP)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.bind(ZAP_ENDPOINT)  # before any CURVE server binds: without it libzmq admits all
        self.thread = threading.Thread(target=self._serve, name="zap", daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        """Answer until the context is terminated (ETERM ends the thread, closing its socket)."""
        try:
            while True:
                if not self.sock.poll(1000):
                    continue
                self.sock.send_multipart(self.answer(self.sock.recv_multipart()))
        except zmq.ContextTerminated:
            pass
        except zmq.ZMQError as exc:  # never leave the context hanging: the socket must close
            log.warning("ZAP handler stopped: %s", exc)
        finally:
            with contextlib.suppress(zmq.ZMQError):
                self.sock.close(linger=0)

    def answer(self, request: list[bytes]) -> list[bytes]:
        """The ZAP reply to one request (RFC 27): 200 and the role's name for a known key."""
        version, rid = request[0], request[1] if len(request) > 1 else b""
        name = None
        if len(request) >= 7 and request[2] == DOMAIN and request[5] == b"CURVE":
            name = self.names.get(request[6])
        if name is None:
            self.refused += 1
            return [version, rid, b"400", b"key not in the roster", b"", b""]
        return [version, rid, b"200", b"OK", name.encode(), b""]


def secure(ctx: zmq.Context, inbox: zmq.Socket, out: zmq.Socket, keys: CurveKeys) -> ZapHandler:
    """Make ``inbox`` a CURVE server behind a ZAP handler and ``out`` a CURVE client (before either
    binds or connects); the peer's public key is set per connection (:func:`server_key`)."""
    handler = ZapHandler(ctx, keys)
    inbox.setsockopt(zmq.ZAP_DOMAIN, DOMAIN)
    inbox.setsockopt(zmq.CURVE_SERVER, 1)
    inbox.setsockopt(zmq.CURVE_SECRETKEY, keys.secret)
    inbox.setsockopt(zmq.CURVE_PUBLICKEY, keys.public)
    out.setsockopt(zmq.CURVE_SECRETKEY, keys.secret)
    out.setsockopt(zmq.CURVE_PUBLICKEY, keys.public)
    return handler


def server_key(out: zmq.Socket, keys: CurveKeys, peer: str) -> None:
    """Before connecting ``out`` to ``peer``: the public key that peer's inbox must prove."""
    public = keys.peers.get(peer)
    if public is None:
        raise ConfigError(f"no CURVE public key for {peer}")
    out.setsockopt(zmq.CURVE_SERVERKEY, public)


def swarm_names(n_agents: int, wm: bool, launcher: bool) -> list[str]:
    """Every role of a swarm that has a keypair: env, the agents, wm, and ctl with a launcher."""
    names = ["env", *(f"a{i}" for i in range(n_agents))]
    return names + (["wm"] if wm else []) + (["ctl"] if launcher else [])
