"""The wire codec: every message type round-trips; anything malformed raises WireError (and only
that)."""

from __future__ import annotations

import itertools
import re
from pathlib import Path
from typing import Any

import msgpack
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from swarm_helpers import KNOWN, TEMPLATES, frames_of

from rmio.runtime.wire import REASONS, SCHEMAS, Message, WireError, decode, encode

pytestmark = pytest.mark.timeout(120)


def test_templates_cover_every_type() -> None:
    assert set(TEMPLATES) == set(SCHEMAS)


@pytest.mark.parametrize("msg_type", sorted(TEMPLATES))
def test_round_trip(msg_type: str) -> None:
    fields, arrays = TEMPLATES[msg_type]
    msg = decode(frames_of(msg_type), sender="a1", known=KNOWN)
    assert isinstance(msg, Message) and msg.type == msg_type and msg.src == "a1"
    assert msg.fields == fields
    assert list(msg.arrays) == list(arrays)
    for name, want in arrays.items():
        got = msg.arrays[name]
        assert got.dtype == want.dtype and np.array_equal(got, want)


def _full_arrays(msg_type: str) -> dict[str, np.ndarray]:
    """An array for every name the schema allows: the template's, else a small one of the first
    dtype."""
    _, template = TEMPLATES[msg_type]
    out = {}
    for k, spec in enumerate(SCHEMAS[msg_type].arrays):
        shape = (3,) * max(spec.ndims)
        out[spec.name] = template.get(spec.name, np.full(shape, k, np.dtype(spec.dtypes[0])))
    return out


def _subsets(k: int) -> list[tuple[bool, ...]]:
    """Which of k optional arrays to keep: every subset for up to 3, else all, none, and each one
    alone absent or alone present (STATS has 8)."""
    if k <= 3:
        return list(itertools.product((True, False), repeat=k))
    singles = [tuple(i == j for j in range(k)) for i in range(k)]
    return [(True,) * k, (False,) * k, *singles, *(tuple(not x for x in keep) for keep in singles)]


_OPTIONAL_CASES = [
    (t, keep)
    for t, schema in sorted(SCHEMAS.items())
    for keep in _subsets(sum(a.optional for a in schema.arrays))
]


@pytest.mark.parametrize(
    ("msg_type", "keep"),
    _OPTIONAL_CASES,
    ids=[f"{t}-{''.join('1' if k else '0' for k in keep)}" for t, keep in _OPTIONAL_CASES],
)
def test_every_optional_array_present_and_absent(msg_type: str, keep: tuple[bool, ...]) -> None:
    """Arrays travel by name: any subset of a type's optional arrays (with all its required ones)
    round-trips, each array under its own name, whatever its position; a missing required array is
    refused both ways."""
    fields, _ = TEMPLATES[msg_type]
    full = _full_arrays(msg_type)
    optional = [a.name for a in SCHEMAS[msg_type].arrays if a.optional]
    dropped = {name for name, k in zip(optional, keep, strict=True) if not k}
    arrays = {name: a for name, a in full.items() if name not in dropped}
    msg = decode(
        encode(msg_type, "a1", dict(reversed(arrays.items())), **fields), sender="a1", known=KNOWN
    )
    assert set(msg.arrays) == set(arrays)
    for name, want in arrays.items():
        assert (
            msg.has(name)
            and msg.arrays[name].dtype == want.dtype
            and np.array_equal(msg.arrays[name], want)
        )
    for name in dropped:
        assert not msg.has(name)
        with pytest.raises(WireError):
            msg.array(name, full[name].shape)
    for spec in SCHEMAS[msg_type].arrays:
        if not spec.optional:
            without = {k: v for k, v in arrays.items() if k != spec.name}
            with pytest.raises(WireError):
                encode(msg_type, "a1", without, **fields)
            header = msgpack.unpackb(encode(msg_type, "a1", arrays, **fields)[0], raw=False)
            kept = [e for e in header["arr"] if e[0] != spec.name]
            body = [np.ascontiguousarray(arrays[e[0]]).tobytes() for e in kept]
            with pytest.raises(WireError) as info:
                decode([msgpack.packb({**header, "arr": kept}), *body], sender="a1", known=KNOWN)
            assert info.value.reason == "bad_array"


def test_a_blind_agents_step_carries_available_actions_only() -> None:
    """The regression of the discrete-action swarm crash: a lost agent's STEP has no observation,
    and its boolean available-action array is no longer checked against the observation's float32
    slot."""
    avail = np.array([True, False, True, False, False])
    frames = encode("STEP", "env", {"avail": avail}, ep=0, step=4, seq=4, seen=False, dflt=False)
    msg = decode(frames, sender="env", known=lambda _: True)
    assert not msg.has("obs")
    assert np.array_equal(msg.array("avail", (5,), "|b1"), avail)


def _header(msg_type: str) -> dict[str, Any]:
    return msgpack.unpackb(frames_of(msg_type)[0], raw=False)


def _with(msg_type: str, **changes: Any) -> list[bytes]:
    frames = frames_of(msg_type)
    header = _header(msg_type)
    for key, value in changes.items():
        if value is ...:
            header.pop(key, None)
        else:
            header[key] = value
    return [msgpack.packb(header), *frames[1:]]


@pytest.mark.parametrize(
    ("frames", "sender", "reason"),
    [
        (_with("HB", v=1), "a1", "version"),
        (_with("HB", v=2), "a1", "version"),  # version 2 had no incarnations
        (_with("HB", v=4), "a1", "version"),
        (_with("HB", v="1"), "a1", "version"),
        (_with("HB", t="NOPE"), "a1", "unknown_type"),
        (_with("HB", src="a9"), "a9", "unknown_sender"),
        (_with("HB", src="a2"), "a1", "unknown_sender"),
        (_with("HB", src="../x"), "a1", "unknown_sender"),
        (_with("HB", extra=1), "a1", "bad_field"),
        (_with("HB", epoch=...), "a1", "bad_field"),
        (_with("HB", epoch=-1), "a1", "bad_field"),
        (_with("HB", epoch=1.5), "a1", "bad_field"),
        (_with("HB", epoch=True), "a1", "bad_field"),
        (_with("HB", epoch=1 << 60), "a1", "bad_field"),
        (_with("LOST", bcast=1), "a1", "bad_field"),
        (_with("ACTION", kind="teleport"), "a1", "bad_field"),
        (_with("HISTORY", seen=[True, 1]), "a1", "bad_field"),
        (_with("STATS", counts={"k": [1, 2]}), "a1", "bad_field"),
        (_with("RECON", arr=[["obs", "<f8", [9]]]), "a1", "bad_array"),
        (_with("RECON", arr=[["obs", "<f4", [3, 3]]]), "a1", "bad_array"),
        (_with("RECON", arr=[["obs", "<f4", [10]]]), "a1", "bad_array"),
        (_with("RECON", arr=[["obs", "<f4", [-9]]]), "a1", "bad_array"),
        (
            _with("RECON", arr=[["<f4", [9]]]),
            "a1",
            "bad_array",
        ),  # unnamed (protocol version 1's form)
        (
            _with("RECON", arr=[["row", "<f4", [9]]]),
            "a1",
            "bad_array",
        ),  # a name the type does not have
        (_with("RECON", arr=[[7, "<f4", [9]]]), "a1", "bad_array"),
        (_with("RECON", arr="x"), "a1", "bad_array"),
        (_with("RECON", arr=[]), "a1", "bad_array"),
        (
            _with("STEP", arr=[["avail", "|b1", [4]], ["obs", "<f4", [9]]]),
            "a1",
            "bad_array",
        ),  # out of order
        (
            _with("STEP", arr=[["obs", "<f4", [9]], ["obs", "<f4", [4]]]),
            "a1",
            "bad_array",
        ),  # repeated
        (
            _with("STEP", arr=[["obs", "|b1", [9]]]),
            "a1",
            "bad_array",
        ),  # a bool array in the observation's place
        (frames_of("RECON")[:1], "a1", "bad_array"),
        ([*frames_of("RECON"), b"extra"], "a1", "bad_array"),
        ([frames_of("RECON")[0], np.full(9, np.nan, np.float32).tobytes()], "a1", "bad_array"),
        (
            [*_with("STEP", arr=[["obs", "<f4", [9]], ["avail", "|b1", [2]]])[:2], b"\x00\x02"],
            "a1",
            "bad_array",
        ),
        ([b"\xc1"], "a1", "malformed"),
        ([msgpack.packb([1, 2])], "a1", "malformed"),
        ([msgpack.packb({"v": 1, 1: 2})], "a1", "malformed"),
        ([msgpack.packb({"v": 1, "t": "HB", "x": msgpack.ExtType(1, b"x")})], "a1", "malformed"),
        ([msgpack.packb({"v": 1, "t": "HB", "x": b"bin"})], "a1", "malformed"),
        ([], "a1", "malformed"),
        ([b"x"] * 12, "a1", "malformed"),
        ([frames_of("WM_REQ")[0], b"\x00" * (5 << 20)], "a1", "oversized"),
    ],
)
def test_rejects(frames: list[bytes], sender: str, reason: str) -> None:
    with pytest.raises(WireError) as info:
        decode(frames, sender=sender, known=KNOWN)
    assert info.value.reason == reason and reason in REASONS


def test_encode_refuses_what_decode_would() -> None:
    with pytest.raises(WireError):
        encode("HB", "a0", epoch=-1, leader=0)
    with pytest.raises(WireError):
        encode(
            "STEP",
            "env",
            {"obs": np.zeros(3, np.float64)},
            ep=0,
            step=0,
            seq=0,
            seen=True,
            dflt=False,
        )
    with pytest.raises(WireError):
        encode(
            "STEP", "env", {"obs": np.zeros(3, bool)}, ep=0, step=0, seq=0, seen=True, dflt=False
        )
    with pytest.raises(WireError):
        encode("RECON", "env", {"row": np.zeros(3, np.float32)}, ep=0, step=0, epoch=0, start=0)


def test_message_array_checks_shape_and_dtype() -> None:
    msg = decode(frames_of("RECON"), sender="a1", known=KNOWN)
    assert msg.array("obs", (9,), "<f4").shape == (9,)
    with pytest.raises(WireError):
        msg.array("obs", (8,))
    with pytest.raises(WireError):
        msg.array("obs", (9,), "<i8")
    with pytest.raises(WireError):
        msg.array("act", (9,))


_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(1 << 70), 1 << 70),
    st.floats(),
    st.text(max_size=8),
    st.binary(max_size=8),
)
_values = st.recursive(
    _scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=6), inner, max_size=4)
    ),
    max_leaves=12,
)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.binary(max_size=64), min_size=0, max_size=10))
def test_fuzz_random_frames(frames: list[bytes]) -> None:
    try:
        decode(frames, sender="a1", known=KNOWN)
    except WireError as exc:
        assert exc.reason in REASONS


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.sampled_from(sorted(TEMPLATES)),
    st.dictionaries(
        st.sampled_from(
            [
                "v",
                "t",
                "src",
                "arr",
                "ep",
                "step",
                "epoch",
                "leader",
                "seen",
                "known",
                "obs_from",
                "counts",
                "names",
                "kind",
                "inc",
                "rid",
                "endpoints",
                "status",
                "x",
            ]
        ),
        _values,
        max_size=3,
    ),
    st.lists(st.binary(max_size=48), max_size=3),
    st.booleans(),
)
def test_fuzz_mutated_messages(
    msg_type: str, changes: dict[str, Any], extra_frames: list[bytes], replace_frames: bool
) -> None:
    """Valid messages with fields replaced by arbitrary msgpack values and frames swapped or
    appended."""
    frames = frames_of(msg_type)
    header = _header(msg_type)
    header.update(changes)
    try:
        packed = msgpack.packb(header)
    except (OverflowError, ValueError, TypeError):
        return
    body = extra_frames if replace_frames else frames[1:] + extra_frames
    try:
        msg = decode([packed, *body], sender="a1", known=KNOWN)
    except WireError as exc:
        assert exc.reason in REASONS
        return
    assert msg.type in SCHEMAS  # whatever got through satisfies the schema


@pytest.mark.parametrize("size", [1, 9, 256, 257, 4000])
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_values_are_found_in_small_and_large_frames(size: int, bad: float) -> None:
    """Small frames are checked by the interpreter and large ones by numpy: both find one bad value
    anywhere, and both accept the largest finite float32 values (whose sum does not overflow)."""
    header = encode(
        "RECON", "a1", {"obs": np.zeros(size, np.float32)}, ep=0, step=1, epoch=1, start=0
    )[0]
    extreme = np.full(size, np.finfo(np.float32).max, np.float32)
    extreme[::2] *= -1
    assert np.array_equal(
        decode([header, extreme.tobytes()], sender="a1", known=KNOWN).arrays["obs"], extreme
    )
    for at in {0, size // 2, size - 1}:
        values = np.ones(size, np.float32)
        values[at] = bad
        with pytest.raises(WireError) as info:
            decode([header, values.tobytes()], sender="a1", known=KNOWN)
        assert info.value.reason == "bad_array"


def test_a_discrete_action_keeps_its_zero_dimensions() -> None:
    """A discrete action is a 0-d int64 array; np.ascontiguousarray would make it (1,) and the env
    host would drop every ACTION of a discrete-action swarm as the wrong shape."""
    frames = encode(
        "ACTION",
        "a0",
        {"action": np.array(3, np.int64)},
        ep=0,
        step=0,
        kind="obs",
        epoch=0,
        leader=-1,
        tx=0,
    )
    msg = decode(frames, sender="a0", known=KNOWN)
    assert msg.array("action", (), "<i8") == 3


def test_protocol_md_lists_every_field_and_array_of_every_type() -> None:
    """PROTOCOL.md's message table is the specification: same types, same fields, same arrays in the
    same order, optional ones marked with '?'."""
    text = (Path(__file__).resolve().parents[2] / "runtime" / "PROTOCOL.md").read_text()
    rows = {}
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 4 and cells[0].startswith("`") and cells[0].endswith("`"):
            rows[cells[0].strip("`")] = cells
    assert set(rows) == set(SCHEMAS)

    def names(cell: str) -> list[str]:  # "inc (incarnation), role" -> ["inc", "role"]
        return [
            m.group(1)
            for m in re.finditer(r"(?:^|,)\s*([a-z_0-9]+\??)", re.sub(r"\([^)]*\)", "", cell))
        ]

    for msg_type, schema in SCHEMAS.items():
        _, _, fields, arrays = rows[msg_type]
        assert names(fields) == list(schema.fields), msg_type
        assert names(arrays) == [a.name + ("?" if a.optional else "") for a in schema.arrays], (
            msg_type
        )
