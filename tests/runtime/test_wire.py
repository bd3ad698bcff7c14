"""The wire codec: every message type round-trips; anything malformed raises WireError (and only that)."""

from __future__ import annotations

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
    assert len(msg.arrays) == len(arrays)
    for got, want in zip(msg.arrays, arrays, strict=True):
        assert got.dtype == want.dtype and np.array_equal(got, want)


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


@pytest.mark.parametrize(("frames", "sender", "reason"), [
    (_with("HB", v=2), "a1", "version"),
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
    (_with("STEP", arr=[["<f8", [9]]]), "a1", "bad_array"),
    (_with("STEP", arr=[["<f4", [3, 3]]]), "a1", "bad_array"),
    (_with("STEP", arr=[["<f4", [10]]]), "a1", "bad_array"),
    (_with("STEP", arr=[["<f4", [-9]]]), "a1", "bad_array"),
    (_with("STEP", arr="x"), "a1", "bad_array"),
    (_with("RECON", arr=[]), "a1", "bad_array"),
    (frames_of("STEP")[:1], "a1", "bad_array"),
    ([*frames_of("STEP"), b"extra"], "a1", "bad_array"),
    ([frames_of("STEP")[0], np.full(9, np.nan, np.float32).tobytes()], "a1", "bad_array"),
    ([*_with("STEP", arr=[["<f4", [9]], ["|b1", [2]]]), b"\x00\x02"], "a1", "bad_array"),
    ([b"\xc1"], "a1", "malformed"),
    ([msgpack.packb([1, 2])], "a1", "malformed"),
    ([msgpack.packb({"v": 1, 1: 2})], "a1", "malformed"),
    ([msgpack.packb({"v": 1, "t": "HB", "x": msgpack.ExtType(1, b"x")})], "a1", "malformed"),
    ([msgpack.packb({"v": 1, "t": "HB", "x": b"bin"})], "a1", "malformed"),
    ([], "a1", "malformed"),
    ([b"x"] * 12, "a1", "malformed"),
    ([frames_of("WM_REQ")[0], b"\x00" * (5 << 20)], "a1", "oversized"),
])
def test_rejects(frames: list[bytes], sender: str, reason: str) -> None:
    with pytest.raises(WireError) as info:
        decode(frames, sender=sender, known=KNOWN)
    assert info.value.reason == reason and reason in REASONS


def test_encode_refuses_what_decode_would() -> None:
    with pytest.raises(WireError):
        encode("HB", "a0", epoch=-1, leader=0)
    with pytest.raises(WireError):
        encode("STEP", "env", (np.zeros(3, np.float64),), ep=0, step=0, seq=0, seen=True, dflt=False)


def test_message_array_checks_shape_and_dtype() -> None:
    msg = decode(frames_of("RECON"), sender="a1", known=KNOWN)
    assert msg.array(0, (9,), "<f4").shape == (9,)
    with pytest.raises(WireError):
        msg.array(0, (8,))
    with pytest.raises(WireError):
        msg.array(0, (9,), "<i8")
    with pytest.raises(WireError):
        msg.array(1, (9,))


_scalars = st.one_of(st.none(), st.booleans(), st.integers(-(1 << 70), 1 << 70), st.floats(), st.text(max_size=8),
                     st.binary(max_size=8))
_values = st.recursive(_scalars, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                          st.dictionaries(st.text(max_size=6), inner, max_size=4)),
                       max_leaves=12)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.binary(max_size=64), min_size=0, max_size=10))
def test_fuzz_random_frames(frames: list[bytes]) -> None:
    try:
        decode(frames, sender="a1", known=KNOWN)
    except WireError as exc:
        assert exc.reason in REASONS


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(sorted(TEMPLATES)), st.dictionaries(st.sampled_from(
    ["v", "t", "src", "arr", "ep", "step", "epoch", "leader", "seen", "known", "obs_from", "counts", "names", "kind",
     "inc", "rid", "endpoints", "status", "x"]), _values, max_size=3),
    st.lists(st.binary(max_size=48), max_size=3), st.booleans())
def test_fuzz_mutated_messages(msg_type: str, changes: dict[str, Any], extra_frames: list[bytes],
                               replace_frames: bool) -> None:
    """Valid messages with fields replaced by arbitrary msgpack values and frames swapped or appended."""
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
    header = encode("RECON", "a1", (np.zeros(size, np.float32),), ep=0, step=1, epoch=1, start=0)[0]
    extreme = np.full(size, np.finfo(np.float32).max, np.float32)
    extreme[::2] *= -1
    assert np.array_equal(decode([header, extreme.tobytes()], sender="a1", known=KNOWN).arrays[0], extreme)
    for at in {0, size // 2, size - 1}:
        values = np.ones(size, np.float32)
        values[at] = bad
        with pytest.raises(WireError) as info:
            decode([header, values.tobytes()], sender="a1", known=KNOWN)
        assert info.value.reason == "bad_array"
