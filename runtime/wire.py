"""The swarm's wire format: one msgpack header frame plus raw binary array frames, strictly
validated.

A message is ``[header, array_0, array_1, ...]``. The header is a msgpack map with the protocol
version ``v``, the type ``t``, the sender ``src``, the type's own fields and ``arr``, a list of
``[name, dtype, shape]`` describing each following frame. Every array is named, so a message whose
arrays are optional (a STEP for a blind agent carries available actions but no observation) says
which ones it carries and is never read by position. Arrays never go through msgpack (no copies, no
pickle). Decoding checks everything a peer could get wrong or forge: sizes, version, sender, type,
every field's type and range, array dtypes, shapes and byte counts. Anything off raises
:class:`WireError` with a short reason that the receiver counts before dropping the message; the
decoder never raises anything else. Shapes that depend on the task (observation width...) are
checked by the receiving role with :meth:`Message.array`.
"""

from __future__ import annotations

import functools
import math
import re
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import msgpack
import numpy as np

from rmio.runtime.vocabulary import ACT_KINDS

PROTOCOL_VERSION = 3
MAX_MESSAGE_BYTES = 4 << 20
MAX_HEADER_BYTES = 32 << 10
MAX_FRAMES = 8
MAX_DIM = 1 << 16
DTYPES = ("<f4", "<i8", "|b1")
_NP_DTYPES = {d: np.dtype(d) for d in DTYPES}
NAME_RE = re.compile(r"^(env|ctl|wm|a\d{1,4})$")
_LITTLE = sys.byteorder == "little"
REASONS = (
    "oversized",
    "malformed",
    "version",
    "unknown_type",
    "unknown_sender",
    "bad_field",
    "bad_array",
)


class WireError(Exception):
    """A message that must be dropped; ``reason`` is one of REASONS (the drop counters' keys)."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


# ------------------------------------------------------------------------------------------
# Field validators: each returns True when the value is acceptable.

_MAX_INT = 1 << 53
MAX_COUNTER = 1 << 48
"""Counters the roles do arithmetic on (episodes, steps, global steps, epochs, request ids) stay
below this: adding any bounded setting to one stays far below the 2^53 the encoder accepts, so no
arithmetic on a received value can produce a field the encoder refuses."""
MAX_INC = _MAX_INT - 1
"""Incarnations (microseconds since the epoch at process start) fit in 53 bits until 2255."""


def _uint(v: Any) -> bool:
    return type(v) is int and 0 <= v < _MAX_INT


def _inc(v: Any) -> bool:
    return type(v) is int and 0 <= v <= MAX_INC


def _counter(v: Any) -> bool:
    return type(v) is int and 0 <= v < MAX_COUNTER


def _signed_counter(v: Any) -> bool:
    return type(v) is int and -1 <= v < MAX_COUNTER


def _int(v: Any) -> bool:
    return type(v) is int and -_MAX_INT < v < _MAX_INT


def _agent_or_none(v: Any) -> bool:
    return type(v) is int and -1 <= v <= 9999


def _bool(v: Any) -> bool:
    return type(v) is bool


def _name(v: Any) -> bool:
    return type(v) is str and NAME_RE.match(v) is not None


def _short_str(v: Any) -> bool:
    return type(v) is str and len(v) <= 512


def _one_of(*choices: str) -> Callable[[Any], bool]:
    return lambda v: type(v) is str and v in choices


def _bool_list(v: Any) -> bool:
    return type(v) is list and len(v) <= MAX_DIM and all(type(x) is bool for x in v)


def _scalar_map(v: Any) -> bool:
    """Small flat map of names to numbers, short strings or booleans (stats, status, roster)."""
    if type(v) is not dict or len(v) > 512:
        return False
    for k, x in v.items():
        if type(k) is not str or len(k) > 64:
            return False
        if not (type(x) in (int, float, bool) or (type(x) is str and len(x) <= 512)):
            return False
        if type(x) is int and not _int(x):
            return False
    return True


def _str_list(v: Any) -> bool:
    return type(v) is list and len(v) <= 64 and all(type(x) is str and len(x) <= 64 for x in v)


ROLES = ("env", "agent", "wm", "ctl")


@dataclass(frozen=True)
class ArraySpec:
    """One named array a message type may carry: its dtypes, its numbers of dimensions, and whether
    it is always there."""

    name: str
    dtypes: tuple[str, ...]
    ndims: tuple[int, ...]
    optional: bool = False


F32 = ("<f4",)
ACTION = ("<f4", "<i8")
BOOL = ("|b1",)


def _arr(name: str, dtypes: tuple[str, ...], *ndims: int, optional: bool = False) -> ArraySpec:
    return ArraySpec(name, dtypes, ndims, optional)


@dataclass(frozen=True)
class Schema:
    """A message type: its fields with their validators, and its arrays in the order they travel."""

    fields: dict[str, Callable[[Any], bool]]
    arrays: tuple[ArraySpec, ...] = ()
    index: dict[str, int] = field(init=False, repr=False, compare=False)
    """Array name -> its position in ``arrays``."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "index", {a.name: k for k, a in enumerate(self.arrays)})


_EPOCH = {"epoch": _counter, "leader": _agent_or_none}
_AT = {"ep": _counter, "step": _counter}
STATS_SAMPLES = tuple(f"s{k}" for k in range(MAX_FRAMES))
"""STATS carries up to MAX_FRAMES latency-sample arrays, named s0, s1, ...; its ``names`` field says
what each is."""

SCHEMAS: dict[str, Schema] = {
    # membership
    "HELLO": Schema({"role": _one_of(*ROLES), **_EPOCH}),
    "HB": Schema(dict(_EPOCH)),
    "BYE": Schema({"reason": _short_str}),
    # env host <-> agent: the observation only when the agent observes, available actions only when
    # discrete
    "STEP": Schema(
        {**_AT, "seq": _counter, "seen": _bool, "dflt": _bool},
        (_arr("obs", F32, 1, optional=True), _arr("avail", BOOL, 1, optional=True)),
    ),
    "ACTION": Schema(
        {**_AT, "kind": _one_of(*ACT_KINDS), **_EPOCH, "tx": _uint}, (_arr("action", ACTION, 0, 1),)
    ),
    # loss handling, election, history sync
    "LOST": Schema({**_AT, **_EPOCH, "bcast": _bool, "retry": _bool}),
    "COORD": Schema(dict(_EPOCH)),
    "GATHER": Schema(
        {
            **_AT,
            "epoch": _counter,
            "obs_from": _counter,
            "act_from": _counter,
            "stream": _signed_counter,
        }
    ),
    "STREAM": Schema({"epoch": _counter, "until": _signed_counter}),
    "HISTORY": Schema(
        {
            **_AT,
            "epoch": _counter,
            "obs_from": _counter,
            "act_from": _counter,
            "seen": _bool_list,
            "known": _bool_list,
            "push": _bool,
        },
        (_arr("obs", F32, 2), _arr("act", ACTION, 1, 2)),
    ),
    "RECON": Schema({**_AT, "epoch": _counter, "start": _counter}, (_arr("obs", F32, 1),)),
    # world-model node: the latent state travels only when the request continues a chain
    "WM_REQ": Schema(
        {**_AT, "rid": _counter, "cont": _bool},
        (
            _arr("obs", F32, 3),
            _arr("act", ACTION, 2, 3),
            _arr("mask", F32, 2),
            _arr("h", F32, 2, optional=True),
            _arr("z", F32, 2, optional=True),
        ),
    ),
    "WM_REP": Schema(
        {"rid": _counter, "ok": _bool, "us": _uint},
        (
            _arr("obs", F32, 2, optional=True),
            _arr("h", F32, 2, optional=True),
            _arr("z", F32, 2, optional=True),
        ),
    ),
    # metrics and control
    "STATS_REQ": Schema({}),
    "STATS": Schema(
        {"counts": _scalar_map, "names": _str_list},
        tuple(_arr(name, F32, 1, optional=True) for name in STATS_SAMPLES),
    ),
    "REGISTER": Schema({"role": _one_of(*ROLES), "endpoint": _short_str, "pid": _uint}),
    "ROSTER": Schema({"version": _uint, "endpoints": _scalar_map}),
    "STATUS": Schema({"status": _scalar_map}),
    "DONE": Schema({"report": _short_str, "ok": _bool}),
}


@dataclass
class Message:
    type: str
    src: str
    fields: dict[str, Any]
    arrays: dict[str, np.ndarray] = field(default_factory=dict)
    """The arrays the message carries, by name (in the order they travelled)."""
    nbytes: int = 0
    inc: int = 0
    """The sender's incarnation (header ``inc``)."""
    to: int = 0
    """The incarnation of the receiver the sender meant (header ``to``; 0: whichever is there)."""

    def __getitem__(self, key: str) -> Any:
        return self.fields[key]

    def has(self, name: str) -> bool:
        return name in self.arrays

    def array(self, name: str, shape: Sequence[int | None], dtype: str | None = None) -> np.ndarray:
        """The named array, checked against an exact shape (None = any length on that axis)."""
        a = self.arrays.get(name)
        if a is None:
            raise WireError("bad_array", f"{self.type} lacks array {name!r}")
        if a.ndim != len(shape) or any(
            s is not None and s != d for s, d in zip(shape, a.shape, strict=True)
        ):
            raise WireError(
                "bad_array", f"{self.type}.{name} has shape {a.shape}, expected {tuple(shape)}"
            )
        if dtype is not None and a.dtype.str != dtype:
            raise WireError(
                "bad_array", f"{self.type}.{name} has dtype {a.dtype.str}, expected {dtype}"
            )
        return a


def encode(
    msg_type: str,
    src: str,
    arrays: Mapping[str, np.ndarray] | None = None,
    *,
    inc: int = 0,
    to: int = 0,
    **fields: Any,
) -> list[bytes]:
    """Frames for one message; validated like an incoming one so a bug never reaches the wire.
    ``arrays`` maps array names to arrays (any order; they travel in the schema's order); ``inc`` is
    the sender's incarnation and ``to`` the receiver's (0: any), so that nothing meant for a dead
    process is taken by its successor."""
    if not (_inc(inc) and _inc(to)):
        raise WireError("bad_field", f"{msg_type}: incarnation {inc!r} -> {to!r}"[:120])
    schema = SCHEMAS[msg_type]
    _check_fields(msg_type, schema, fields)
    arrays = arrays or {}
    if not isinstance(arrays, Mapping):
        raise TypeError(
            f"{msg_type}: arrays must map array names to arrays, got {type(arrays).__name__}"
        )
    unknown = [name for name in arrays if name not in schema.index]
    if unknown:
        raise WireError("bad_array", f"{msg_type} has no array {unknown[0]!r}")
    arrs = [
        (spec.name, np.asarray(arrays[spec.name], order="C"))
        for spec in schema.arrays
        if spec.name in arrays
    ]
    header = {
        "v": PROTOCOL_VERSION,
        "t": msg_type,
        "src": src,
        "inc": inc,
        "to": to,
        **fields,
        "arr": [[name, a.dtype.str, list(a.shape)] for name, a in arrs],
    }
    _check_arrays(msg_type, schema, header["arr"])
    return [msgpack.packb(header, use_bin_type=True), *(a.tobytes() for _, a in arrs)]


def frames_size(frames: Sequence[bytes | memoryview]) -> int:
    return sum(map(len, frames))


def decode(
    frames: Sequence[bytes],
    sender: str | None = None,
    known: Callable[[str], bool] | None = None,
    max_bytes: int = MAX_MESSAGE_BYTES,
) -> Message:
    """Parse and validate one message; ``sender`` is the transport's identity for it, ``known`` says
    whether a sender name belongs to this swarm. Raises WireError only."""
    try:
        return _decode(frames, sender, known, max_bytes)
    except WireError:
        raise
    except Exception as exc:  # any parser surprise is a malformed message, never a crash
        raise WireError("malformed", f"{type(exc).__name__}: {exc}") from None


_unpack = functools.partial(
    msgpack.unpackb,
    raw=False,
    strict_map_key=True,
    use_list=True,
    max_str_len=MAX_HEADER_BYTES,
    max_bin_len=0,
    max_array_len=MAX_DIM,
    max_map_len=1024,
    max_ext_len=0,
)
"""The header parser, with limits that keep a hostile header from allocating much."""


def _decode(
    frames: Sequence[bytes], sender: str | None, known: Callable[[str], bool] | None, max_bytes: int
) -> Message:
    if not frames or len(frames) > MAX_FRAMES + 1:
        raise WireError("malformed", f"{len(frames)} frames")
    total = frames_size(frames)
    if total > max_bytes or len(frames[0]) > MAX_HEADER_BYTES:
        raise WireError("oversized", f"{total} bytes")
    try:
        header = _unpack(frames[0])
    except Exception as exc:
        raise WireError("malformed", f"header: {type(exc).__name__}") from None
    if type(header) is not dict:
        raise WireError("malformed", "header is not a map")
    # what remains of the header once the common keys are popped is the type's own fields
    version, msg_type, src, specs, inc, to = (
        header.pop("v", None),
        header.pop("t", None),
        header.pop("src", None),
        header.pop("arr", None),
        header.pop("inc", None),
        header.pop("to", None),
    )
    if version != PROTOCOL_VERSION or type(version) is not int:
        raise WireError("version", f"version {version!r}")
    schema = SCHEMAS.get(msg_type) if type(msg_type) is str else None
    if schema is None:
        raise WireError("unknown_type", repr(msg_type)[:40])
    if (
        not _name(src)
        or (sender is not None and src != sender)
        or (known is not None and not known(src))
    ):
        raise WireError("unknown_sender", repr(src)[:40])
    if not (_inc(inc) and _inc(to)):
        raise WireError("bad_field", f"{msg_type}: incarnation {inc!r} -> {to!r}"[:120])
    _check_fields(msg_type, schema, header)
    if type(specs) is not list:
        raise WireError("bad_array", "arr is not a list")
    _check_arrays(msg_type, schema, specs)
    if len(specs) != len(frames) - 1:
        raise WireError("bad_array", f"{len(specs)} array headers for {len(frames) - 1} frames")
    arrays = {}
    for (name, dtype, shape), frame in zip(specs, frames[1:], strict=True):
        dt = _NP_DTYPES[dtype]
        if len(frame) != dt.itemsize * math.prod(shape):
            raise WireError("bad_array", f"frame of {len(frame)} bytes for {dtype}{shape}")
        if dt.kind == "f" and not _finite(frame):
            raise WireError("bad_array", "non-finite values")
        # frames may be memoryviews (udp)
        if dt.kind == "b" and bytes(frame).translate(None, b"\x00\x01"):
            raise WireError("bad_array", "booleans other than 0 and 1")
        arrays[name] = np.frombuffer(frame, dtype=dt).reshape(shape)
    return Message(msg_type, src, header, arrays, total, inc, to)


_SMALL = 256 * 4


def _finite(frame: bytes) -> bool:
    """Whether every float32 of a frame is finite: their float64 sum is non-finite exactly when some
    value is (finite float32 values cannot overflow it). A small frame is summed by the interpreter:
    a process wakes up with cold caches for every message, and numpy's reduction machinery is the
    costliest code to bring back (on the 2-core VM, 0.12 ms of a cold STEP decode's 0.28 ms)."""
    if len(frame) <= _SMALL and _LITTLE:
        return math.isfinite(sum(memoryview(frame).cast("f")))
    return math.isfinite(np.add.reduce(np.frombuffer(frame, "<f4"), None, np.float64))


def _check_fields(msg_type: str, schema: Schema, fields: dict[str, Any]) -> None:
    if fields.keys() != schema.fields.keys():
        extra = sorted(set(fields) - set(schema.fields))
        missing = sorted(set(schema.fields) - set(fields))
        raise WireError("bad_field", f"{msg_type}: unknown {extra[:3]} missing {missing[:3]}")
    for name, ok in schema.fields.items():
        if not ok(fields[name]):
            raise WireError("bad_field", f"{msg_type}.{name}={fields[name]!r}"[:120])


def _check_arrays(msg_type: str, schema: Schema, specs: list[Any]) -> None:
    """Each entry is ``[name, dtype, shape]``; names follow the schema's order, once each, and every
    array that is not optional is there."""
    if len(specs) > len(schema.arrays):
        raise WireError("bad_array", f"{msg_type} carries {len(specs)} arrays")
    last = -1
    for entry in specs:
        if type(entry) is not list or len(entry) != 3:
            raise WireError("bad_array", "array header is not [name, dtype, shape]")
        name, dtype, shape = entry
        k = schema.index.get(name) if type(name) is str else None
        if k is None:
            raise WireError("bad_array", f"{msg_type} has no array {name!r}"[:80])
        if k <= last:
            raise WireError("bad_array", f"{msg_type} array {name!r} out of order or repeated"[:80])
        for skipped in schema.arrays[last + 1 : k]:
            if not skipped.optional:
                raise WireError("bad_array", f"{msg_type} lacks array {skipped.name!r}")
        last = k
        spec = schema.arrays[k]
        if dtype not in spec.dtypes:
            raise WireError("bad_array", f"{msg_type}.{name} dtype {dtype!r}"[:80])
        if type(shape) is not list or len(shape) not in spec.ndims:
            raise WireError("bad_array", f"{msg_type}.{name} shape {shape!r}"[:80])
        if not all(type(d) is int and 0 <= d <= MAX_DIM for d in shape):
            raise WireError("bad_array", f"{msg_type}.{name} shape {shape!r}"[:80])
    for spec in schema.arrays[last + 1 :]:
        if not spec.optional:
            raise WireError("bad_array", f"{msg_type} lacks array {spec.name!r}")
