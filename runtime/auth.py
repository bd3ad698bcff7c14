"""Message authentication for every transport: a per-swarm secret, an HMAC on every message, and
a replay window per sender.

Each message gets one trailing frame, ``seq (u64 little-endian) || tag (16 bytes)``, where ``seq``
counts the sender's messages since its start (1, 2, ...; every transmission, resends included, has
its own) and ``tag`` is keyed BLAKE2b (RFC 7693, 128-bit output) under the swarm's key over the
addressee's name, ``seq``, the frame lengths and the frames. The header inside the frames already
names the sender (``src``) and its incarnation (``inc``), so the tag binds who sent it, to whom, in
which incarnation and as which of its messages. A receiver checks the tag before parsing anything
(``bad_auth``), then, once the header is parsed, drops what it has already accepted from that
sender's incarnation (``replayed``: a window of the newest :data:`WINDOW` sequence numbers, so
datagrams reordered by a network still pass).

Why these choices: keyed BLAKE2b is a MAC by design (a PRF under its key, no HMAC construction
needed) in the standard library's C code. A swarm process meets each message with cold caches,
and there the tag, not the arithmetic, is what authentication costs a round: HMAC-SHA256 (the first
version) cost 34-90 us per seal or check in a process that has just woken, keyed BLAKE2b about half
(bench/results/auth.md, whose udp rows measured HMAC-SHA256 at +23-31% of the round p50 against a
20% target). 128 bits of tag leave a forger a 2^-128 chance per try, and the 24-byte frame is small
beside a 100-byte STEP. The key is shared by the whole swarm: it keeps out everyone without
it, but a member can pose as another member unless CURVE binds each connection to its role
(``runtime/curve.py``; runtime/PROTOCOL.md, "Threat model").
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import secrets
import stat
import struct
from collections.abc import Sequence
from pathlib import Path

from rmio.errors import ConfigError

log = logging.getLogger(__name__)

KEY_BYTES = 32
"""Random bytes in a generated key (a key file may hold more, never fewer)."""
TAG_BYTES = 16
MAX_MAC_KEY = 64
"""BLAKE2b's longest key; a longer key file is hashed down to it."""
SEQ_BYTES = 8
TRAILER_BYTES = SEQ_BYTES + TAG_BYTES
WINDOW = 1024
"""Sequence numbers behind the newest one that may still arrive once (reordering over udp)."""
_SEQ = struct.Struct("<Q")
_WINDOW_MASK = (1 << WINDOW) - 1


def generate_key(path: str | Path) -> Path:
    """Write a fresh random key (hex, one line) to ``path``, readable by its owner only."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(secrets.token_hex(KEY_BYTES) + "\n")
    os.chmod(path, 0o600)
    return path


def load_key(path: str | Path) -> bytes:
    """The key in ``path`` (hex); refuses a short or unreadable one and warns about a file others
    may read."""
    path = Path(path)
    try:
        text = path.read_text().strip()
        key = bytes.fromhex(text)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot read the swarm key '{path}': {exc}") from None
    if len(key) < KEY_BYTES:
        raise ConfigError(
            f"the swarm key '{path}' holds {len(key)} bytes, at least {KEY_BYTES} are needed "
            "(`rmio swarm keys ROSTER` writes one)"
        )
    if path.stat().st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        log.warning("the swarm key %s can be read by other users: chmod 600 it", path)
    return key


class Auth:
    """One process's sealing and checking of messages under the swarm's key."""

    def __init__(self, key: bytes) -> None:
        if len(key) < KEY_BYTES:
            raise ConfigError(f"a swarm key needs at least {KEY_BYTES} bytes")
        self.key = key
        mac_key = key if len(key) <= MAX_MAC_KEY else hashlib.blake2b(key).digest()
        self._mac = hashlib.blake2b(key=mac_key, digest_size=TAG_BYTES)
        """The keyed state, copied per message (no key schedule per message: a swarm process
        wakes for each message with cold caches)."""
        self.seq = 0
        self.windows: dict[str, list[int]] = {}
        """Sender -> [incarnation, newest sequence number, bitmap of the window below it]."""

    def _tag(self, to: str, seq: bytes, frames: Sequence[bytes | memoryview]) -> bytes:
        lengths = struct.pack(f"<{len(frames)}I", *map(len, frames))
        mac = self._mac.copy()
        mac.update(b"".join([to.encode(), b"\0", seq, lengths, *frames]))
        return mac.digest()

    def seal(self, to: str, frames: Sequence[bytes | memoryview]) -> list[bytes | memoryview]:
        """The frames for one transmission to ``to``: the message's, then its trailer."""
        self.seq += 1
        seq = _SEQ.pack(self.seq)
        return [*frames, seq + self._tag(to, seq, frames)]

    def open(
        self, me: str, frames: Sequence[bytes | memoryview]
    ) -> tuple[Sequence[bytes | memoryview], int] | None:
        """The message's frames and its sequence number, or None when the tag does not match
        (forged, damaged, sealed with another key or for another addressee)."""
        if len(frames) < 2 or len(frames[-1]) != TRAILER_BYTES:
            return None
        trailer = bytes(frames[-1])
        seq, body = trailer[:SEQ_BYTES], frames[:-1]
        if not hmac.compare_digest(trailer[SEQ_BYTES:], self._tag(me, seq, body)):
            return None
        return body, _SEQ.unpack(seq)[0]

    def fresh(self, src: str, inc: int, seq: int) -> bool:
        """Whether (src, inc, seq) is new: False for a message already accepted, or one too far
        behind the newest to tell (a replay)."""
        win = self.windows.get(src)
        if win is None or inc > win[0]:
            self.windows[src] = [inc, seq, 1]
            return True
        if inc < win[0]:
            return False
        newest, bits = win[1], win[2]
        if seq > newest:
            shift = seq - newest
            win[1] = seq
            win[2] = ((bits << shift) | 1) & _WINDOW_MASK if shift < WINDOW else 1
            return True
        back = newest - seq
        if back >= WINDOW or (bits >> back) & 1:
            return False
        win[2] = bits | (1 << back)
        return True
