"""The UDP transport between real sockets: delivery, counted drops, death notice, size limit,
waits."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from swarm_helpers import KNOWN, TEMPLATES, frames_of, swarm_settings

from rmio.errors import ConfigError
from rmio.runtime.bundle import load_manifest
from rmio.runtime.datagram import (
    MAX_DATAGRAM,
    DatagramNode,
    check_fits,
    largest_message_bytes,
    pack,
    parse_endpoint,
    unpack,
)
from rmio.runtime.launcher import write_roster
from rmio.runtime.settings import Roster
from rmio.runtime.transport import Node, make_node
from rmio.runtime.wire import Message

pytestmark = pytest.mark.timeout(30)


@pytest.fixture
def pair() -> Iterator[tuple[DatagramNode, DatagramNode]]:
    a = DatagramNode("a0", "udp://127.0.0.1:0", KNOWN)
    b = DatagramNode("a1", "udp://127.0.0.1:0", KNOWN)
    a.connect("a1", b.endpoint)
    b.connect("a0", a.endpoint)
    yield a, b
    a.close()
    b.close()


def receive(node: DatagramNode, count: int, timeout_s: float = 2.0) -> list[Message]:
    out: list[Message] = []
    deadline = time.monotonic() + timeout_s
    while len(out) < count and time.monotonic() < deadline:
        out += node.poll(50)
    return out


@given(st.lists(st.binary(max_size=300), min_size=1, max_size=9))
def test_pack_round_trip(frames: list[bytes]) -> None:
    got = unpack(pack(frames))
    assert got is not None and [bytes(f) for f in got] == frames


@settings(max_examples=300)
@given(st.binary(max_size=200))
def test_unpack_never_raises(data: bytes) -> None:
    got = unpack(data)
    assert got is None or sum(len(f) for f in got) + 1 + 4 * len(got) == len(data)


@pytest.mark.parametrize(
    ("endpoint", "expected"),
    [
        ("udp://127.0.0.1:0", ("127.0.0.1", 0)),
        ("udp://10.0.0.2:*", ("10.0.0.2", 0)),
        ("udp://host.lan:5550", ("host.lan", 5550)),
    ],
)
def test_parse_endpoint(endpoint: str, expected: tuple[str, int]) -> None:
    assert parse_endpoint(endpoint) == expected


@pytest.mark.parametrize(
    "endpoint", ["tcp://127.0.0.1:5", "udp://127.0.0.1", "udp://:5", "udp://h:x", "udp://h:70000"]
)
def test_bad_endpoints_are_refused(endpoint: str) -> None:
    with pytest.raises(ValueError):
        parse_endpoint(endpoint)


def test_make_node_picks_the_transport_by_scheme() -> None:
    for bind, kind in (("udp://127.0.0.1:0", DatagramNode), ("tcp://127.0.0.1:*", Node)):
        node = make_node("a0", bind, KNOWN)
        try:
            assert type(node) is kind and node.endpoint.startswith(bind[:6])
        finally:
            node.close()


def test_every_message_type_arrives_intact_and_counted(
    pair: tuple[DatagramNode, DatagramNode],
) -> None:
    a, b = pair
    for msg_type, (fields, arrays) in TEMPLATES.items():
        assert a.send("a1", msg_type, arrays, **fields), msg_type
    got = receive(b, len(TEMPLATES))
    assert [m.type for m in got] == list(TEMPLATES)  # loopback keeps order
    for msg in got:
        fields, arrays = TEMPLATES[msg.type]
        assert msg.src == "a0" and msg.fields == fields
        assert list(msg.arrays) == list(arrays)
        for name, sent in arrays.items():
            assert np.array_equal(sent, msg.arrays[name]) and sent.dtype == msg.arrays[name].dtype
    assert sum(a.stats.tx_msgs.values()) == sum(b.stats.rx_msgs.values()) == len(TEMPLATES)
    assert a.stats.tx_bytes["STEP"] == sum(len(f) for f in frames_of("STEP", "a0"))


def test_bad_datagrams_are_counted_and_dropped(pair: tuple[DatagramNode, DatagramNode]) -> None:
    _, b = pair
    raw = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    address = parse_endpoint(b.endpoint)
    try:
        for data in (
            b"",
            b"\x00",
            b"\x02\x05\x00\x00\x00",
            pack([b"\xc1garbage"]),
            pack(frames_of("HB", "zz")),
            pack(frames_of("HB", "a7")),
            pack(frames_of("HB", "a2")),
        ):
            raw.sendto(data, address)
        got = receive(b, 1)
    finally:
        raw.close()
    assert [m.src for m in got] == [
        "a2"
    ]  # a known name, so valid (the roster is what names are checked against)
    time.sleep(0.05)
    assert b.poll(10) == []
    assert b.stats.dropped["malformed"] == 4 and b.stats.dropped["unknown_sender"] == 2


def test_a_closed_peer_is_reported_down_at_once(pair: tuple[DatagramNode, DatagramNode]) -> None:
    a, b = pair
    assert ("a1", True) in a.link_events  # connect() is the peer coming up
    a.link_events.clear()
    b.close()
    a.send("a1", "HB", epoch=1, leader=0)  # the kernel answers with ICMP port unreachable
    deadline = time.monotonic() + 2
    while ("a1", False) not in a.link_events and time.monotonic() < deadline:
        a.poll(20)
        a.send("a1", "HB", epoch=1, leader=0)
    assert ("a1", False) in a.link_events
    # a restarted peer on a new port comes up again through connect()
    c = DatagramNode("a1", "udp://127.0.0.1:0", KNOWN)
    try:
        a.connect("a1", c.endpoint)
        assert a.link_events[-1] == ("a1", True)
        assert a.send("a1", "HB", epoch=1, leader=0)
        assert [m.type for m in receive(c, 1)] == ["HB"]
    finally:
        c.close()


def test_a_message_larger_than_a_datagram_fails_its_send(
    pair: tuple[DatagramNode, DatagramNode],
) -> None:
    a, _ = pair
    big = np.zeros(MAX_DATAGRAM // 4, np.float32)
    assert not a.send("a1", "STEP", {"obs": big}, ep=0, step=0, seq=0, seen=True, dflt=False)
    assert a.stats.send_fail["too_big"] == 1 and not a.stats.tx_msgs
    assert not a.send("a5", "HB", epoch=1, leader=0)  # nobody by that name
    assert a.stats.send_fail["unreachable"] == 1


def test_sub_millisecond_poll_sleeps_instead_of_spinning(
    pair: tuple[DatagramNode, DatagramNode],
) -> None:
    a, _ = pair
    start = time.monotonic()
    for _ in range(20):
        assert a.poll(0.3) == []
    assert time.monotonic() - start >= 20 * 0.3e-3
    a.close()
    assert a.sock.fileno() == -1


def test_a_bundle_whose_window_does_not_fit_is_refused(bundle: Path, tmp_path: Path) -> None:
    man = load_manifest(bundle)
    assert largest_message_bytes(man) <= MAX_DATAGRAM
    check_fits(man)
    man.history_window = 2000
    with pytest.raises(ConfigError, match="use tcp or ipc"):
        check_fits(man)


def test_a_udp_roster_names_udp_endpoints(bundle: Path, tmp_path: Path) -> None:
    settings = swarm_settings(bundle, tmp_path, transport="udp")
    write_roster(settings, tmp_path / "roster.yaml", "10.0.0.5", 6000)
    roster = Roster.load(tmp_path / "roster.yaml")
    assert roster.settings.transport == "udp"
    assert (
        roster.endpoints["env"] == "udp://10.0.0.5:6000"
        and roster.endpoints["a5"] == "udp://10.0.0.5:6006"
    )
